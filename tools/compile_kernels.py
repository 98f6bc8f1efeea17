"""``python tools/compile_kernels.py`` is ``zoo-compile-kernels``: see backbones/cli/compile_kernels.py."""
import sys

from backbones.cli.compile_kernels import main

if __name__ == "__main__":
    sys.exit(main())

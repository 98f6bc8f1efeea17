"""``python tools/benchmark.py`` is ``zoo-benchmark``: see backbones/cli/benchmark.py."""
import sys

from backbones.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())

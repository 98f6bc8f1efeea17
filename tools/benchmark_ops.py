"""``python tools/benchmark_ops.py`` is ``zoo-benchmark-ops``: see backbones/cli/benchmark_ops.py."""
import sys

from backbones.cli.benchmark_ops import main

if __name__ == "__main__":
    sys.exit(main())

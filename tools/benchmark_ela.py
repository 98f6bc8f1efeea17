"""``python tools/benchmark_ela.py`` is ``zoo-benchmark-ela``: see backbones/cli/benchmark_ela.py."""
import sys

from backbones.cli.benchmark_ela import main

if __name__ == "__main__":
    sys.exit(main())

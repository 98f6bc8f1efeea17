"""``python tools/benchmark_ulsam.py`` is ``zoo-benchmark-ulsam``: see backbones/cli/benchmark_ulsam.py."""
import sys

from backbones.cli.benchmark_ulsam import main

if __name__ == "__main__":
    sys.exit(main())

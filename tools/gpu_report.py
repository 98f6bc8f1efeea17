"""``python tools/gpu_report.py`` is ``zoo-gpu-report``: see backbones/cli/gpu_report.py."""
import sys

from backbones.cli.gpu_report import main

if __name__ == "__main__":
    sys.exit(main())

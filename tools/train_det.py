"""``python tools/train_det.py`` is ``zoo-train-det``: see backbones/cli/train_det.py."""
import sys

from backbones.cli.train_det import main

if __name__ == "__main__":
    sys.exit(main())

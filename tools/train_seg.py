"""``python tools/train_seg.py`` is ``zoo-train-seg``: see backbones/cli/train_seg.py."""
import sys

from backbones.cli.train_seg import main

if __name__ == "__main__":
    sys.exit(main())

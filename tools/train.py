"""``python tools/train.py`` is ``zoo-train``: see backbones/cli/train.py."""
import sys

from backbones.cli.train import main

if __name__ == "__main__":
    sys.exit(main())

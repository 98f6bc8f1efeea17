"""``python tools/sparsifiner_masks.py`` is ``zoo-sparsifiner-masks``: see backbones/cli/sparsifiner_masks.py."""
import sys

from backbones.cli.sparsifiner_masks import main

if __name__ == "__main__":
    sys.exit(main())

"""``python tools/visualize.py`` is ``zoo-visualize``: see backbones/cli/visualize.py."""
import sys

from backbones.cli.visualize import main

if __name__ == "__main__":
    sys.exit(main())

"""``python tools/export.py`` is ``zoo-export``: see backbones/cli/export.py."""
import sys

from backbones.cli.export import main

if __name__ == "__main__":
    sys.exit(main())

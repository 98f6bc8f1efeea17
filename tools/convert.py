"""``python tools/convert.py`` is ``zoo-convert``: see backbones/cli/convert.py."""
import sys

from backbones.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())

"""``python tools/validate.py`` is ``zoo-validate``: see backbones/cli/validate.py."""
import sys

from backbones.cli.validate import main

if __name__ == "__main__":
    sys.exit(main())

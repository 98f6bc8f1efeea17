"""``python tools/dependency_tree.py`` is ``zoo-dependency-tree``: see backbones/cli/dependency_tree.py."""
import sys

from backbones.cli.dependency_tree import main

if __name__ == "__main__":
    sys.exit(main())

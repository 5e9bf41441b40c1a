"""``python -m xtec``: the command line."""

import sys

from xtec.cli.main import main

if __name__ == "__main__":
    sys.exit(main())

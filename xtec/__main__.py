"""``python -m xtec``: the command line."""

from xtec.cli.main import main

if __name__ == "__main__":
    main()

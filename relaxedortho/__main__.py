"""``python -m relaxedortho``: the command line (see :mod:`relaxedortho.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

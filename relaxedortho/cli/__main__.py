"""``python -m relaxedortho.cli``: the ``relaxedortho`` command."""
import sys

from . import main

sys.exit(main())

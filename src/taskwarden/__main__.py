"""``python -m taskwarden``: the command line (see ``taskwarden.cli``)."""

import sys

from taskwarden.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""`python -m vidanon` runs the command line (same as the `vidanon` entry point)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

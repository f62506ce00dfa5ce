"""`python -m fingerprint` runs the `fingerprint` command."""

import sys

from fingerprint.cli import main

if __name__ == "__main__":
    sys.exit(main())

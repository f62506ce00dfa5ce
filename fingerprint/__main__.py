"""`python -m fingerprint` runs the `fingerprint` command.

This entry point is the command line itself, so it is the one module outside
the `cli` subpackage that imports it; no library module does.
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

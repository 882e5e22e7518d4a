#!/usr/bin/env python
"""``python tools/check_data.py [options] [KEY VALUE ...]`` runs ``reid check-data`` (see :mod:`reid.cli.check_data`).

Kept so that existing commands keep working; ``reid check-data --help`` describes the options.
"""

import sys

from reid.cli.check_data import main

if __name__ == "__main__":
    sys.exit(main())

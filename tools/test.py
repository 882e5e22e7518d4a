#!/usr/bin/env python
"""``python tools/test.py [options] [KEY VALUE ...]`` runs ``reid test`` (see :mod:`reid.cli.test`).

Kept so that existing commands keep working; ``reid test --help`` describes the options.
"""

from reid.cli.test import main

if __name__ == "__main__":
    main()

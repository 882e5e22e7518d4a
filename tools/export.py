#!/usr/bin/env python
"""``python tools/export.py [options] [KEY VALUE ...]`` runs ``reid export`` (see :mod:`reid.cli.export`).

Kept so that existing commands keep working; ``reid export --help`` describes the options.
"""

from reid.cli.export import main

if __name__ == "__main__":
    main()

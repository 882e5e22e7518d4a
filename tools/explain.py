#!/usr/bin/env python
"""``python tools/explain.py [options] [KEY VALUE ...]`` runs ``reid explain`` (see :mod:`reid.cli.explain`).

Kept so that existing commands keep working; ``reid explain --help`` describes the options.
"""

from reid.cli.explain import main

if __name__ == "__main__":
    main()

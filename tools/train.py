#!/usr/bin/env python
"""``python tools/train.py [options] [KEY VALUE ...]`` runs ``reid train`` (see :mod:`reid.cli.train`).

Kept so that existing commands keep working; ``reid train --help`` describes the options.
"""

from reid.cli.train import main

if __name__ == "__main__":
    main()

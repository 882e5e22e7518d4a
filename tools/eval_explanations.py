#!/usr/bin/env python
"""``python tools/eval_explanations.py [options] [KEY VALUE ...]`` runs ``reid eval-explanations`` (see :mod:`reid.cli.eval_explanations`).

Kept so that existing commands keep working; ``reid eval-explanations --help`` describes the options.
"""

from reid.cli.eval_explanations import main

if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""``python tools/segment.py [options] [KEY VALUE ...]`` runs ``reid segment`` (see :mod:`reid.cli.segment`).

Kept so that existing commands keep working; ``reid segment --help`` describes the options. It runs
through the same runner as ``reid`` (``reid.cli.main.run_command``): a usage error prints one
line and exits with status 2 (``--debug`` shows the traceback).
"""

import sys

from reid.cli.main import run_command

if __name__ == "__main__":
    sys.exit(run_command("segment"))

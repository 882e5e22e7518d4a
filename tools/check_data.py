#!/usr/bin/env python
"""``python tools/check_data.py [options] [KEY VALUE ...]`` runs ``reid check-data`` (see :mod:`reid.cli.check_data`).

Kept so that existing commands keep working; ``reid check-data --help`` describes the options. It runs
through the same runner as ``reid`` (``reid.cli.main.run_command``): a usage error prints one
line and exits with status 2 (``--debug`` shows the traceback).
"""

import sys

from reid.cli.main import run_command

if __name__ == "__main__":
    sys.exit(run_command("check-data"))

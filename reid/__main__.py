"""``python -m reid <command>``: the same as the ``reid`` console script."""

import sys

from reid.cli.main import main

sys.exit(main())

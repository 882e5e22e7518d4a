"""The command-line layer: ``reid <command> [options] [KEY VALUE ...]``.

Each command is a module of this package with ``parse_args(argv)`` and ``main(argv)`` (callable
from Python and from tests); it parses its options, loads the config and calls the library. The
console script ``reid`` (:func:`reid.cli.main.main`) dispatches to them; ``python tools/<name>.py``
runs the same ``main``.
"""

import warnings

# torchreid warns on import that its Cython evaluator is missing; the toolkit never uses it
# (reid.metrics evaluates exactly and fast), so the warning would only mislead a user.
warnings.filterwarnings("ignore", message="Cython evaluation", category=UserWarning)

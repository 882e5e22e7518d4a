"""Check the configured datasets: ``reid check-data --config FILE [KEY VALUE ...]``.

Builds every dataset of ``DATA.SOURCES`` and ``DATA.TARGETS`` under ``DATA.ROOT`` exactly as
training does (once per mode, so every image of every split is read, with
``DATA.ON_BAD_IMAGE``; ours, the synthetic set and torchreid's built-ins alike), prints a table of
identities, images and cameras per split, the counts that differ from the published ones, the
images skipped with ``DATA.ON_BAD_IMAGE skip``, and the errors. Exits with 1 when a dataset has an
error.
"""

from __future__ import annotations

import argparse
import logging

from reid.cli.common import config_or_exit, new_parser, parse_with_overrides
from reid.data.validation import check_dataset
from reid.builders import dataset_names

logger = logging.getLogger("check_data")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = new_parser("check-data", __doc__)
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides, e.g. DATA.ROOT /data")
    return parse_with_overrides(parser, argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_or_exit(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = list(dict.fromkeys([*cfg.DATA.SOURCES, *cfg.DATA.TARGETS]))
    errors = []
    for name in names:
        try:
            key = "DATA.SOURCES" if name in cfg.DATA.SOURCES else "DATA.TARGETS"
            registered = dataset_names(cfg, [name], key)[0]
            report = check_dataset(name, registered, cfg.DATA.ROOT)
        except (ValueError, OSError, KeyError, RuntimeError) as exc:
            errors.append(f"{name}: {exc}")
            print(f"{name}: ERROR\n{exc}\n")
            continue
        print(report.table)
        for line in report.differences:
            print(f"  differs from the published counts: {line}")
        if report.skipped:
            print(f"  skipped {len(report.skipped)} unreadable image(s) (DATA.ON_BAD_IMAGE skip):")
            for path in report.skipped:
                print(f"    {path}")
        print()
    print(f"{len(names) - len(errors)} of {len(names)} dataset(s) OK" + (", errors above" if errors else ""))
    return 1 if errors else 0


#!/usr/bin/env python
"""Check the configured datasets: ``python tools/check_data.py --config FILE [KEY VALUE ...]``.

Builds every dataset of ``DATA.SOURCES`` and ``DATA.TARGETS`` under ``DATA.ROOT`` exactly as
training does (once per mode, so every image of every split is read, with
``DATA.ON_BAD_IMAGE``), prints a table of identities, images and cameras per split, the counts
that differ from the published ones, and the errors. Exits with 1 when a dataset has an error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torchreid.reid.data.datasets import init_image_dataset  # noqa: E402

import reid.data.cuhk03_np  # noqa: E402,F401  (registers cuhk03_np_labeled / _detected)
import reid.data.dukemtmc  # noqa: E402,F401  (registers dukemtmc_reid)
from tools import config_or_exit, parse_with_overrides  # noqa: E402
from reid.engine.builders import dataset_names  # noqa: E402
from reid.data.validation import SPLITS, count_mismatches, format_statistics, split_statistics  # noqa: E402

logger = logging.getLogger("check_data")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("opts", nargs="*", help="KEY VALUE overrides, e.g. DATA.ROOT /data")
    return parse_with_overrides(parser, argv)


def check_dataset(name: str, registered_name: str, root: str) -> tuple[str, list[str]]:
    """Builds ``registered_name`` in each mode; returns its table and its count differences.

    Raises:
        ValueError, OSError, KeyError, RuntimeError: the dataset cannot be built (our
            ``DatasetError`` is a ``ValueError``, ``ImageReadError`` an ``OSError``).
    """
    splits, published = {}, {}
    for mode in SPLITS:
        dataset = init_image_dataset(registered_name, root=root, mode=mode, verbose=False)
        splits[mode] = getattr(dataset, mode)
        published = getattr(dataset, "published", {})
    stats = [split_statistics(splits[split], split) for split in SPLITS]
    return format_statistics(stats, title=name), count_mismatches(stats, published)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_or_exit(args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    names = list(dict.fromkeys([*cfg.DATA.SOURCES, *cfg.DATA.TARGETS]))
    errors = []
    for name in names:
        try:
            registered = dataset_names(cfg, [name])[0]
            table, differences = check_dataset(name, registered, cfg.DATA.ROOT)
        except (ValueError, OSError, KeyError, RuntimeError) as exc:
            errors.append(f"{name}: {exc}")
            print(f"{name}: ERROR\n{exc}\n")
            continue
        print(table)
        for line in differences:
            print(f"  differs from the published counts: {line}")
        print()
    print(f"{len(names) - len(errors)} of {len(names)} dataset(s) OK" + (", errors above" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

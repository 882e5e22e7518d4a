"""Plots of evaluation curves (CMC)."""

from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

import numpy as np

from reid.io import names_file

logger = logging.getLogger(__name__)


def plot_cmc(curves: Mapping[str, Sequence[float]], path: str, title: str = "CMC") -> str:
    """Writes a PNG of one or more CMC curves (matching rate against rank, in percent).

    Args:
        curves: ``{label: cmc}``, each ``cmc[r - 1]`` the fraction of queries with a true match
            within the first ``r`` gallery entries.
        path: PNG file to write (its folder is created).
        title: plot title.

    Returns:
        ``path``.

    Raises:
        ValueError: no curve, or an empty curve.
    """
    if not curves:
        raise ValueError("plot_cmc needs at least one curve")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    try:
        for label, cmc in curves.items():
            values = np.asarray(cmc, dtype=np.float64).ravel()
            if values.size == 0:
                raise ValueError(f"CMC curve {label!r} is empty")
            ranks = np.arange(1, values.size + 1)
            ax.plot(ranks, 100.0 * values, marker="o", markersize=2.5, label=f"{label} (rank-1 {values[0]:.1%})")
        ax.set_xlabel("rank")
        ax.set_ylabel("matching rate (%)")
        ax.set_ylim(0, 100)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with names_file(path):
            fig.savefig(path)
    finally:
        plt.close(fig)
    logger.info("CMC curve written to %s", path)
    return path

"""CMC plot: a real PNG per call, clear errors on no or empty curves."""

import numpy as np
import pytest
from PIL import Image

from reid.vis.curves import plot_cmc


def test_plot_cmc_writes_a_png_in_a_new_folder(tmp_path):
    path = tmp_path / "sub" / "cmc.png"
    assert plot_cmc({"a": [0.5, 0.75, 1.0], "b": np.array([0.25, 0.5, 0.5])}, str(path)) == str(path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (500, 350)


def test_plot_cmc_rejects_missing_curves(tmp_path):
    with pytest.raises(ValueError, match="at least one curve"):
        plot_cmc({}, str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="'a' is empty"):
        plot_cmc({"a": []}, str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()

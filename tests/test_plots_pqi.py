"""plot_pqi_curve writes a real PNG from iteration records (including gaps), and refuses empty input."""

from __future__ import annotations

import pytest

from swap_hw.errors import ParameterError
from swap_hw.results.plots_pqi import plot_pqi_curve


def records():
    # A fall–rise–fall PQI curve with falling accuracy at the end; one layer emptied at the end.
    pqi = [0.20, 0.14, 0.10, 0.12, 0.16, 0.09]
    acc = [0.95, 0.96, 0.96, 0.95, 0.90, 0.60]
    out = []
    for t, (i, a) in enumerate(zip(pqi, acc)):
        out.append({
            "iteration": t, "remaining_fraction": 0.8**t, "pqi_global": i,
            "pqi_layers": {"l1": i * 1.1, "l2": None if t == 5 else i * 0.9},
            "train_accuracy": min(1.0, a + 0.03), "val_accuracy": a, "prune_count": 10,
            "metrics": {"analog_accuracy": a - 0.05},
        })
    return out


def test_writes_a_valid_png(tmp_path):
    import matplotlib.image

    path = plot_pqi_curve(records(), tmp_path / "sub" / "pqi.png", title="test run")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(str(path))
    assert image.shape[0] > 100 and image.shape[1] > 100
    # Something was drawn: the image is not a single flat colour.
    assert float(image[..., :3].std()) > 0.01


def test_no_pqi_values_is_an_error(tmp_path):
    with pytest.raises(ParameterError, match="pqi_global"):
        plot_pqi_curve([{"remaining_fraction": 1.0, "pqi_global": None}], tmp_path / "x.png")

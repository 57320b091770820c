"""PQI and accuracy over an iterative pruning run (the SAP paper's fall–rise–fall diagnostic).

`plot_pqi_curve(result.log["iterations"], path)` draws, against the percentage of weights that
remain (falling from 100 % left to right, the order pruning goes), the global PQ index I_{0.5,1}
of the surviving weights on the left axis (dimensionless, in [0, 1)), thin dashed per-layer PQI
lines, and accuracy (%) on the right axis: validation accuracy when recorded, training accuracy
otherwise, plus any per-iteration "metrics" whose name contains "accuracy". A falling PQI means
pruning is still regularising; PQI rising and then falling together with accuracy marks
over-pruning.

Matplotlib's Agg canvas is used directly (no pyplot), so this works headless and leaves no
global figure state behind.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import ParameterError


def _series(iterations: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for rec in iterations:
        value = rec.get(key)
        if value is not None:
            xs.append(100.0 * float(rec["remaining_fraction"]))
            ys.append(float(value))
    return xs, ys


def plot_pqi_curve(
    iterations: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    title: str | None = None,
    per_layer: bool = True,
) -> Path:
    """Write a PNG of PQI (left axis) and accuracy (right axis) against remaining weights (%).

    iterations: the records of an iterative pruner's log["iterations"] (each with
                remaining_fraction, pqi_global, pqi_layers, train_accuracy, val_accuracy and
                optionally metrics); records whose values are None are skipped point by point.
    Returns the path written. Raises ParameterError if there is no record with a PQI value.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = [r for r in iterations if "remaining_fraction" in r]
    x_pqi, y_pqi = _series(records, "pqi_global")
    if not x_pqi:
        raise ParameterError("plot_pqi_curve needs iteration records with remaining_fraction and pqi_global")

    fig = Figure(figsize=(7.0, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(x_pqi, y_pqi, "o-", color="tab:blue", label="PQI global (survivors)", linewidth=2)
    if per_layer:
        names: list[str] = []
        for rec in records:
            for name in rec.get("pqi_layers") or {}:
                if name not in names:
                    names.append(name)
        for name in names:
            pts = [
                (100.0 * float(r["remaining_fraction"]), float(r["pqi_layers"][name]))
                for r in records
                if (r.get("pqi_layers") or {}).get(name) is not None
            ]
            if pts:
                ax.plot(*zip(*pts), "--", linewidth=0.9, alpha=0.6, label=f"PQI {name}")
    ax.set_xlabel("remaining weights (%)")
    ax.set_ylabel("PQ index $I_{0.5,1}$")
    ax.invert_xaxis()  # pruning proceeds left to right
    ax.grid(True, alpha=0.3)

    acc_ax = ax.twinx()
    acc_lines = []
    for key, label, style in (("val_accuracy", "validation accuracy", "s-"), ("train_accuracy", "train accuracy", "^:")):
        xs, ys = _series(records, key)
        if xs:
            acc_lines.append(acc_ax.plot(xs, [100 * v for v in ys], style, color="tab:red", label=label)[0])
    metric_names = sorted({k for r in records for k in (r.get("metrics") or {}) if "accuracy" in k})
    for name in metric_names:
        pts = [
            (100.0 * float(r["remaining_fraction"]), 100.0 * float(r["metrics"][name]))
            for r in records
            if (r.get("metrics") or {}).get(name) is not None
        ]
        if pts:
            acc_lines.append(acc_ax.plot(*zip(*pts), "d-.", color="tab:orange", label=name)[0])
    acc_ax.set_ylabel("accuracy (%)")

    handles, labels = ax.get_legend_handles_labels()
    handles += acc_lines
    labels += [h.get_label() for h in acc_lines]
    # On the twin axes, which is drawn last, so no curve crosses the legend.
    acc_ax.legend(handles, labels, fontsize=7, loc="lower left", framealpha=0.9)
    ax.set_title(title or "PQ index and accuracy while pruning")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out

"""`report --plot DIR`: PNG figures of a run, from the results database only (matplotlib, Agg).

Written figures (metric defaults to accuracy, shown in %; each figure's title is also the PNG's
Title text chunk):

- ``<metric>_vs_sparsity__<condition>.png``: one figure per deployment condition (a condition with
  numeric grid tags, such as an attack's eps, gives one figure per value); one panel per
  (gradient source, drift time); x = target sparsity s ∈ [0, 1), y = metric; one line per pruner
  with a 95% CI band over replicates; the dense model as a dashed line with its band. Cells with
  sparsity "auto" are drawn as points with error bars at their mean realised sparsity.
- ``<metric>_vs_drift__<condition>.png``: for conditions whose measurements carry drift times
  (seconds after programming, log axis): one panel per (source, pruner); one line per sparsity,
  CI bands, the dense model dashed.
- ``<metric>_vs_tiles__<condition>.png``: for analog conditions with hardware accounting
  (deploy/accounting.py): one panel per (source, drift time); x = crossbar tiles freed, y = metric;
  one line per pruner through its sparsities, 95% CI bars on both axes; the dense model a square.

``<condition>`` is the condition's short label as in the report's headers (report.short_labels:
member name, superscript-numbered when two conditions share it, plus grid tags), slugged
("analog²" → "analog_2", "adversarial eps=0.1" → "adversarial_eps=0.1"); a 6-digit hash of the
full label is appended only when two figures would otherwise get the same name. Titles carry the
short label, the full label when it was shortened, and how many replicates the bands are over; not
the run id.

Statistics as in `report`: a replicate's values are averaged over hardware draws first; the band is
mean ± t_{0.975, n−1}·s/√n over replicates (no band with one replicate). Figures are built with the
object-oriented API (matplotlib.figure.Figure), so no display and no global pyplot state is used.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from ..registry import DENSE, DIGITAL
from .compare import replicate_means, short_columns
from .report import format_drift, t_interval


_SUPERSCRIPTS = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")


def slug(label: str) -> str:
    """A file-name-safe form of a label: letters, digits, ".", "=" and "-" kept, superscript
    numbers as "_N", every other run of characters one "_". "analog²" → "analog_2";
    "adversarial eps=0.1" → "adversarial_eps=0.1"; "sap(rounds=3)" → "sap_rounds=3"."""
    text = re.sub("[⁰¹²³⁴⁵⁶⁷⁸⁹]+", lambda m: "_" + m.group().translate(_SUPERSCRIPTS), label)
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text).strip("_") or "x"


def unique_stems(shown: dict[str, str]) -> dict[str, str]:
    """Full label → file stem: the slug of its shown (short) label, plus "-" and a 6-digit hash of
    the full label only where two full labels would otherwise share a stem."""
    stems = {full: slug(short) for full, short in shown.items()}
    counts = defaultdict(int)
    for stem in stems.values():
        counts[stem] += 1
    return {full: stem if counts[stem] == 1 else f"{stem}-{hashlib.sha256(full.encode()).hexdigest()[:6]}"
            for full, stem in stems.items()}


def _ci_words(n: int) -> str:
    return f"95 % CI over {n} replicates" if n > 1 else "1 replicate, no CI"


def _stat(by_seed: dict[int, float] | None, scale: float) -> tuple[float, float] | None:
    if not by_seed:
        return None
    mean, ci = t_interval(list(by_seed.values()))
    return mean * scale, (0.0 if math.isnan(ci) else ci * scale)


def _band(ax, xs, means, cis, color, label, **line) -> None:
    ax.plot(xs, means, marker="o", markersize=3.5, color=color, label=label, **line)
    if any(c > 0 for c in cis):
        ax.fill_between(xs, [m - c for m, c in zip(means, cis)], [m + c for m, c in zip(means, cis)],
                        color=color, alpha=0.18, linewidth=0)


def _grid(n_rows: int, n_cols: int, title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.2 * n_cols + 0.6, 6.5), 3.3 * n_rows + 0.8), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharey=True)
    fig.suptitle(title, fontsize=10, wrap=True)
    return fig, axes


def write_plots(records: Iterable[dict], out_dir: str | Path, metric: str = "accuracy", title: str = "") -> list[Path]:
    """Write the figures described in the module docstring into `out_dir`; return their paths."""
    records = list(records)
    means = replicate_means(records, metric)
    if not means:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scale = 100.0 if metric == "accuracy" else 1.0
    ylabel = f"{metric} (%)" if metric == "accuracy" else metric
    realised: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        if r["metric"] == metric and r["sparsity"] is not None:
            realised[(r["source"], r["pruner"], r["sparsity_label"])].append(r["sparsity"])

    pruned_rows = [row for row in means if row[1] != DENSE]
    dense_rows = [row for row in means if row[1] == DENSE]
    sources = sorted({row[0] for row in pruned_rows})
    pruners = list(dict.fromkeys(row[1] for row in sorted(pruned_rows, key=lambda r: r[1])))
    conditions = sorted({col[0] for cols in means.values() for col in cols}, key=lambda c: (c != DIGITAL, c))
    colors = _colors(len(pruners))
    paths: list[Path] = []
    shown = short_columns(r for r in records if r["metric"] == metric)
    stems = unique_stems({cond: shown.names.get(cond, cond) for cond in conditions})

    def heading(cond: str, what: str = "") -> str:
        """"run name — analog¹: what — 95 % CI over 3 replicates", the full label on a second line."""
        seeds = {s for cols in means.values() for col, by_seed in cols.items() if col[0] == cond for s in by_seed}
        name = shown.names.get(cond, cond) + (f": {what}" if what else "")
        text = " — ".join(t for t in (title, name, _ci_words(len(seeds))) if t)
        return text + (f"\n{shown.note_of[cond]}" if cond in shown.note_of else "")

    def dense_stat(col) -> tuple[float, float] | None:
        for row in dense_rows:
            if col in means[row]:
                return _stat(means[row][col], scale)
        return None

    for cond in conditions:
        drifts = sorted({col[1] for cols in means.values() for col in cols if col[0] == cond},
                        key=lambda d: -1 if d is None else d)
        # ---- metric vs sparsity, one panel per (source, drift time)
        head = heading(cond)
        fig, axes = _grid(max(len(sources), 1), len(drifts), head)
        for i, source in enumerate(sources or ["-"]):
            for j, drift in enumerate(drifts):
                ax, col = axes[i][j], (cond, drift)
                for p, pruner in enumerate(pruners):
                    pts, auto = [], []
                    for row in pruned_rows:
                        if row[0] != source or row[1] != pruner or col not in means[row]:
                            continue
                        stat = _stat(means[row][col], scale)
                        if row[2] == "auto":
                            x = sum(realised[row]) / len(realised[row]) if realised[row] else math.nan
                            auto.append((x, *stat))
                        else:
                            pts.append((float(row[2]), *stat))
                    pts.sort()
                    if pts:
                        _band(ax, [x for x, _, _ in pts], [m for _, m, _ in pts], [c for _, _, c in pts],
                              colors[p], pruner)
                    for x, m, c in auto:
                        ax.errorbar([x], [m], yerr=[c], fmt="D", color=colors[p], markersize=5, capsize=3,
                                    label=f"{pruner}, auto sparsity")
                dense = dense_stat(col)
                if dense is not None:
                    ax.axhline(dense[0], color="0.3", linestyle="--", linewidth=1, label=DENSE)
                    if dense[1] > 0:
                        ax.axhspan(dense[0] - dense[1], dense[0] + dense[1], color="0.5", alpha=0.12, linewidth=0)
                _label_panel(ax, source if len(sources) > 1 else None, drift, "target sparsity", ylabel if j == 0 else None)
        axes[0][0].legend(fontsize=8, loc="best")
        path = out / f"{slug(metric)}_vs_sparsity__{stems[cond]}.png"
        _save(fig, path, head)
        paths.append(path)

        # ---- metric vs drift time, one panel per (source, pruner), for conditions with drift times
        times = [d for d in drifts if d is not None]
        if len(times) < 2 or not pruners:
            continue
        sparsities = sorted({row[2] for row in pruned_rows}, key=lambda s: (s == "auto", float(s) if s != "auto" else 0))
        scolors = _colors(len(sparsities), cmap="viridis")
        head = heading(cond, f"{metric} vs drift time")
        fig, axes = _grid(max(len(sources), 1), len(pruners), head)
        positive = all(t > 0 for t in times)
        for i, source in enumerate(sources or ["-"]):
            for j, pruner in enumerate(pruners):
                ax = axes[i][j]
                for k, s in enumerate(sparsities):
                    row = (source, pruner, s)
                    if row not in means:
                        continue
                    pts = [(t, *_stat(means[row][(cond, t)], scale)) for t in times if (cond, t) in means[row]]
                    if pts:
                        _band(ax, [t for t, _, _ in pts], [m for _, m, _ in pts], [c for _, _, c in pts],
                              scolors[k], f"s={s}")
                dense_pts = [(t, *dense_stat((cond, t))) for t in times if dense_stat((cond, t)) is not None]
                if dense_pts:
                    _band(ax, [t for t, _, _ in dense_pts], [m for _, m, _ in dense_pts], [c for _, _, c in dense_pts],
                          "0.3", DENSE, linestyle="--")
                if positive:
                    ax.set_xscale("log")
                else:
                    ax.set_xscale("symlog", linthresh=1.0)
                ax.set_xticks(times)
                ax.set_xticklabels([format_drift(t) for t in times], fontsize=8)
                ax.minorticks_off()
                ax.set_title(pruner if len(sources) <= 1 else f"{source}, {pruner}", fontsize=9)
                ax.set_xlabel("time after programming")
                if j == 0:
                    ax.set_ylabel(ylabel)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7, loc="best")
        path = out / f"{slug(metric)}_vs_drift__{stems[cond]}.png"
        _save(fig, path, head)
        paths.append(path)
    freed = replicate_means(records, "tiles_freed")  # the analog conditions' hardware accounting
    for cond in conditions:
        if not any((cond, None) in cols for cols in freed.values()):
            continue
        drifts = sorted({col[1] for cols in means.values() for col in cols if col[0] == cond},
                        key=lambda d: -1 if d is None else d)
        head = heading(cond, f"{metric} vs crossbar tiles freed")
        fig, axes = _grid(max(len(sources), 1), len(drifts), head)
        for i, source in enumerate(sources or ["-"]):
            for j, drift in enumerate(drifts):
                ax, col = axes[i][j], (cond, drift)
                for p, pruner in enumerate(pruners + [DENSE]):
                    pts = []
                    for row in pruned_rows + dense_rows:
                        if row[1] != pruner or (row[0] != source and pruner != DENSE) or col not in means[row] \
                                or (cond, None) not in freed.get(row, {}):
                            continue
                        x = _stat(freed[row][(cond, None)], 1.0)
                        pts.append((x[0], x[1], *_stat(means[row][col], scale)))
                    pts.sort()
                    if not pts:
                        continue
                    color = "0.3" if pruner == DENSE else colors[p]
                    ax.errorbar([q[0] for q in pts], [q[2] for q in pts], xerr=[q[1] for q in pts],
                                yerr=[q[3] for q in pts], fmt="o-" if pruner != DENSE else "s", color=color,
                                markersize=4, capsize=2, linewidth=1, label=pruner)
                _label_panel(ax, source if len(sources) > 1 else None, drift, "crossbar tiles freed (all-zero, not programmed)", ylabel if j == 0 else None)
        axes[0][0].legend(fontsize=8, loc="best")
        path = out / f"{slug(metric)}_vs_tiles__{stems[cond]}.png"
        _save(fig, path, head)
        paths.append(path)
    return paths


def _label_panel(ax, source: str | None, drift: float | None, xlabel: str, ylabel: str | None) -> None:
    """A (source, drift time) panel's title, axis labels (y only on the first column) and grid."""
    panel = [] if source is None else [source]
    if drift is not None:
        panel.append(f"drift {format_drift(drift)}")
    ax.set_title(", ".join(panel), fontsize=9)
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _save(fig, path: Path, title: str) -> None:
    """Write the figure; its title also goes into the PNG's Title text chunk (readable without
    looking at the picture: `PIL.Image.open(path).text["Title"]`)."""
    fig.savefig(path, dpi=110, metadata={"Title": title})


def _colors(n: int, cmap: str = "tab10") -> list:
    from matplotlib import colormaps

    cm = colormaps[cmap]
    if cmap == "tab10":
        return [cm(i % 10) for i in range(n)]
    return [cm(0.15 + 0.7 * i / max(n - 1, 1)) for i in range(n)]

"""`report --compare RUN_A RUN_B`: the same rows and columns of two runs side by side, with the
difference B − A and its 95% confidence interval. Reads only records from the results database.

Rows are (source, pruner, sparsity) and columns (condition and its numeric tags such as an attack's
eps, drift time), as in `report`. Values are first averaged within a replicate (over repeated
hardware draws). When both runs hold the same replicate indices (n ≥ 2) the difference is paired: d_r = b_r − a_r per replicate r, reported as
mean(d) ± t_{0.975, n−1}·s_d/√n. Pairing is exact for common random numbers (same root seed: the
same calibration draws and hardware draws) and still valid for independent runs. Otherwise the
Welch interval is used: (m_B − m_A) ± t_{0.975, ν}·√(s_A²/n_A + s_B²/n_B), ν by Welch–Satterthwaite.
A difference whose interval excludes 0 is marked. The paired interval is the one `report` ranks
with (report.paired_difference). Conditions are shown by their short labels (report.short_labels)
with one footnote line per shortened label.

If each run has exactly one gradient source and they differ (the usual "same sweep, another noise
level" comparison), rows are matched on (pruner, sparsity) alone.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..registry import DENSE, DIGITAL
from .report import (DRIFT_TIME, LOWER_IS_BETTER, column_label, footnotes, format_drift, grid_of, markdown_cell,
                     paired_difference, short_labels, sparsity_sort, t_interval)

Row = tuple[str, str, str]  # (source, pruner, sparsity_label)
Column = tuple[str, "float | None"]  # (condition, drift_time)


def condition_column(record: dict) -> str:
    """The condition label of a record's column: the condition plus its grid coordinates other than
    the drift time (e.g. an attack's eps=0.1), exactly as `report` splits columns, so those are
    never averaged together."""
    return column_label(record["condition"], tuple(kv for kv in grid_of(record) if kv[0] != DRIFT_TIME))


@dataclass
class ShortColumns:
    """How `condition_column` texts are shown (report.short_labels applied to their condition)."""
    names: dict[str, str]  # column text → "analog¹ eps=0.1"
    note_of: dict[str, str]  # column text → its footnote line, for columns whose condition was shortened
    notes: list[str]  # every footnote line, in column order


def short_columns(records: Iterable[dict]) -> ShortColumns:
    """Each `condition_column` of the records with the condition's short label
    (report.short_labels: "analog(draws=3) eps=0.1" → "analog eps=0.1"), and the footnote lines."""
    records = list(records)
    short = short_labels(r["condition"] for r in records)
    names, note_of = {}, {}
    for r in records:
        text, cond = condition_column(r), r["condition"]
        names[text] = column_label(short[cond], tuple(kv for kv in grid_of(r) if kv[0] != DRIFT_TIME))
        if short[cond] != cond:
            note_of[text] = f"{short[cond]} = {cond}"
    return ShortColumns(names, note_of, footnotes(short))


def replicate_means(records: Iterable[dict], metric: str) -> dict[Row, dict[Column, dict[int, float]]]:
    """row → column → replicate → mean of that replicate's values (over draws)."""
    values: dict[Row, dict[Column, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        if r["metric"] != metric or r["value"] is None:
            continue
        col = (condition_column(r), r["drift_time"])
        values[(r["source"], r["pruner"], r["sparsity_label"])][col][r["seed"]].append(r["value"])
    return {row: {col: {seed: sum(v) / len(v) for seed, v in seeds.items()} for col, seeds in cols.items()}
            for row, cols in values.items()}


def _welch(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float]:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return mb - ma, math.nan
    from scipy import stats

    va = sum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = sum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    se2 = va + vb
    if se2 == 0:
        return mb - ma, 0.0
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return mb - ma, float(stats.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(se2)


@dataclass
class ComparedCell:
    source: str
    pruner: str
    sparsity: str
    condition: str
    drift_time: float | None
    a: tuple[float, float, int] | None  # (mean, ci half-width, replicates)
    b: tuple[float, float, int] | None
    diff: tuple[float, float] | None  # (B − A, ci half-width)
    paired: bool
    label: str = ""  # the condition as shown: short label and grid tags (short_columns)

    @property
    def significant(self) -> bool:
        return self.diff is not None and not math.isnan(self.diff[1]) and abs(self.diff[0]) > self.diff[1]


@dataclass
class Comparison:
    metric: str
    cells: list[ComparedCell]
    matched_on_source: bool
    sources: tuple[str, str]  # the single source of A and of B when rows were matched without it
    footnotes: list[str] = field(default_factory=list)  # "analog¹ = analog(…)" per shortened condition


def _only_source(rows: Iterable[Row]) -> str | None:
    sources = {r[0] for r in rows if r[1] != DENSE}
    return next(iter(sources)) if len(sources) == 1 else None


def compare_records(records_a: list[dict], records_b: list[dict], metric: str = "accuracy") -> Comparison:
    """Match the summary cells of two runs and compute B − A with a 95% CI for each."""
    ma, mb = replicate_means(records_a, metric), replicate_means(records_b, metric)
    sa, sb = _only_source(ma), _only_source(mb)
    by_source = not (sa is not None and sb is not None and sa != sb)

    def key(row: Row) -> tuple:
        return row if by_source else ("*", row[1], row[2])

    shown = short_columns(r for r in [*records_a, *records_b] if r["metric"] == metric)
    ka = {key(r): r for r in ma}
    kb = {key(r): r for r in mb}
    out: list[ComparedCell] = []
    keys = sorted(set(ka) | set(kb), key=lambda k: (k[1] != DENSE, k[0], sparsity_sort(k[2]), k[1]))
    for k in keys:
        ra, rb = ka.get(k), kb.get(k)
        cols_a = ma.get(ra, {}) if ra else {}
        cols_b = mb.get(rb, {}) if rb else {}
        cols = sorted(set(cols_a) | set(cols_b), key=lambda c: (c[0] != DIGITAL, c[0], c[1] if c[1] is not None else -1))
        for col in cols:
            a = cols_a.get(col)
            b = cols_b.get(col)
            sum_a = (*t_interval(list(a.values())), len(a)) if a else None
            sum_b = (*t_interval(list(b.values())), len(b)) if b else None
            diff, paired = None, False
            if a and b:
                if set(a) == set(b) and len(a) >= 2:
                    paired = True
                    diff = paired_difference(a, b)[:2]
                else:
                    diff = _welch(list(a.values()), list(b.values()))
            source = k[0] if by_source else f"{sa} → {sb}"
            out.append(ComparedCell(source, k[1], k[2], col[0], col[1], sum_a, sum_b, diff, paired,
                                    shown.names.get(col[0], col[0])))
    return Comparison(metric, out, by_source, (sa or "", sb or ""), shown.notes)


def comparison_as_dicts(comparison: Comparison) -> list[dict[str, Any]]:
    def nan_none(x: float) -> float | None:
        return None if x is None or math.isnan(x) else x

    out = []
    for c in comparison.cells:
        out.append({
            "source": c.source, "pruner": c.pruner, "sparsity": c.sparsity, "condition": c.condition,
            "drift_time": c.drift_time, "metric": comparison.metric,
            "mean_a": c.a[0] if c.a else None, "ci95_a": nan_none(c.a[1]) if c.a else None,
            "replicates_a": c.a[2] if c.a else 0,
            "mean_b": c.b[0] if c.b else None, "ci95_b": nan_none(c.b[1]) if c.b else None,
            "replicates_b": c.b[2] if c.b else 0,
            "diff": c.diff[0] if c.diff else None, "ci95_diff": nan_none(c.diff[1]) if c.diff else None,
            "paired": c.paired, "significant": c.significant,
        })
    return out


def _fmt(metric: str, mean: float, ci: float, signed: bool = False) -> str:
    scale, digits = (100.0, 1) if metric == "accuracy" else (1.0, 3)
    m = f"{mean * scale:+.{digits}f}" if signed else f"{mean * scale:.{digits}f}"
    return f"{m} ± {ci * scale:.{digits}f}" if not math.isnan(ci) else f"{m} ±–"


def _comparison_grid(comparison: Comparison) -> tuple[list[str], list[list[str]], list[int], list[bool]]:
    """Headers, rows (text), the sign of each significant Δ (+1 B better, −1 B worse, 0 not
    significant) and where a new (source, pruner, sparsity) block starts: shared by both renderers."""
    metric = comparison.metric
    better_sign = -1 if metric in LOWER_IS_BETTER else 1
    show_source = len({c.source for c in comparison.cells if c.pruner != DENSE}) > 1 or not comparison.matched_on_source
    headers = [*(["source"] if show_source else []), "pruner", "sparsity", "condition", "A", "B", "Δ (B − A)"]
    rows, signs, new_block = [], [], []
    previous = None
    for c in comparison.cells:
        block = (c.source, c.pruner, c.sparsity)
        new_block.append(previous is not None and block != previous)
        previous = block
        name = c.label or c.condition
        cond = f"{name} @ {format_drift(c.drift_time)}" if c.drift_time is not None else name
        a = _fmt(metric, c.a[0], c.a[1]) if c.a else "—"
        b = _fmt(metric, c.b[0], c.b[1]) if c.b else "—"
        d = "—" if c.diff is None else _fmt(metric, c.diff[0], c.diff[1], signed=True)
        signs.append(0 if not c.significant else (1 if better_sign * c.diff[0] > 0 else -1))
        rows.append([*([c.source] if show_source else []), c.pruner, c.sparsity, cond, a, b, d])
    return headers, rows, signs, new_block


_CAPTION = ("mean ± 95 % CI over replicates; Δ = B − A (paired by replicate when both runs hold the same "
            "replicates, else Welch); {mark} = CI excludes 0")


def render_comparison(comparison: Comparison, name_a: str, name_b: str, console=None) -> None:
    """Print the comparison as a rich table: A, B and B − A (green: B better, red: B worse), then one
    footnote line per shortened condition label."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    metric = comparison.metric
    unit = " (%)" if metric == "accuracy" else ""
    table = Table(title=Text(f"{metric}{unit}: A = {name_a}  vs  B = {name_b}"), caption=_CAPTION.format(mark="bold"))
    headers, rows, signs, new_block = _comparison_grid(comparison)
    for h in headers:
        table.add_column(h, justify="right" if h in ("sparsity", "A", "B", "Δ (B − A)") else "left")
    for texts, sign, new in zip(rows, signs, new_block):
        if new:
            table.add_section()
        style = {1: "bold green", -1: "bold red"}.get(sign, "")
        table.add_row(*(Text(t) for t in texts[:-1]), Text(texts[-1], style=style))
    console.print(table)
    for line in comparison.footnotes:
        console.print(Text(line), highlight=False)


def render_comparison_markdown(comparison: Comparison, name_a: str, name_b: str) -> str:
    """The comparison as a GitHub-flavoured markdown table (a significant Δ in bold), then the caption
    and the footnotes as plain lines."""
    metric = comparison.metric
    unit = " (%)" if metric == "accuracy" else ""
    headers, rows, signs, _ = _comparison_grid(comparison)
    right = [h in ("sparsity", "A", "B", "Δ (B − A)") for h in headers]
    lines = [f"**{markdown_cell(f'{metric}{unit}: A = {name_a} vs B = {name_b}')}**", "",
             "| " + " | ".join(markdown_cell(h) for h in headers) + " |",
             "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    for texts, sign in zip(rows, signs):
        cells = [markdown_cell(t) for t in texts]
        if sign:
            cells[-1] = f"**{cells[-1]}**"
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", _CAPTION.format(mark="bold")]
    for note in comparison.footnotes:
        lines += ["", markdown_cell(note)]
    return "\n".join(lines) + "\n"

"""Reports read only the results database: summary tables (rich, markdown), JSON and CSV records.

Summary statistic: for every (source, pruner, sparsity) row and (condition, grid point) column,
values are first averaged within a replicate (over repeated hardware draws), then reported as the
mean over replicates ± the half-width of a 95% Student-t confidence interval over replicates
(t_{0.975, n−1} · s / √n; shown as "±–" with a single replicate).

Stars: within each (source, sparsity) block a row gets ★ in a column only if it has the best mean
there (higher is better, lower for metrics in LOWER_IS_BETTER) AND it is ahead of every other pruned
row of the block by a paired 95% interval: over the replicates present in both rows, the differences
of the replicate means have a Student-t interval that excludes 0 in the row's favour
(`paired_difference`). With fewer than 2 paired replicates no star is possible. The dense reference
row is not ranked. No ★ in a column means no pruner is clearly ahead there.

Column labels: a condition's label can be long (`analog(draws=3,drift_times=[1.0,86400.0])`);
headers show its member name (`short_labels`), numbered with superscripts when two different
conditions share one, and a footnote line gives each shortened label in full.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..registry import CLEAN, DENSE, DIGITAL
from .store import RECORD_FIELDS

LOWER_IS_BETTER = {"loss"}


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of a Student-t confidence interval; half-width NaN for one value."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    from scipy import stats

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)


def paired_difference(a: dict[Any, float], b: dict[Any, float],
                      confidence: float = 0.95) -> tuple[float, float, int]:
    """b − a paired by replicate: (mean, CI half-width, n) of the differences b[r] − a[r] over the
    replicates r present in both; half-width NaN below 2 pairs, everything NaN with none."""
    common = sorted(set(a) & set(b))
    if not common:
        return math.nan, math.nan, 0
    mean, half = t_interval([b[r] - a[r] for r in common], confidence)
    return mean, half, len(common)


def format_drift(seconds: float | None) -> str:
    if seconds is None:
        return ""
    for unit, size in (("y", 31536000), ("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and abs(seconds / size - round(seconds / size)) < 1e-9:
            return f"{round(seconds / size)}{unit}"
    return f"{seconds:g}s"


# A condition's grid coordinates in one measurement: (tag, value) pairs, drift_time first, then by
# tag name. Every numeric tag but `draw` is one (results/store.py); each point is a report column.
Grid = tuple[tuple[str, float], ...]
DRIFT_TIME = "drift_time"


def grid_of(record: dict) -> Grid:
    """The grid coordinates of a record (records built by hand may give drift_time and numeric
    `tag_*` fields instead of `grid`)."""
    grid = record.get("grid")
    if grid is None:
        grid = {k[4:]: v for k, v in record.items()
                if k.startswith("tag_") and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if record.get(DRIFT_TIME) is not None:
            grid[DRIFT_TIME] = record[DRIFT_TIME]
    return tuple(sorted(grid.items(), key=lambda kv: (kv[0] != DRIFT_TIME, kv[0])))


def grid_label(grid: Grid) -> str:
    """"@ 1h eps=0.1": a drift time in its unit after "@", any other coordinate as tag=value."""
    return " ".join(f"@ {format_drift(v)}" if k == DRIFT_TIME else f"{k}={v:g}" for k, v in grid)


def column_label(condition: str, grid: Grid) -> str:
    return f"{condition} {grid_label(grid)}" if grid else condition


_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def condition_order(label: str) -> tuple:
    """The order of conditions in every report: digital first, then by label."""
    return (label != DIGITAL, label)


def short_labels(conditions: Iterable[str]) -> dict[str, str]:
    """Full condition label → its short label for headers (tables, markdown, compare, plots): the
    member name, the text before the first "(" ("analog(draws=3)" → "analog"). When different
    labels share a member name they are numbered with superscripts in the order their columns
    appear (`condition_order`): "analog¹", "analog²". The one place this is decided."""
    labels = sorted(set(conditions), key=condition_order)
    by_name: dict[str, list[str]] = defaultdict(list)
    for label in labels:
        by_name[label.split("(", 1)[0].strip() or label].append(label)
    out = {}
    for name, same in by_name.items():
        for i, label in enumerate(same, 1):
            out[label] = name if len(same) == 1 else name + str(i).translate(_SUPERSCRIPT)
    return {label: out[label] for label in labels}


def footnotes(short: dict[str, str]) -> list[str]:
    """One line per shortened condition: "analog = analog(draws=3,drift_times=[1.0,86400.0])"."""
    return [f"{s} = {full}" for full, s in short.items() if s != full]


def _grid_sort(grid: Grid) -> tuple:
    values = dict(grid)
    return (values.get(DRIFT_TIME, -1.0), tuple((k, v) for k, v in grid if k != DRIFT_TIME))


@dataclass
class Summary:
    metric: str
    columns: list[tuple[str, Grid]]  # (condition, grid coordinates)
    rows: list[tuple[str, str, str]]  # (source, pruner, sparsity_label)
    cells: dict[tuple, dict[tuple, tuple[float, float, int]]]  # row → column → (mean, ci, n)
    best: set[tuple[tuple, tuple]]
    realised: dict[tuple, float]  # row → mean realised sparsity (what `auto` chose; iterative pruners' reach)
    protocols: dict[tuple, str]  # row → the protocol(s) that produced it (one_shot, multi_stage, gradual, iterative)
    replicates: dict[tuple, dict[tuple, dict[int, float]]] = field(default_factory=dict)  # row → column → replicate → mean over draws
    short: dict[str, str] = field(default_factory=dict)  # condition → short label (short_labels)

    def sparsity_label(self, row: tuple) -> str:
        """The row's sparsity; when the realised one differs (auto, a target not reached) both."""
        label = row[2]
        real = self.realised.get(row)
        if real is None:
            return label
        try:
            differs = abs(float(label) - real) > 5e-3
        except ValueError:
            differs = True
        return f"{label}→{real:.2f}" if differs else label

    def column_label(self, col: tuple[str, Grid]) -> str:
        """The column's header: the condition's short label and its grid label ("analog @ 1s")."""
        return column_label(self.short.get(col[0], col[0]), col[1])

    def footnotes(self) -> list[str]:
        return footnotes(self.short)

    def replicate_count(self) -> str:
        """How many replicates the cells hold: "3", or "2–3" when cells differ."""
        ns = {n for cols in self.cells.values() for _, _, n in cols.values()}
        if not ns:
            return "0"
        return str(min(ns)) if len(ns) == 1 else f"{min(ns)}–{max(ns)}"

    def caption(self) -> str:
        unit = " (%)" if self.metric == "accuracy" else ""
        n = self.replicate_count()
        few = any(k < 3 for cols in self.cells.values() for _, _, k in cols.values())
        return (f"{self.metric}{unit}, mean ± 95 % CI over {n} replicates; ★ = best at that sparsity, ahead of "
                f"every other pruner by a paired 95 % CI over {n} replicates; no ★ = none is clearly ahead"
                + (f"; {FEW} = a CI from fewer than 3 replicates (too few to trust; run more)" if few else ""))


def describe_run(info: dict) -> str:
    """The line printed before a run's table: what was pruned, on what data, and how good the
    dense model is (empty for runs stored before this was recorded)."""
    if not info:
        return ""
    shape = "×".join(str(s) for s in info["input_shape"])
    lo, hi = info["input_range"]
    line = (f"data: {info['data']}, {info['train']} train / {info['test']} test examples, input {shape} in "
            f"[{lo:.3g}, {hi:.3g}], {info['classes']} classes · model: {info['model']}, "
            f"{info['prunable']:,} prunable weights · dense test accuracy {100 * info['dense_accuracy']:.1f} %")
    # warnings the run's inputs raised (legal but suspicious data), stored with it and shown with it
    return "\n".join([line, *(f"warning: {w}" for w in info.get("warnings") or [])])


def make_console():
    """A rich console; when output is not a terminal (a pipe, a file, CI) it is wide enough not
    to wrap table cells, since nothing will be resized there anyway."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=200)


def sparsity_sort(label: str) -> float:
    try:
        return float(label)
    except ValueError:
        return 2.0  # "auto" after the numeric ones


def summarize(records: Iterable[dict], metric: str = "accuracy") -> Summary:
    per_seed: dict[tuple, dict[tuple, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    pruner_order: dict[str, int] = {}
    realised: dict[tuple, dict[tuple, float]] = defaultdict(dict)
    protocols: dict[tuple, set[str]] = defaultdict(set)
    for r in records:
        if r["metric"] != metric or r["value"] is None:
            continue
        row = (r["source"], r["pruner"], r["sparsity_label"])
        if r.get("sparsity") is not None:
            realised[row][(r["seed"], r.get("cell_key"))] = r["sparsity"]
        col = (r["condition"], grid_of(r))
        per_seed[row][col][r["seed"]].append(r["value"])
        if r.get("protocol") and r["pruner"] != DENSE:  # the dense row is not pruned by any protocol
            protocols[row].add(r["protocol"])
        pruner_order.setdefault(r["pruner"], len(pruner_order))
    cells: dict[tuple, dict[tuple, tuple[float, float, int]]] = {}
    replicates: dict[tuple, dict[tuple, dict[int, float]]] = {}
    columns: set[tuple] = set()
    for row, cols in per_seed.items():
        cells[row], replicates[row] = {}, {}
        for col, seeds in cols.items():
            by_seed = {seed: sum(v) / len(v) for seed, v in sorted(seeds.items())}
            m, ci = t_interval(list(by_seed.values()))
            cells[row][col] = (m, ci, len(by_seed))
            replicates[row][col] = by_seed
            columns.add(col)
    ordered_cols = sorted(columns, key=lambda c: (condition_order(c[0]), _grid_sort(c[1])))
    # the dense reference first, then the identity source (clean gradients) before the noisy ones
    rows = sorted(cells, key=lambda r: (r[1] != DENSE, r[0] != CLEAN, r[0], sparsity_sort(r[2]), r[1]))
    best: set[tuple[tuple, tuple]] = set()
    sign = -1 if metric in LOWER_IS_BETTER else 1
    blocks: dict[tuple, list[tuple]] = defaultdict(list)
    for row in rows:
        if row[1] != DENSE:
            blocks[(row[0], row[2])].append(row)
    for block_rows in blocks.values():
        for col in ordered_cols:
            present = [r for r in block_rows if col in cells[r]]
            if len(present) < 2:
                continue
            top = max(sign * cells[r][col][0] for r in present)
            for r in present:
                if sign * cells[r][col][0] == top and all(
                        _clearly_ahead(replicates[r][col], replicates[o][col], sign) for o in present if o != r):
                    best.add((r, col))
    mean_realised = {row: sum(v.values()) / len(v) for row, v in realised.items() if v}
    return Summary(metric, ordered_cols, rows, cells, best, mean_realised,
                   {row: ", ".join(sorted(v)) for row, v in protocols.items()}, replicates,
                   short_labels(c[0] for c in ordered_cols))


def _clearly_ahead(mine: dict[int, float], other: dict[int, float], sign: int) -> bool:
    """Whether `mine` beats `other` by a paired 95% interval that excludes 0 (sign −1: lower is better)."""
    mean, half, n = paired_difference(other, mine)
    return n >= 2 and not math.isnan(half) and sign * mean - half > 0


# A CI from 2 replicates has one degree of freedom (t = 12.7): it is shown, but marked.
FEW = "†"


def _fmt(metric: str, mean: float, ci: float, n: int = 3) -> str:
    scale, digits = (100.0, 1) if metric == "accuracy" else (1.0, 3)
    m = f"{mean * scale:.{digits}f}"
    if math.isnan(ci):
        return f"{m} ±–"
    return f"{m} ± {ci * scale:.{digits}f}{FEW if n < 3 else ''}"


@dataclass
class _Grid:
    """The summary table as text, shared by the rich and the markdown renderers."""
    headers: list[str]
    right: list[bool]  # right-justified columns
    rows: list[list[str]]
    starred: list[set[int]]  # per row: indices of cells that carry ★
    new_block: list[bool]  # per row: a new (source, sparsity) block starts here


def _table_grid(summary: Summary) -> _Grid:
    show_source = len({r[0] for r in summary.rows if r[1] != DENSE}) > 1
    lead = ["source"] if show_source else []
    headers = [*lead, "pruner", "protocol", "sparsity", *(summary.column_label(c) for c in summary.columns)]
    right = [False] * (len(lead) + 2) + [True] * (1 + len(summary.columns))
    grid = _Grid(headers, right, [], [], [])
    previous_block = None
    for row in summary.rows:
        block = (row[0], row[2])
        grid.new_block.append(previous_block is not None and block != previous_block)
        previous_block = block
        texts, stars = [*([row[0]] if show_source else []), row[1], summary.protocols.get(row, ""),
                        summary.sparsity_label(row)], set()
        for col in summary.columns:
            if col not in summary.cells[row]:
                texts.append("")
                continue
            mean, ci, n = summary.cells[row][col]
            text = _fmt(summary.metric, mean, ci, n)
            if (row, col) in summary.best:
                stars.add(len(texts))
                text = f"★ {text}"
            texts.append(text)
        grid.rows.append(texts)
        grid.starred.append(stars)
    return grid


def render_table(summary: Summary, title: str = "", console=None) -> None:
    """Print the summary as a rich table (accuracy shown in %), its caption saying what ★ means, and
    under it one footnote line per condition whose label was shortened in the headers."""
    from rich.table import Table
    from rich.text import Text

    console = console or make_console()
    table = Table(title=title or None, caption=summary.caption())
    grid = _table_grid(summary)
    for header, right in zip(grid.headers, grid.right):
        table.add_column(Text(header), justify="right" if right else "left")
    for texts, stars, new_block in zip(grid.rows, grid.starred, grid.new_block):
        if new_block:
            table.add_section()
        table.add_row(*(Text(t, style="bold green" if i in stars else "") for i, t in enumerate(texts)))
    console.print(table)
    for line in summary.footnotes():
        console.print(Text(line), highlight=False)


def markdown_cell(text: str) -> str:
    """Text safe inside a markdown table cell (| and \\ escaped)."""
    return text.replace("\\", "\\\\").replace("|", "\\|")


def render_markdown(summary: Summary, title: str = "") -> str:
    """The summary as a GitHub-flavoured markdown table: the same rows, columns and ★ as the rich
    table (blocks follow each other without separators), then the caption and the footnotes as
    plain lines."""
    grid = _table_grid(summary)
    lines = [f"**{markdown_cell(title)}**", ""] if title else []
    lines.append("| " + " | ".join(markdown_cell(h) for h in grid.headers) + " |")
    lines.append("|" + "|".join("---:" if right else "---" for right in grid.right) + "|")
    for texts in grid.rows:
        lines.append("| " + " | ".join(markdown_cell(t) for t in texts) + " |")
    lines += ["", summary.caption()]
    for note in summary.footnotes():  # a paragraph each, so every renderer keeps them on lines of their own
        lines += ["", markdown_cell(note)]
    return "\n".join(lines) + "\n"


def _flat_records(records: list[dict]) -> tuple[list[str], list[dict]]:
    """Field names and rows of the long format: RECORD_FIELDS, then one field per grid tag other
    than drift_time (which RECORD_FIELDS has), named after the tag ("grid_" + tag if that name is
    taken), so values at different grid points never look alike."""
    extra = sorted({k for r in records for k, _ in grid_of(r)} - {DRIFT_TIME})
    names = {k: (f"grid_{k}" if k in RECORD_FIELDS else k) for k in extra}
    rows = []
    for r in records:
        grid = dict(grid_of(r))
        rows.append({**{k: r.get(k) for k in RECORD_FIELDS}, **{names[k]: grid.get(k) for k in extra}})
    return [*RECORD_FIELDS, *names.values()], rows


def records_json(records: list[dict]) -> str:
    return json.dumps(_flat_records(records)[1], indent=1)


def records_csv(records: list[dict]) -> str:
    fields, rows = _flat_records(records)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def summary_as_dict(summary: Summary) -> list[dict[str, Any]]:
    out = []
    for row in summary.rows:
        for col, (mean, ci, n) in summary.cells[row].items():
            out.append({"source": row[0], "pruner": row[1], "protocol": summary.protocols.get(row), "sparsity": row[2],
                        "realised_sparsity": summary.realised.get(row), "condition": col[0],
                        "drift_time": dict(col[1]).get(DRIFT_TIME), "grid": dict(col[1]),
                        "tags": grid_label(tuple(kv for kv in col[1] if kv[0] != DRIFT_TIME)),
                        "metric": summary.metric, "mean": mean,
                        "ci95": None if math.isnan(ci) else ci, "replicates": n,
                        "best": (row, col) in summary.best})
    return out


TILE_METRICS = ("tiles", "tiles_freed", "row_reads", "column_reads")


def layer_tiles(records: Iterable[dict]) -> dict[tuple, dict[str, dict[str, float]]]:
    """(source, pruner, sparsity label, layer) → condition → tile metric → mean over replicates, from
    the per-layer accounting measurements (`layer_<metric>`, text tag `layer`; deploy/accounting.py)."""
    acc: dict[tuple, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        metric = r["metric"]
        if not metric.startswith("layer_") or metric[6:] not in TILE_METRICS or r.get("tag_layer") is None:
            continue
        key = (r["source"], r["pruner"], r["sparsity_label"], r["tag_layer"])
        acc[key][r["condition"]][metric[6:]].append(r["value"])
    return {key: {cond: {m: sum(v) / len(v) for m, v in metrics.items()} for cond, metrics in conds.items()}
            for key, conds in acc.items()}


def layer_rows(cell_logs: list[dict], records: Iterable[dict] = ()) -> list[dict[str, Any]]:
    """Per-layer rows (name, size, sparsity, PQI before → after) averaged over replicates, and with
    `records` holding hardware accounting, each analog condition's tiles, tiles freed and line reads
    per inference for that layer (row["tiles"]: condition → metric → mean).

    One block per (source, pruner, sparsity); PQI is I_{0.5,1} over the surviving weights (see
    swap_hw/pqi.py). The same pruned model is shared by all conditions of a cell group, so each
    (replicate, pruner, sparsity, source) is counted once.
    """
    tiles = layer_tiles(records)
    seen: set[tuple] = set()
    acc: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    sizes: dict[tuple, int] = {}
    for cell in cell_logs:
        log = cell.get("prune_log_json")
        if not log or "layers" not in log:
            continue
        ident = (cell["source"], cell["pruner"], cell["sparsity_label"], cell["seed"])
        if ident in seen:
            continue
        seen.add(ident)
        for layer in log["layers"]:
            key = (cell["source"], cell["pruner"], cell["sparsity_label"], layer["name"])
            sizes[key] = layer["size"]
            for field_ in ("sparsity", "pqi_before", "pqi_after"):
                if layer.get(field_) is not None:
                    acc[key][field_].append(layer[field_])
    rows = []
    for key in sorted(acc, key=lambda k: (k[0], k[1], sparsity_sort(k[2]))):
        vals = acc[key]
        mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
        rows.append({"source": key[0], "pruner": key[1], "sparsity": key[2], "layer": key[3], "size": sizes[key],
                     "layer_sparsity": mean(vals["sparsity"]), "pqi_before": mean(vals["pqi_before"]),
                     "pqi_after": mean(vals["pqi_after"]), "tiles": tiles.get(key, {})})
    return rows


def render_layers(rows: list[dict[str, Any]], title: str = "", console=None) -> None:
    """Print the per-layer sparsity and PQI table (rich)."""
    from rich.table import Table

    console = console or make_console()
    conditions = sorted({c for r in rows for c in r.get("tiles", {})})
    short = short_labels(conditions)
    table = Table(title=title or None,
                  caption="PQI = I(0.5,1) over surviving weights, mean over replicates; larger = sparser/more compressible"
                  + ("; tiles = crossbar tiles programmed (all-zero tiles freed), reads = input / output lines per "
                     "inference with a non-zero weight (swap_hw/deploy/accounting.py)" if any(r.get("tiles") for r in rows) else "")
                  + "".join(f"\n{short_name} = {full}" for full, short_name in short.items() if short_name != full))
    for col, justify in (("source", "left"), ("pruner", "left"), ("sparsity", "right"), ("layer", "left"),
                         ("size", "right"), ("layer sparsity", "right"), ("PQI before → after", "right")):
        table.add_column(col, justify=justify)
    for cond in conditions:  # the hardware accounting of each analog condition (deploy/accounting.py)
        table.add_column(f"{short[cond]}: tiles (freed)", justify="right")
        table.add_column(f"{short[cond]}: row / column reads", justify="right")
    previous = None
    for r in rows:
        block = (r["source"], r["pruner"], r["sparsity"])
        if previous is not None and block != previous:
            table.add_section()
        previous = block
        before = "–" if r["pqi_before"] is None else f"{r['pqi_before']:.3f}"
        after = "–" if r["pqi_after"] is None else f"{r['pqi_after']:.3f}"
        hardware = []
        for cond in conditions:
            t = r.get("tiles", {}).get(cond)
            hardware += (["–", "–"] if t is None else
                         [f"{t['tiles']:g} ({t['tiles_freed']:g})", f"{t['row_reads']:,.0f} / {t['column_reads']:,.0f}"])
        table.add_row(r["source"], r["pruner"], r["sparsity"], r["layer"], str(r["size"]),
                      f"{100 * r['layer_sparsity']:.1f}%", f"{before} → {after}", *hardware)
    console.print(table)

"""The report's output: stars backed by a paired 95 % interval, short column labels with footnotes,
`report --format markdown`, and plot titles / file names. Records are built by hand."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from swap_hw.results.report import (
    paired_difference,
    render_markdown,
    render_table,
    short_labels,
    summarize,
    summary_as_dict,
)
from swap_hw.results.store import CellRecord, Store

LONG = "analog(draws=3,drift_times=[1.0,86400.0])"
RERAM = "analog(device=reram)"


def records(values: dict[str, dict[int, float]], condition: str = "digital", sparsity: str = "0.5",
            metric: str = "accuracy", grid: dict | None = None, source: str = "clean") -> list[dict]:
    """Long-format records as Store.records returns them: RECORD_FIELDS plus grid and cell_key."""
    out = []
    for pruner, by_seed in values.items():
        label = "0" if pruner == "dense" else sparsity
        for seed, v in by_seed.items():
            out.append({"run": "r", "pruner": pruner, "source": source, "sparsity_label": label,
                        "sparsity": float(label), "seed": seed, "condition": condition, "protocol": "one_shot",
                        "drift_time": (grid or {}).get("drift_time"), "draw": 0, "metric": metric, "value": v,
                        "grid": dict(grid or {}), "cell_key": f"{pruner}-{seed}-{condition}-{label}"})
    return out


def starred(summary) -> set[tuple[str, str]]:
    return {(row[1], summary.column_label(col)) for row, col in summary.best}


def table_text(summary, title: str = "") -> str:
    console = Console(record=True, width=250)
    render_table(summary, title=title, console=console)
    return console.export_text()


# --------------------------------------------------------------------------------------------
# stars


def test_paired_difference_is_the_t_interval_of_the_per_replicate_differences():
    from scipy import stats

    a = {0: 0.80, 1: 0.82, 2: 0.78, 5: 0.5}
    b = {0: 0.85, 1: 0.86, 2: 0.84, 7: 0.9}  # replicates 5 and 7 have no partner
    mean, half, n = paired_difference(a, b)
    d = [0.05, 0.04, 0.06]
    assert n == 3 and mean == pytest.approx(0.05)
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * stats.tstd(d) / math.sqrt(3))
    assert math.isnan(paired_difference({0: 1.0}, {0: 2.0})[1])
    assert paired_difference({0: 1.0}, {1: 2.0})[2] == 0


def test_a_better_mean_without_a_clear_paired_lead_gets_no_star():
    """lr's mean is higher, but replicate by replicate it wins, loses, wins: the paired CI spans 0."""
    from scipy import stats

    lr = {0: 0.90, 1: 0.70, 2: 0.95}
    swap = {0: 0.85, 1: 0.80, 2: 0.82}
    summary = summarize(records({"dense": {0: 0.97, 1: 0.97, 2: 0.97}, "lr": lr, "swap": swap}))
    assert summary.cells[("clean", "lr", "0.5")][("digital", ())][0] > summary.cells[("clean", "swap", "0.5")][("digital", ())][0]
    assert stats.ttest_rel([lr[s] for s in range(3)], [swap[s] for s in range(3)]).pvalue > 0.05
    assert summary.best == set()
    assert not any(d["best"] for d in summary_as_dict(summary))
    body = table_text(summary).split("accuracy (%)")[0]  # the rows, not the caption
    assert "★" not in body


def test_a_clear_paired_lead_gets_the_star_even_when_the_unpaired_cis_overlap():
    """Replicates differ a lot (different calibration draws), but lr beats swap in every one of
    them by ~2 points: the paired interval excludes 0, the per-row CIs overlap widely."""
    from scipy import stats

    lr = {0: 0.80, 1: 0.90, 2: 0.70}
    swap = {0: 0.78, 1: 0.881, 2: 0.679}
    summary = summarize(records({"lr": lr, "swap": swap}))
    (m_lr, ci_lr, _), (m_sw, ci_sw, _) = (summary.cells[("clean", p, "0.5")][("digital", ())] for p in ("lr", "swap"))
    assert m_lr - ci_lr < m_sw + ci_sw  # unpaired intervals overlap
    assert stats.ttest_rel(list(lr.values()), list(swap.values())).pvalue < 0.05
    assert starred(summary) == {("lr", "digital")}
    best = {d["pruner"]: d["best"] for d in summary_as_dict(summary)}
    assert best == {"lr": True, "swap": False}
    lines = [line for line in table_text(summary).splitlines() if "★" in line and "one_shot" in line]
    assert len(lines) == 1 and " lr " in lines[0]


def test_the_star_needs_a_lead_over_every_other_pruner_and_two_paired_replicates():
    three = records({"lr": {0: 0.90, 1: 0.91, 2: 0.92},
                     "swap": {0: 0.85, 1: 0.86, 2: 0.87},  # clearly behind lr
                     "magnitude": {0: 0.905, 1: 0.88, 2: 0.91}})  # behind on the mean, not clearly
    assert summarize(three).best == set()
    without_magnitude = [r for r in three if r["pruner"] != "magnitude"]
    assert starred(summarize(without_magnitude)) == {("lr", "digital")}

    # only replicate 1 is in both rows: a huge lead, but one pair is no interval
    one_pair = records({"lr": {0: 0.99, 1: 0.99}, "swap": {1: 0.10, 2: 0.11}})
    assert summarize(one_pair).best == set()
    # a single replicate each: no star either
    assert summarize(records({"lr": {0: 0.99}, "swap": {0: 0.10}})).best == set()
    # exactly tied replicate by replicate: the difference is 0 ± 0, not ahead
    assert summarize(records({"lr": {0: 0.9, 1: 0.8}, "swap": {0: 0.9, 1: 0.8}})).best == set()


def test_stars_for_a_lower_is_better_metric_go_to_the_lowest_and_blocks_are_separate():
    loss = records({"lr": {0: 0.30, 1: 0.31, 2: 0.32}, "swap": {0: 0.50, 1: 0.52, 2: 0.51}}, metric="loss")
    assert starred(summarize(loss, "loss")) == {("lr", "digital")}
    # another sparsity where swap is clearly ahead: each (source, sparsity) block is ranked on its own
    acc = (records({"lr": {0: 0.90, 1: 0.91, 2: 0.92}, "swap": {0: 0.85, 1: 0.86, 2: 0.87}}, sparsity="0.5")
           + records({"lr": {0: 0.50, 1: 0.52, 2: 0.51}, "swap": {0: 0.60, 1: 0.61, 2: 0.63}}, sparsity="0.9"))
    summary = summarize(acc)
    assert {(row[1], row[2]) for row, _ in summary.best} == {("lr", "0.5"), ("swap", "0.9")}


def test_the_caption_says_what_the_star_means_and_over_how_many_replicates():
    summary = summarize(records({"lr": {0: 0.90, 1: 0.91, 2: 0.92}, "swap": {0: 0.85, 1: 0.86, 2: 0.87}}))
    assert summary.caption() == (
        "accuracy (%), mean ± 95 % CI over 3 replicates; ★ = best at that sparsity, ahead of every other pruner "
        "by a paired 95 % CI over 3 replicates; no ★ = none is clearly ahead")
    text = " ".join(table_text(summary).split())  # rich wraps the caption
    assert "ahead of every other pruner by a paired 95 % CI over 3 replicates; no ★ = none is clearly ahead" in text
    mixed = summarize(records({"lr": {0: 0.9, 1: 0.9}, "swap": {0: 0.8, 1: 0.8, 2: 0.8}}))
    assert "over 2–3 replicates" in mixed.caption()


# --------------------------------------------------------------------------------------------
# short labels


def test_short_labels_number_same_name_conditions_in_column_order():
    short = short_labels([LONG, "digital", RERAM, "adversarial(attack=pgd)", LONG])
    assert short == {"digital": "digital", "adversarial(attack=pgd)": "adversarial",
                     RERAM: "analog¹", LONG: "analog²"}  # "analog(de…" sorts before "analog(dr…"
    assert list(short) == ["digital", "adversarial(attack=pgd)", RERAM, LONG]
    assert short_labels(["analog", LONG]) == {"analog": "analog¹", LONG: "analog²"}
    assert short_labels([LONG]) == {LONG: "analog"}


def two_analog_conditions() -> list[dict]:
    recs = records({"dense": {0: 0.95, 1: 0.95, 2: 0.96}, "lr": {0: 0.90, 1: 0.91, 2: 0.92},
                    "swap": {0: 0.85, 1: 0.86, 2: 0.87}})
    for cond, drop in ((LONG, 0.01), (RERAM, 0.05)):
        for t in (1.0, 3600.0):
            recs += [{**r, "condition": cond, "drift_time": t, "grid": {"drift_time": t},
                      "value": r["value"] - drop - 1e-6 * t, "cell_key": r["cell_key"] + cond}
                     for r in records({"dense": {0: 0.95, 1: 0.95, 2: 0.96}, "lr": {0: 0.90, 1: 0.91, 2: 0.92},
                                       "swap": {0: 0.85, 1: 0.86, 2: 0.87}})]
    return recs


def test_table_headers_use_short_labels_with_footnotes():
    summary = summarize(two_analog_conditions())
    headers = [summary.column_label(c) for c in summary.columns]
    assert headers == ["digital", "analog¹ @ 1s", "analog¹ @ 1h", "analog² @ 1s", "analog² @ 1h"]
    assert summary.footnotes() == [f"analog¹ = {RERAM}", f"analog² = {LONG}"]
    text = table_text(summary, title="t")
    lines = text.splitlines()
    assert "drift_times" not in "\n".join(lines[:-2])  # the long label only in its footnote
    assert lines[-2:] == [f"analog¹ = {RERAM}", f"analog² = {LONG}"]
    assert max(len(line.rstrip()) for line in lines[:-2]) < 110
    # summary_as_dict keeps the full condition label
    assert {d["condition"] for d in summary_as_dict(summary)} == {"digital", LONG, RERAM}


def test_compare_table_uses_the_same_short_labels():
    from swap_hw.results.compare import (
        compare_records,
        render_comparison,
        render_comparison_markdown,
    )

    recs = two_analog_conditions()
    comparison = compare_records(recs, [{**r, "value": r["value"] + 0.01} for r in recs])
    assert {c.condition for c in comparison.cells} == {"digital", LONG, RERAM}  # the data keep full labels
    assert {c.label for c in comparison.cells} == {"digital", "analog¹", "analog²"}
    console = Console(record=True, width=250)
    render_comparison(comparison, "A", "B", console=console)
    lines = console.export_text().splitlines()
    assert any("analog² @ 1h" in line for line in lines) and any("analog¹ @ 1s" in line for line in lines)
    assert lines[-2:] == [f"analog¹ = {RERAM}", f"analog² = {LONG}"]
    assert "drift_times" not in "\n".join(lines[:-2])
    md = render_comparison_markdown(comparison, "A", "B").splitlines()
    assert md[2] == "| pruner | sparsity | condition | A | B | Δ (B − A) |"
    assert any(line.startswith("| lr | 0.5 | analog² @ 1s | ") and line.endswith(" | **+1.0 ± 0.0** |") for line in md)
    assert md[-1] == f"analog² = {LONG}"


# --------------------------------------------------------------------------------------------
# markdown


def test_render_markdown_rows_stars_caption_and_footnotes():
    summary = summarize(two_analog_conditions())
    md = render_markdown(summary, title="analog — run abc").splitlines()
    assert md[0] == "**analog — run abc**" and md[1] == ""
    assert md[2] == "| pruner | protocol | sparsity | digital | analog¹ @ 1s | analog¹ @ 1h | analog² @ 1s | analog² @ 1h |"
    assert md[3] == "|---|---|---:|---:|---:|---:|---:|---:|"
    assert md[4] == "| dense |  | 0 | 95.3 ± 1.4 | 90.3 ± 1.4 | 90.0 ± 1.4 | 94.3 ± 1.4 | 94.0 ± 1.4 |"
    assert md[5] == "| lr | one_shot | 0.5 | ★ 91.0 ± 2.5 | ★ 86.0 ± 2.5 | ★ 85.6 ± 2.5 | ★ 90.0 ± 2.5 | ★ 89.6 ± 2.5 |"
    assert md[6] == "| swap | one_shot | 0.5 | 86.0 ± 2.5 | 81.0 ± 2.5 | 80.6 ± 2.5 | 85.0 ± 2.5 | 84.6 ± 2.5 |"
    assert md[7] == "" and md[8] == summary.caption()
    assert md[9:] == ["", f"analog¹ = {RERAM}", "", f"analog² = {LONG}"]


def test_markdown_escapes_pipes_and_shows_the_source_column_with_several_sources():
    recs = (records({"lr": {0: 0.9, 1: 0.9}, "swap": {0: 0.8, 1: 0.8}}, source="gaussian(std=2)")
            + records({"lr": {0: 0.9, 1: 0.9}, "swap": {0: 0.8, 1: 0.8}}, source="a|b"))
    md = render_markdown(summarize(recs)).splitlines()
    assert md[0] == "| source | pruner | protocol | sparsity | digital |"
    assert "| a\\|b | lr | one_shot | 0.5 | ★ 90.0 ± 0.0† |" in md  # †: a CI from 2 replicates
    assert all(line.count(" | ") == 4 for line in md[2:6])


def _store_with_run(db, run_id="0123456789abcdef", name="demo") -> None:
    with Store(db) as store:
        store.start_run(run_id, name, "demo.yaml", "", {}, 0, {}, None)
        keys = []
        for pruner, base in (("dense", 0.95), ("lr", 0.90), ("swap", 0.85)):
            for seed in range(3):
                for cond in ("digital", LONG):
                    ms = ([{"metric": "accuracy", "value": base + 0.01 * seed, "tags": {}}] if cond == "digital" else
                          [{"metric": "accuracy", "value": base - 0.02 + 0.01 * seed - 1e-6 * t,
                            "tags": {"drift_time": t, "draw": k}} for t in (1.0, 86400.0) for k in (0, 1)])
                    cell = CellRecord(cell_key=f"{pruner}{seed}{cond}", pruner=pruner, source="clean",
                                      sparsity_label="0" if pruner == "dense" else "0.5",
                                      sparsity=0.0 if pruner == "dense" else 0.5, seed=seed, condition=cond,
                                      protocol="one_shot", measurements=ms)
                    assert store.write_cell(cell)
                    keys.append(cell.cell_key)
        store.plan_cells(run_id, keys)
        store.finish_run(run_id)


def test_report_format_markdown_from_the_cli(tmp_path, capsys):
    from swap_hw.cli import main

    db = tmp_path / "r.sqlite"
    _store_with_run(db)
    assert main(["report", "--db", str(db), "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "**demo — run 0123456789abcdef**"
    assert lines[2] == "| pruner | protocol | sparsity | digital | analog @ 1s | analog @ 1d |"
    assert lines[5].startswith("| lr | one_shot | 0.5 | ★ 91.0 ± 2.5 | ★ 89.0 ± 2.5 |")
    assert lines[-1] == f"analog = {LONG}"
    assert "ahead of every other pruner by a paired 95 % CI over 3 replicates" in out
    target = tmp_path / "summary.md"
    assert main(["report", "--db", str(db), "--format", "markdown", "--out", str(target)]) == 0
    assert capsys.readouterr().out == "" and target.read_text(encoding="utf-8") == out
    # the rich table of the same run says the same, footnote included
    assert main(["report", "--db", str(db)]) == 0
    table = capsys.readouterr().out
    assert "analog @ 1d" in table and table.rstrip().splitlines()[-1] == f"analog = {LONG}"


def test_report_compare_in_markdown(tmp_path, capsys):
    from swap_hw.cli import main

    db = tmp_path / "r.sqlite"
    _store_with_run(db, "aaaa000000000000", "a")
    with Store(db) as store:  # a second run over the same cells
        store.start_run("bbbb000000000000", "b", "b.yaml", "", {}, 0, {}, None)
        store.plan_cells("bbbb000000000000", [r["cell_key"] for r in store.records("aaaa000000000000")])
    assert main(["report", "--db", str(db), "--compare", "aaaa", "bbbb", "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "**accuracy (%): A = a (aaaa000000000000) vs B = b (bbbb000000000000)**"
    assert "| lr | 0.5 | analog @ 1d | 80.4 ± 2.5 | 80.4 ± 2.5 | +0.0 ± 0.0 |" in lines
    assert lines[-1] == f"analog = {LONG}"


# --------------------------------------------------------------------------------------------
# plots


def png_title(path) -> str:
    from PIL import Image

    with Image.open(path) as img:
        return img.text["Title"]


def test_plot_titles_and_file_names_use_short_labels_and_no_hash(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from swap_hw.results.plots import write_plots

    paths = write_plots(two_analog_conditions(), tmp_path / "figs", title="demo")
    names = sorted(p.name for p in paths)
    assert names == ["accuracy_vs_drift__analog_1.png", "accuracy_vs_drift__analog_2.png",
                     "accuracy_vs_sparsity__analog_1.png", "accuracy_vs_sparsity__analog_2.png",
                     "accuracy_vs_sparsity__digital.png"]
    titles = {p.name: png_title(p) for p in paths}
    assert titles["accuracy_vs_sparsity__digital.png"] == "demo — digital — 95 % CI over 3 replicates"
    assert titles["accuracy_vs_sparsity__analog_2.png"] == (
        f"demo — analog² — 95 % CI over 3 replicates\nanalog² = {LONG}")
    assert titles["accuracy_vs_drift__analog_1.png"] == (
        f"demo — analog¹: accuracy vs drift time — 95 % CI over 3 replicates\nanalog¹ = {RERAM}")
    # fewer replicates present: the title says so
    two = [r for r in two_analog_conditions() if r["seed"] < 2 and r["condition"] == "digital"]
    [p] = write_plots(two, tmp_path / "two")
    assert png_title(p) == "digital — 95 % CI over 2 replicates"


def test_plot_file_names_get_a_hash_only_when_two_would_collide(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from swap_hw.results.plots import slug, unique_stems, write_plots

    assert slug("analog²") == "analog_2" and slug("adversarial eps=0.1") == "adversarial_eps=0.1"
    assert unique_stems({"x": "x", "y(a=1)": "y"}) == {"x": "x", "y(a=1)": "y"}
    recs = (records({"lr": {0: 0.9, 1: 0.91}, "swap": {0: 0.8, 1: 0.82}}, condition="cold+dry")
            + records({"lr": {0: 0.9, 1: 0.91}, "swap": {0: 0.8, 1: 0.82}}, condition="cold_dry"))
    names = sorted(p.name for p in write_plots(recs, tmp_path / "figs"))
    assert len(names) == 2 and all(n.startswith("accuracy_vs_sparsity__cold_dry-") for n in names)
    assert len({n.rsplit("-", 1)[1] for n in names}) == 2


def test_report_plot_titles_from_the_cli_carry_no_run_id(tmp_path, capsys):
    from swap_hw.cli import main

    db = tmp_path / "r.sqlite"
    _store_with_run(db)
    assert main(["report", "--db", str(db), "--plot", str(tmp_path / "p"), "--format", "json"]) == 0
    pngs = sorted((tmp_path / "p").glob("*.png"))
    assert [p.name for p in pngs] == ["accuracy_vs_drift__analog.png", "accuracy_vs_sparsity__analog.png",
                                      "accuracy_vs_sparsity__digital.png"]
    for p in pngs:
        title = png_title(p)
        assert title.startswith("demo — ") and "95 % CI over 3 replicates" in title
        assert "0123456789" not in title and "run" not in title


def test_a_ci_from_fewer_than_three_replicates_is_marked():
    two = summarize(records({"lr": {0: 0.9, 1: 0.8}, "swap": {0: 0.8, 1: 0.7}}))
    three = summarize(records({"lr": {0: 0.9, 1: 0.8, 2: 0.85}, "swap": {0: 0.8, 1: 0.7, 2: 0.75}}))
    assert "†" in render_markdown(two) and "fewer than 3 replicates" in two.caption()
    assert "†" not in render_markdown(three) and "fewer than 3" not in three.caption()

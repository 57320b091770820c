"""`Study`: a scenario built in Python, on the user's own model and data; `Results`: what it gives.

A Study and a scenario file are the same thing: a Study holds the scenario's configuration (the
YAML mapping) plus, optionally, an in-memory model object and data tensors, and runs through the
same engine (`sweep.run.run_scenario`) into the same SQLite store; `Study.from_yaml(path)` and
`study.to_yaml()` convert between the two. In-memory inputs are known by the digests of their
contents (the model's class and weights, the data's tensors), so changing them gives new cells.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any, Iterable

import yaml
from torch import nn

from ..config import InlineInputs, Scenario, check_members, load_scenario, parse_scenario_text, set_override
from ..errors import ConfigError, ParameterError, SwapHwError
from ..registry import Component
from ..results.progress import ProgressReporter
from ..results.report import describe_run, make_console, records_csv, render_markdown, render_table, summarize
from ..results.store import Store
from ..sweep.executors import make_executor
from ..sweep.export import choose_cell, verified_cell
from ..sweep.run import RunSummary, run_scenario
from . import inputs


def entry(member: Any) -> Any:
    """A member as a scenario entry: a name stays a name; a built member becomes {name, params}
    with only the parameters that differ from the defaults."""
    if isinstance(member, Component):
        return {"name": member.name, **member.params.model_dump(mode="json", exclude_defaults=True)}
    return member


def _entries(members: Any, field: str) -> list:
    if isinstance(members, (str, Component, dict)):
        members = [members]
    try:
        return [entry(m) for m in members]
    except TypeError:
        raise ParameterError(f"{field}: expected a list of names or members, got {type(members).__name__}") from None


class _TempFolder:
    """A folder deleted when nothing refers to it any more (a Study's default results)."""

    def __init__(self):
        self.path = Path(tempfile.mkdtemp(prefix="swap_hw_study_"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, True)


class Study:
    """One comparison of pruners on your model and data. See docs/api.md.

    model:      a torch.nn.Module (pruned as it is: train it first), a built-in architecture name
                ("mlpnet", "cnn", "resnet20", "mobilenetv1"), a factory "module:Name" or
                "path/to/file.py:Name", or the YAML `model` mapping; None = mlpnet.
    train/test: your data — DataLoaders, Datasets of (input, label) or (x, y) tensors — used as
                they are; None = the `data` mapping (default: scikit-learn's digits, offline).
    sources, pruners, conditions: names or members (`swap_hw.sources.Analog(...)`).
    protocol:   "one_shot", "multi_stage", "gradual", or a member.
    sparsities, repeats, seed, calibration (n, or the YAML mapping), train_settings (the YAML
    `model.train` mapping, for models trained here), name: as in a scenario file.
    db:         None = a temporary database that lives as long as the Study or its Results; a path
                = that SQLite store (resumable: running again computes only missing cells).
    device:     where the cells are computed: "auto" (a GPU when torch sees one), "cpu", "cuda",
                "cuda:N"; None = the scenario default, auto. Not part of the cells' identity (docs/gpu.md).
    Bad arguments raise ParameterError naming the field and what is allowed, before any work.
    """

    def __init__(self, model: Any = None, train: Any = None, test: Any = None, *,
                 sources: Any = ("clean",), pruners: Any = ("magnitude", "lr", "swap"),
                 sparsities: Iterable[float | str] = (0.5, 0.8), conditions: Any = ("digital",),
                 protocol: Any = "one_shot", repeats: int = 3, seed: int = 0, calibration: Any = None,
                 data: Any = None, train_settings: dict | None = None, prune_layers: Any = None,
                 n_classes: int | None = None, name: str = "study", db: str | Path | None = None,
                 cache_dir: str | Path | None = None, device: str | None = None):
        if (train is None) != (test is None):
            raise ParameterError("train/test: give both (your data) or neither (the `data` mapping)")
        model_object = model if isinstance(model, nn.Module) else None
        model_block: dict[str, Any] = {}
        if isinstance(model, str):
            model_block = {"factory": model} if ":" in model else {"arch": model}
        elif isinstance(model, dict):
            model_block = dict(model)
        elif model is not None and model_object is None:
            raise ParameterError(f"model: expected a torch.nn.Module, an architecture name, a factory "
                                 f"'module:Name' or a mapping, got {type(model).__name__}")
        if isinstance(sparsities, (int, float, str)):
            sparsities = [sparsities]
        if calibration is not None and not isinstance(calibration, (int, dict)):
            raise ParameterError(f"calibration: the number of calibration examples or the calibration "
                                 f"mapping, got {type(calibration).__name__}")
        if train_settings is not None:
            model_block["train"] = dict(train_settings)
        if prune_layers is not None:
            model_block["prune_layers"] = prune_layers
        config: dict[str, Any] = {
            "name": name, "seed": seed, "repeats": repeats,
            **({"data": ({"name": data} if isinstance(data, str) else dict(data))} if data is not None else {}),
            **({"model": model_block} if model_block else {}),
            **({"calibration": {"n": calibration} if isinstance(calibration, int) else dict(calibration)}
               if calibration is not None else {}),
            "sources": _entries(sources, "sources"), "pruners": _entries(pruners, "pruners"),
            "sparsities": list(sparsities), "conditions": _entries(conditions, "conditions"),
            "protocol": entry(protocol),
            **({"device": device} if device is not None else {}),
        }
        data_splits = inputs.splits(train, test, n_classes) if train is not None else None
        self._init(config, InlineInputs.of(model_object, data_splits) if (model_object or data_splits) else None,
                   db, cache_dir, f"<study {name}>")

    def _init(self, config: dict, inline: InlineInputs | None, db: Any, cache_dir: Any, file: str) -> None:
        self._temp = _TempFolder() if db is None else None
        where = self._temp.path if self._temp else Path(db).parent
        config = dict(config)
        config["output"] = {"db": str(self._temp.path / "results.sqlite" if self._temp else db),
                            "cache_dir": str(cache_dir or where / "cache")}
        self.config = config
        try:
            scenario = parse_scenario_text(yaml.safe_dump(config, sort_keys=False), file)
            if inline is not None:
                if inline.model is not None and (scenario.spec.model.factory or "arch" in config.get("model", {})
                                                 or scenario.spec.model.checkpoint):
                    raise ConfigError(file, "model", "an in-memory model takes no arch, factory or checkpoint")
                scenario = dataclasses.replace(scenario, inline=inline)
                check_members(scenario)  # members' cross-checks see the in-memory data too
        except ConfigError as exc:
            raise ParameterError(f"{exc.field}: {exc.reason}" if exc.field else exc.reason) from None
        self.scenario: Scenario = scenario

    # --- the scenario-file form -----------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path, db: str | Path | None = None, overrides: list[str] | None = None) -> "Study":
        """The study a scenario file describes, with `--set`-style `overrides`; its results go to
        `db` (None: the file's own `output.db`)."""
        try:
            scenario = load_scenario(path, overrides)  # the whole file checked first, errors name it
        except ConfigError as exc:
            raise ParameterError(str(exc)) from None
        config = _apply(yaml.safe_load(scenario.text) or {}, overrides or [], str(path))
        output = config.pop("output", None) or {}
        study = cls.__new__(cls)
        study._init(config, None, db or scenario.spec.output.db, output.get("cache_dir"), str(path))
        return study

    def to_yaml(self, path: str | Path | None = None) -> str:
        """The scenario file of this study (written to `path` if given). A study on an in-memory
        model or data has no file form: save them (a factory + checkpoint, an npz) and name them."""
        if self.scenario.inline is not None:
            raise ParameterError("model/train/test: this study holds an in-memory model or data, which a "
                                 "scenario file cannot; save them (model.factory + model.checkpoint, data npz) "
                                 "and name them in the study instead")
        text = yaml.safe_dump({k: v for k, v in self.config.items() if k != "output"}, sort_keys=False)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    # --- running ----------------------------------------------------------------------------------

    def run(self, workers: int = 1, progress: bool = True, executor: Any = None, threads: int = 1) -> "Results":
        """Run (or resume) every cell; a progress bar in a terminal or a notebook. `workers` > 1:
        a local process pool (your model's class must then be importable by the workers: define
        it in a module, not in the notebook). `threads`: torch threads each cell is computed with
        (part of the cells' identity: results of different counts are never mixed). `executor`: a
        swap_hw.sweep.executors executor (its own thread count applies)."""
        console = make_console()
        own = executor is None
        executor = make_executor("local", workers, torch_threads=threads) if own else executor
        try:
            with ProgressReporter(console, quiet=not progress) as reporter:
                summary = run_scenario(self.scenario, on_event=reporter.event, executor=executor)
        finally:
            if own:
                executor.close()
        return Results(self, summary)

    def __repr__(self) -> str:
        s = self.scenario
        return (f"<Study {s.name}: {len(s.sources)} sources × {len(s.pruners)} pruners × "
                f"{len(s.spec.sparsities)} sparsities × {s.spec.repeats} replicates × {len(s.conditions)} "
                f"conditions, protocol {s.protocol.name}>")


def _apply(data: Any, overrides: list[str], file: str) -> dict:
    """`--set path=value` overrides applied to a scenario mapping (already validated with them)."""
    data = dict(data or {})
    for item in overrides:
        if "=" not in item:
            raise ParameterError(f"{item}: --set takes path.to.field=value")
        key, value = item.split("=", 1)
        try:
            set_override(data, key.strip(), value.strip(), file)
        except ConfigError as exc:
            raise ParameterError(str(exc)) from None
    return data


class Results:
    """The finished cells of a study's run, read from its store."""

    def __init__(self, study: Study, summary: RunSummary):
        self.study = study  # keeps a temporary database alive as long as the results are
        self.run_id = summary.run_id
        self.db = summary.db
        self.counts = summary
        self._records: list[dict] | None = None
        self._prepared = None

    @property
    def records(self) -> list[dict]:
        """Long-format records (one per measurement): run, pruner, source, sparsity, seed,
        condition, protocol, drift_time, draw, metric, value, grid (every grid coordinate)."""
        if self._records is None:
            with Store(self.db) as store:
                self._records = store.records(self.run_id)
        return self._records

    def summary(self, metric: str = "accuracy"):
        """Mean ± 95 % CI over replicates per (source, pruner, sparsity) and condition column."""
        return summarize(self.records, metric)

    def table(self, metric: str = "accuracy", console: Any = None) -> None:
        """Print the CLI's table (mean ± 95 % CI over replicates), after the line saying what the
        run worked on (data, model, dense accuracy)."""
        console = console or make_console()
        with Store(self.db) as store:
            info = describe_run(store.run_info(self.run_id))
        if info:
            console.print(info, highlight=False)
        render_table(self.summary(metric), title=f"{self.study.scenario.name} — run {self.run_id}", console=console)

    def to_markdown(self, metric: str = "accuracy") -> str:
        """The table as markdown (pastes into a paper draft or an issue)."""
        return render_markdown(self.summary(metric), title=f"{self.study.scenario.name} — run {self.run_id}")

    def to_csv(self, path: str | Path | None = None) -> str:
        """The records as CSV (the same as `report --format csv`), written to `path` if given."""
        text = records_csv(self.records)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    def to_pandas(self):
        """The records as a pandas DataFrame (grid coordinates as columns)."""
        try:
            import pandas as pd
        except ImportError:
            raise SwapHwError("to_pandas needs pandas: pip install pandas") from None
        rows = [{**{k: v for k, v in r.items() if k != "grid"}, **r.get("grid", {})} for r in self.records]
        return pd.DataFrame(rows)

    def pruned_model(self, pruner: str, sparsity: float | str, seed: int = 0, source: str | None = None) -> nn.Module:
        """The pruned model one cell evaluated (masks applied; BatchNorm statistics as evaluated),
        computed again from the run's seeds and checked against the weights' digest it recorded.
        `pruner` / `source`: labels as the table shows them, or a member name if unique."""
        return self.pruned_cell(pruner, sparsity, seed, source).model

    def pruned_cell(self, pruner: str, sparsity: float | str, seed: int = 0, source: str | None = None):
        """Like `pruned_model`, with its PruneResult (masks, weights, log): a sweep.cell.PrunedCell."""
        scenario = self.study.scenario
        with Store(self.db) as store:
            choice = choose_cell(store, self.run_id, scenario, pruner, sparsity, seed, source)
        cell, self._prepared = verified_cell(scenario, choice, self._prepared)
        return cell

    def __repr__(self) -> str:
        c = self.counts
        return f"<Results run {self.run_id}: {c.planned} cells ({c.computed} computed now, {c.skipped} reused) in {self.db}>"

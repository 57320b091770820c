"""`export`: the pruned model of one cell of a run, as a plain torch state_dict plus masks.

The pruned weights are recomputed, not stored: storing every pruned model of a sweep would make
the database grow by one model per (pruner, sparsity, source, replicate), thousands for a real
sweep, for the few models anyone exports. Recomputation is exact because every draw is seeded
from the run's root seed (runner.Seeds): the scenario is rebuilt from the resolved configuration
saved in the runs table, `prepare()` loads (or deterministically retrains) the same dense model,
and the cell is computed again by the runner's own `execute_unit` — so whatever the runner does
(one-shot, multi-stage, gradual, iterative) export does too — with the deployment conditions replaced
by one that only keeps the model it is handed, and the pruner's `prune`/`prune_iterative` calls
recorded to keep the masks. The runner records a content digest of every pruned weight set (prune
log `weights_sha`); the recomputed weights must match it bit for bit, or export refuses (e.g. after
a code change that alters what a pruner computes).

The file (`torch.save`) holds a dict: ``state_dict`` (every tensor of the pruned model, including
retrained biases and buffers; pruned weights exactly zero), ``masks`` (name → bool tensor, True =
kept, for the pruned weights) and ``meta`` (run, pruner, source, sparsity, replicate, architecture
and its build arguments). It loads with ``torch.load(path, weights_only=True)``;
``model.load_state_dict(bundle["state_dict"])`` fits the plain model
(`swap_hw.models.build_model(meta["arch"], meta["input_shape"], meta["n_classes"], seed,
**meta["options"])`), and a scenario can use the file as ``model.checkpoint``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from .config import Scenario, parse_scenario_text
from .deploy.base import Condition
from .digest import tensors_digest
from .errors import SwapHwError
from .pruners.base import PruneResult
from .store import Store


def scenario_of_run(store: Store, run_id: str) -> Scenario:
    """Rebuild the validated Scenario of a stored run from its resolved configuration."""
    run = store.run(run_id)
    if run is None:
        raise SwapHwError(f"{store.path}: no run {run_id!r}")
    resolved = json.loads(run["resolved_json"])
    data = dict(resolved)
    # a chained source is stored as {"name": "chain", "members": [...]}; a scenario lists it as a list
    data["sources"] = [s["members"] if isinstance(s, dict) and s.get("name") == "chain" and "members" in s else s
                       for s in resolved["sources"]]
    return parse_scenario_text(yaml.safe_dump(data, sort_keys=False), f"run {run_id}")


def _pick(kind: str, wanted: str | None, labels: list[str], names: list[str]) -> int:
    if wanted is None:
        if len(labels) == 1:
            return 0
        raise SwapHwError(f"the run has {len(labels)} {kind}s; choose one with --{kind}: {', '.join(labels)}")
    if wanted in labels:
        return labels.index(wanted)
    hits = [i for i, n in enumerate(names) if n == wanted]
    if len(hits) == 1:
        return hits[0]
    what = "several" if hits else "no"
    raise SwapHwError(f"--{kind} {wanted!r} matches {what} {kind}s of the run; valid: {', '.join(labels)}")


def _pick_sparsity(wanted: str, sparsities: list) -> float | str:
    for s in sparsities:
        if s == "auto" and wanted == "auto":
            return s
        if s != "auto" and wanted != "auto":
            try:
                if math.isclose(float(wanted), float(s), rel_tol=0, abs_tol=1e-12):
                    return s
            except ValueError:
                break
    valid = ", ".join("auto" if s == "auto" else f"{float(s):g}" for s in sparsities)
    raise SwapHwError(f"--sparsity {wanted!r} is not a sparsity of the run; valid: {valid}")


class _KeepModel(Condition):
    """A stand-in deployment condition: keeps the model it is asked to evaluate, measures nothing."""

    name = "export"

    def __init__(self):
        super().__init__()
        self.model: nn.Module | None = None

    def evaluate(self, model: nn.Module, test, seed: int) -> list:
        self.model = model
        return []


def _recording(method, results: list):
    def call(*args, **kwargs):
        out = method(*args, **kwargs)
        results.append(out)
        return out

    return call


def recompute_cell(scenario: Scenario, source: int, pruner: int, sparsity: float | str, replicate: int):
    """Compute one cell again through the runner: (pruned model, PruneResult, prune log, Prepared).

    `source`, `pruner` index the scenario's members; `sparsity` is one of its sparsities; the
    model is exactly the one the runner's conditions evaluated for (source, pruner, sparsity,
    replicate), every seed derived as in the run.
    """
    from .runner import CellSpec, WorkUnit, execute_unit, prepare

    results: list = []
    recorded = copy.copy(scenario.pruners[pruner])  # the scenario's own member stays untouched
    for method in ("prune", "prune_iterative"):
        bound = getattr(recorded, method, None)
        if bound is not None:
            setattr(recorded, method, _recording(bound, results))
    keep = _KeepModel()
    pruners = list(scenario.pruners)
    pruners[pruner] = recorded
    probe = dataclasses.replace(scenario, pruners=tuple(pruners), conditions=(keep,))
    prep = prepare(probe)
    cell = CellSpec("export", int(replicate), int(source), int(pruner), sparsity, 0)
    records = list(execute_unit(prep, WorkUnit(int(replicate), int(source), (cell,)), {"export"}))
    if len(records) != 1 or keep.model is None or not results:
        raise SwapHwError("the runner did not produce the cell's pruned model")  # a bug, not user input
    # The staged protocols (multi_stage, gradual) call the pruner once per stage and keep only what
    # every stage kept; the final weights are the model's (fine-tuned, for gradual), not the last call's.
    masks = {name: torch.stack([r.masks[name].to(torch.bool) for r in results]).all(0) for name in results[-1].masks}
    params = dict(keep.model.named_parameters())
    weights = {name: params[name].detach().clone() for name in masks}
    final = PruneResult(masks=masks, weights=weights, log=results[-1].log, buffers=results[-1].buffers)
    return keep.model, final, records[0].prune_log or {}, prep


@dataclass
class ExportResult:
    path: Path
    layers: list[dict[str, Any]]  # name, shape, size, kept, sparsity
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    masks: dict[str, torch.Tensor] = field(repr=False)


def export_pruned(db: str | Path, run: str | None, pruner: str, sparsity: str, seed: int, out: str | Path,
                  source: str | None = None) -> ExportResult:
    """Recompute the pruned model of cell (source, pruner, sparsity, replicate `seed`) of `run` and
    write it to `out`. `run` is a run id or unique prefix (None: the newest run); `pruner` and
    `source` are labels as shown by `report` (or a member name, if unique in the run)."""
    with Store(db) as store:
        run_id = store.resolve_run_id(run)
        if run_id is None:
            raise SwapHwError(f"{db}: --run: no run matches {run!r}")
        scenario = scenario_of_run(store, run_id)
        pi = _pick("pruner", pruner, [p.label for p in scenario.pruners], [p.name for p in scenario.pruners])
        si = _pick("source", source, [s.label for s in scenario.sources], [s.name for s in scenario.sources])
        target_label = _pick_sparsity(str(sparsity), list(scenario.spec.sparsities))
        if not (0 <= int(seed) < scenario.spec.repeats):
            raise SwapHwError(f"--seed {seed} is not a replicate of the run; valid: 0 to {scenario.spec.repeats - 1}")
        label = "auto" if target_label == "auto" else f"{float(target_label):g}"
        pruner_c, source_c = scenario.pruners[pi], scenario.sources[si]
        row = store.conn.execute(
            "SELECT c.sparsity, c.prune_log_json FROM run_cells rc JOIN cells c ON c.cell_key = rc.cell_key"
            " WHERE rc.run_id=? AND c.pruner=? AND c.source=? AND c.sparsity_label=? AND c.seed=? LIMIT 1",
            (run_id, pruner_c.label, source_c.label, label, int(seed))).fetchone()
    if row is None:
        raise SwapHwError(f"run {run_id} holds no finished cell for pruner {pruner_c.label}, source "
                          f"{source_c.label}, sparsity {label}, seed {seed} (run the scenario to finish it)")
    stored_log = json.loads(row["prune_log_json"]) if row["prune_log_json"] else {}

    model, result, log, prep = recompute_cell(scenario, si, pi, target_label, int(seed))
    digest = log.get("weights_sha") or tensors_digest(result.weights)
    expected = stored_log.get("weights_sha")
    if expected is not None and digest != expected:
        raise SwapHwError(f"recomputed weights ({digest}) differ from the ones the run evaluated ({expected}); "
                          "the code or the dense model changed since the run — rerun it into a new database")
    if expected is None and row["sparsity"] is not None and abs(result.sparsity - row["sparsity"]) > 1e-9:
        raise SwapHwError(f"recomputed sparsity {result.sparsity:.6f} differs from the run's {row['sparsity']:.6f}")

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masks = {k: v.clone().to(torch.bool) for k, v in result.masks.items()}
    for name, mask in masks.items():
        if torch.any(state[name][~mask] != 0):
            raise SwapHwError(f"the recomputed model has non-zero weights outside the mask of {name}")
    target = log.get("sparsity_target", log.get("auto_target"))
    spec = scenario.spec
    meta = {
        "run": run_id, "scenario": scenario.name, "pruner": pruner_c.label, "pruner_config": pruner_c.describe(),
        "source": source_c.label, "sparsity_label": label,
        "sparsity_target": None if target is None else float(target),
        "sparsity": float(result.sparsity), "seed": int(seed), "arch": spec.model.arch,
        "options": dict(spec.model.options), "input_shape": list(prep.splits.input_shape),
        "n_classes": int(prep.splits.n_classes), "data": spec.data.name, "weights_sha": digest,
        "verified": expected is not None,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"state_dict": state, "masks": masks, "meta": meta}, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    layers = []
    for s in prep.layout.slices:
        kept = int(masks[s.name].sum())
        layers.append({"name": s.name, "shape": list(s.shape), "size": s.numel, "kept": kept,
                       "sparsity": 1.0 - kept / s.numel})
    return ExportResult(out, layers, meta, state, masks)

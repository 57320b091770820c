"""`export`: the pruned model of one cell of a run, as a plain torch state_dict plus masks.

The pruned weights are recomputed, not stored: storing every pruned model of a sweep would make
the database grow by one model per (pruner, sparsity, source, replicate), thousands for a real
sweep, for the few models anyone exports. Recomputation is exact because every draw is seeded
from the run's root seed (runner.Seeds): the scenario is rebuilt from the resolved configuration
saved in the runs table, `prepare()` loads (or deterministically retrains) the same dense model,
the calibration gradients of replicate K are collected again with the same seeds, and the pruner
is called exactly as the runner calls it. The runner records a content digest of every pruned
weight set (prune log `weights_sha`); the recomputed weights must match it bit for bit, or export
refuses (e.g. after a code change that alters what a pruner computes).

The file (`torch.save`) holds a dict: ``state_dict`` (every tensor of the model, pruned weights
exactly zero where masked), ``masks`` (name → bool tensor, True = kept, for the pruned weights)
and ``meta`` (run, pruner, source, sparsity, replicate, architecture and its build arguments). It
loads with ``torch.load(path, weights_only=True)``; ``model.load_state_dict(bundle["state_dict"])``
fits the plain model (`swap_hw.models.build_model(meta["arch"], meta["input_shape"],
meta["n_classes"], seed, **meta["options"])`), and a scenario can use the file as
``model.checkpoint``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import Scenario, parse_scenario_text
from .digest import tensors_digest
from .errors import SwapHwError
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
    from .models import apply_weights
    from .runner import _resolve_sparsity, prepare

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

    prep = prepare(scenario)
    grads = None
    if pruner_c.needs_gradients:
        batch = prep.splits.calibration(scenario.spec.calibration.n, prep.seeds.calibration(int(seed)))
        grads = source_c.collect(prep.dense, batch, prep.seeds.source(int(seed)), prep.layout)
    weights = prep.layout.weights_of(prep.dense)
    target = _resolve_sparsity(target_label, weights)
    result = pruner_c.prune(weights, grads, target)

    digest = tensors_digest(result.weights)
    expected = stored_log.get("weights_sha")
    if expected is not None and digest != expected:
        raise SwapHwError(f"recomputed weights ({digest}) differ from the ones the run evaluated ({expected}); "
                          "the code or the dense model changed since the run — rerun it into a new database")
    if expected is None and row["sparsity"] is not None and abs(result.sparsity - row["sparsity"]) > 1e-9:
        raise SwapHwError(f"recomputed sparsity {result.sparsity:.6f} differs from the run's {row['sparsity']:.6f}")

    model = apply_weights(prep.dense, result.weights)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masks = {k: v.clone() for k, v in result.masks.items()}
    spec = scenario.spec
    meta = {
        "run": run_id, "scenario": scenario.name, "pruner": pruner_c.label, "pruner_config": pruner_c.describe(),
        "source": source_c.label, "sparsity_label": label, "sparsity_target": float(target),
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

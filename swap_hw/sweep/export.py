"""`export`: the pruned model of one cell of a run, as a plain torch state_dict plus masks.

The pruned weights are recomputed, not stored: storing every pruned model of a sweep would make
the database grow by one model per (pruner, sparsity, source, replicate), thousands for a real
sweep, for the few models anyone exports. Recomputation is exact because every draw is seeded
from the run's root seed (plan.Seeds): the scenario is rebuilt from the resolved configuration
saved in the runs table, `prepare()` loads (or deterministically retrains) the same dense model,
and the cell's pruned model is computed again by `prune_cell`, the function the run itself used —
so whatever the run did (one-shot, multi-stage, gradual, iterative) export does too. The run records a content digest of every pruned weight set (prune
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

import errno
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from ..config import Scenario, parse_scenario_text, sparsity_label
from ..errors import RunFault, SwapHwError
from ..results.store import Store
from ..device import device_scope, resolve_device
from .cell import PrunedCell, compute_threads, prune_cell
from .prepare import Prepared, prepare


def scenario_of_run(store: Store, run_id: str) -> Scenario:
    """Rebuild the validated Scenario of a stored run from its resolved configuration."""
    run = store.run(run_id)
    if run is None:
        raise SwapHwError(f"{store.path}: no run {run_id!r}")
    resolved = json.loads(run["resolved_json"])
    if resolved.get("inline"):
        raise SwapHwError(f"run {run_id} was made from Python with an in-memory model or data, which the "
                          "database does not hold; take its models from the Study's Results (pruned_model)")
    data = {k: v for k, v in resolved.items() if k != "files"}
    # a chained source is stored as {"name": "chain", "members": [...]}; a scenario lists it as a list
    data["sources"] = [s["members"] if isinstance(s, dict) and s.get("name") == "chain" and "members" in s else s
                       for s in resolved["sources"]]
    scenario = parse_scenario_text(yaml.safe_dump(data, sort_keys=False), f"run {run_id}")
    for name, sha in (resolved.get("files") or {}).items():
        path, now = scenario.files.get(name, ("?", None))
        if now != sha:
            raise SwapHwError(f"run {run_id}: {name} ({path}) no longer holds the content the run used "
                              f"(digest {now} ≠ {sha}); restore that file to recompute its models")
    return scenario


def pick_member(kind: str, wanted: str | None, labels: list[str], names: list[str]) -> int:
    """Index of the member a user named by label (as `report` shows it) or by unique name."""
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


def pick_sparsity(wanted: str, sparsities: list) -> float | str:
    """The scenario's sparsity that `wanted` ("0.9", "auto") names."""
    for s in sparsities:
        if s == "auto" and wanted == "auto":
            return s
        if s != "auto" and wanted != "auto":
            try:
                if math.isclose(float(wanted), float(s), rel_tol=0, abs_tol=1e-12):
                    return s
            except ValueError:
                break
    valid = ", ".join(sparsity_label(s) for s in sparsities)
    raise SwapHwError(f"--sparsity {wanted!r} is not a sparsity of the run; valid: {valid}")


@dataclass
class ExportResult:
    path: Path
    layers: list[dict[str, Any]]  # name, shape, size, kept, sparsity
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    masks: dict[str, torch.Tensor] = field(repr=False)


@dataclass
class CellChoice:
    """One cell of a run, chosen by labels: member indices, the sparsity, the stored prune log."""

    source: int
    pruner: int
    sparsity: float | str
    replicate: int
    label: str
    stored: dict  # the stored cell: realised "sparsity", "prune_log" (None for very old cells)


def choose_cell(store: Store, run_id: str, scenario: Scenario, pruner: str, sparsity: str | float, seed: int,
                source: str | None = None) -> CellChoice:
    """The finished cell (source, pruner, sparsity, replicate `seed`) of a run; labels as `report`
    shows them, or a member name if unique in the run."""
    pi = pick_member("pruner", pruner, [p.label for p in scenario.pruners], [p.name for p in scenario.pruners])
    si = pick_member("source", source, [s.label for s in scenario.sources], [s.name for s in scenario.sources])
    target = pick_sparsity(str(sparsity), list(scenario.spec.sparsities))
    if not (0 <= int(seed) < scenario.spec.repeats):
        raise SwapHwError(f"--seed {seed} is not a replicate of the run; valid: 0 to {scenario.spec.repeats - 1}")
    label = sparsity_label(target)
    pruner_c, source_c = scenario.pruners[pi], scenario.sources[si]
    row = store.finished_cell(run_id, pruner_c.label, source_c.label, label, int(seed))
    if row is None:
        raise SwapHwError(f"run {run_id} holds no finished cell for pruner {pruner_c.label}, source "
                          f"{source_c.label}, sparsity {label}, seed {seed} (run the scenario to finish it)")
    return CellChoice(si, pi, target, int(seed), label, row)


def verified_cell(scenario: Scenario, choice: CellChoice, prep: Prepared | None = None) -> tuple[PrunedCell, Prepared]:
    """The chosen cell's pruned model computed again, checked bit for bit against the weights'
    digest the run recorded (or, for cells stored without one, against the realised sparsity)."""
    prep = prep or prepare(scenario)
    # on the scenario's device (a GPU's last bits differ from the CPU's, so the digest of a cell run
    # on a GPU is met only on one), at the thread count the run computed the cell with (1 for cells
    # stored before it was recorded)
    device = resolve_device(scenario.spec.device)
    with compute_threads((choice.stored["prune_log"] or {}).get("threads", 1)), device_scope(device):
        cell = prune_cell(prep.on_device(device), choice.source, choice.pruner, choice.sparsity, choice.replicate)
    digest = cell.log["weights_sha"]
    expected = (choice.stored["prune_log"] or {}).get("weights_sha")
    if expected is not None and digest != expected:
        raise SwapHwError(f"recomputed weights ({digest}) differ from the ones the run evaluated ({expected}); "
                          "the code or the dense model changed since the run — rerun it into a new database")
    realised = choice.stored["sparsity"]
    if expected is None and realised is not None and abs(cell.result.sparsity - realised) > 1e-9:
        raise SwapHwError(f"recomputed sparsity {cell.result.sparsity:.6f} differs from the run's {realised:.6f}")
    for name, mask in cell.result.masks.items():
        if torch.any(dict(cell.model.named_parameters())[name][~mask.to(torch.bool)] != 0):
            raise SwapHwError(f"the recomputed model has non-zero weights outside the mask of {name}")
    return cell, prep


def _output_error(out: Path, exc: OSError) -> SwapHwError:
    why = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT):
        return RunFault(f"{out}: cannot write the exported model ({why})")
    return SwapHwError(f"{out}: cannot write the exported model ({why}); pass another OUT.pt")


def writable_output(out: str | Path) -> Path:
    """The file `export` will write, checked before any recomputation: not a directory, its folder
    made if missing (not under a file) and writable."""
    out = Path(out)
    if out.is_dir():
        raise SwapHwError(f"{out}: is a directory; export writes one file, e.g. {out / 'pruned.pt'}")
    blocker = next((a for a in out.parents if a.exists()), out.parent)
    if blocker.exists() and not blocker.is_dir():
        raise SwapHwError(f"{out}: {blocker} is a file, not a folder; pass another OUT.pt")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out.parent):  # can a file be written there at all?
            pass
    except OSError as exc:
        raise _output_error(out, exc) from exc
    return out


def export_pruned(db: str | Path, run: str | None, pruner: str, sparsity: str, seed: int, out: str | Path,
                  source: str | None = None) -> ExportResult:
    """Recompute the pruned model of cell (source, pruner, sparsity, replicate `seed`) of `run` and
    write it to `out`. `run` is a run id or unique prefix (None: the newest run); `pruner` and
    `source` are labels as shown by `report` (or a member name, if unique in the run)."""
    out = writable_output(out)  # before the recomputation, which may train the dense model
    with Store(db) as store:
        run_id = store.resolve_run_id(run)
        if run_id is None:
            raise SwapHwError(f"{db}: --run: no run matches {run!r}")
        scenario = scenario_of_run(store, run_id)
        choice = choose_cell(store, run_id, scenario, pruner, sparsity, seed, source)
    cell, prep = verified_cell(scenario, choice)
    model, result, log = cell.model, cell.result, cell.log
    # the file holds CPU tensors whatever device recomputed them (torch.load needs no map_location)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    masks = {k: v.cpu().clone().to(torch.bool) for k, v in result.masks.items()}
    target = log.get("sparsity_target", log.get("auto_target"))
    spec = scenario.spec
    pruner_c, source_c = scenario.pruners[choice.pruner], scenario.sources[choice.source]
    meta = {
        "run": run_id, "scenario": scenario.name, "pruner": pruner_c.label, "pruner_config": pruner_c.describe(),
        "source": source_c.label, "sparsity_label": choice.label,
        "sparsity_target": None if target is None else float(target),
        "sparsity": float(result.sparsity), "seed": int(seed), "arch": None if spec.model.factory else spec.model.arch,
        "factory": spec.model.factory, "options": dict(spec.model.options),
        "input_shape": list(prep.splits.input_shape), "n_classes": int(prep.splits.n_classes), "data": spec.data.name,
        "weights_sha": log["weights_sha"], "verified": (choice.stored["prune_log"] or {}).get("weights_sha") is not None,
    }
    try:
        fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".tmp")
    except OSError as exc:
        raise _output_error(out, exc) from exc
    os.close(fd)
    try:
        torch.save({"state_dict": state, "masks": masks, "meta": meta}, tmp)
        os.replace(tmp, out)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _output_error(out, exc) from exc
        raise
    layers = []
    for s in prep.layout.slices:
        kept = int(masks[s.name].sum())
        layers.append({"name": s.name, "shape": list(s.shape), "size": s.numel, "kept": kept,
                       "sparsity": 1.0 - kept / s.numel})
    return ExportResult(out, layers, meta, state, masks)

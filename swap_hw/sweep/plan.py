"""Planning a sweep: every cell of a scenario, its key, and the work units that share gradients.

A cell is one (gradient source, replicate, pruner, sparsity, deployment condition) combination —
plus, per replicate and condition, a `dense` reference cell for the unpruned model. A cell's key
is a hash of everything that determines its values, so a finished cell is found again by any run
that would compute the same thing.

Seeds: the scenario's root seed; every draw derives its own seed from it and from what the draw
is for (`Seeds`). Conditions use one seed per replicate for every pruner, so all pruned models of a
replicate meet the same simulated hardware draws (common random numbers).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..config import Scenario, sparsity_label
from ..registry import DENSE
from ..seeding import derive_seed

# Bump when a change to the code changes what a cell computes, so old cached cells are not reused.
CELL_VERSION = 1


@dataclass(frozen=True)
class Seeds:
    """Every seed of a run, derived from the root seed and the purpose of the draw."""

    root: int

    @property
    def split(self) -> int:
        return derive_seed(self.root, "split")

    @property
    def init(self) -> int:
        return derive_seed(self.root, "init")

    @property
    def train(self) -> int:
        return derive_seed(self.root, "train")

    def calibration(self, replicate: int) -> int:
        return derive_seed(self.root, "calibration", replicate)

    def source(self, replicate: int) -> int:
        return derive_seed(self.root, "source", replicate)

    def prune(self, replicate: int) -> int:
        return derive_seed(self.root, "prune", replicate)

    def condition(self, replicate: int) -> int:
        return derive_seed(self.root, "condition", replicate)


@dataclass(frozen=True)
class CellSpec:
    key: str
    replicate: int
    source: int | None  # index into scenario.sources; None for the dense reference
    pruner: int | None  # index into scenario.pruners; None for the dense reference
    sparsity: float | str  # a number in [0, 1) or "auto"; 0.0 for dense
    condition: int  # index into scenario.conditions


@dataclass(frozen=True)
class WorkUnit:
    """Cells that share one set of calibration gradients (or the dense model, for source None)."""

    replicate: int
    source: int | None
    cells: tuple[CellSpec, ...]


def common_description(scenario: Scenario, threads: int = 1) -> dict[str, Any]:
    """Everything shared by all cells of a scenario that determines their values, the torch thread
    count they are computed with included (in the last bits of LR / SWAP weights it does): a count
    other than the default 1 gives cells of their own, so one database never mixes the two."""
    spec = scenario.spec
    return {
        **({"threads": int(threads)} if int(threads) != 1 else {}),
        "cell_version": CELL_VERSION,
        "root_seed": spec.seed,
        # user files (npz data, checkpoint, factory code) by content, never by path
        "data": scenario.data_description(),
        "model": scenario.model_description(),
        # where X over the budget is kept changes speed, not values (each mode is tested equal to
        # the dense one), so it stays out of the keys: a run resumes after switching it
        "calibration": spec.calibration.model_dump(mode="json", exclude={"over_budget", "spill_dir"}),
        "protocol": scenario.protocol.name,
        **scenario.protocol.key_settings(),
    }


def run_id(scenario: Scenario, threads: int = 1) -> str:
    """The run's id: the scenario's configuration hash, and the thread count when it is not 1 (a
    run at another count computes other cells, so it is another run)."""
    if int(threads) == 1:
        return scenario.config_hash()
    return hashlib.sha256(f"{scenario.config_hash()}:threads={int(threads)}".encode()).hexdigest()[:16]


def _key(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def plan_cells(scenario: Scenario, threads: int = 1) -> list[CellSpec]:
    """All cells of a scenario computed with `threads` torch threads, in execution order (grouped by
    replicate, then source)."""
    common = common_description(scenario, threads)
    cells: list[CellSpec] = []
    for r in range(scenario.spec.repeats):
        for c, cond in enumerate(scenario.conditions):
            key = _key({**common, "kind": DENSE, "replicate": r, "condition": cond.describe()})
            cells.append(CellSpec(key, r, None, None, 0.0, c))
        for si, src in enumerate(scenario.sources):
            for pi, pruner in enumerate(scenario.pruners):
                for s in scenario.spec.sparsities:
                    for c, cond in enumerate(scenario.conditions):
                        key = _key({**common, "kind": "pruned", "replicate": r, "source": src.describe(),
                                    "pruner": pruner.describe(), "sparsity": s, "condition": cond.describe()})
                        cells.append(CellSpec(key, r, si, pi, s, c))
    return cells


def group_cells(cells: list[CellSpec]) -> list[WorkUnit]:
    groups: dict[tuple, list[CellSpec]] = {}
    for cell in cells:
        groups.setdefault((cell.replicate, cell.source), []).append(cell)
    return [WorkUnit(r, s, tuple(cs)) for (r, s), cs in groups.items()]


def cell_labels(scenario: Scenario, cell: CellSpec) -> dict[str, Any]:
    """Display labels of one planned cell (replicate, source, pruner, sparsity, condition)."""
    return {
        "replicate": cell.replicate,
        "source": "-" if cell.source is None else scenario.sources[cell.source].label,
        "pruner": DENSE if cell.pruner is None else scenario.pruners[cell.pruner].label,
        "sparsity": sparsity_label(cell.sparsity),
        "condition": scenario.conditions[cell.condition].label,
    }

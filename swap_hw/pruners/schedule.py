"""The one sparsity schedule: cubic, shared by the solver's stages (iht.py) and the staged
protocols (multi_stage, gradual).

    s_t = s_T + (s_0 − s_T)·(1 − (t−1)/(T−1))³,   t = 1..T   (T = 1: just [s_T])

Sparsities are fractions in [0, 1); the sequence rises from s_0 to exactly s_T, fastest at first
(Zhu & Gupta 2017, the schedule of the SWAP and CBS papers).
"""

from __future__ import annotations

from ..errors import ParameterError


def check_sparsity(sparsity: float) -> float:
    """`sparsity` as a float, or ParameterError unless it is a number in [0, 1)."""
    if not (isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool) and 0.0 <= float(sparsity) < 1.0):
        raise ParameterError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def cubic_schedule(target: float, stages: int, initial: float = 0.0) -> list[float]:
    """[s_1, …, s_T] with s_0 = `initial`, s_T = `target` (both in [0, 1)); T = `stages` ≥ 1."""
    if isinstance(stages, bool) or int(stages) < 1:
        raise ParameterError(f"stages must be ≥ 1, got {stages}")
    target, initial = check_sparsity(target), check_sparsity(initial)
    T = int(stages)
    if T == 1:
        return [target]
    out = [target + (initial - target) * (1.0 - (t - 1) / (T - 1)) ** 3 for t in range(1, T + 1)]
    out[-1] = target  # exact, whatever the float rounding of the formula
    return out

"""SWAP's `direction: reference` is the authors' formula (specs/swap.md §9): Xᵀ·nΠ(Xw − y) +
nλ(w − w̄) with Π's rows indexing the dense cloud and no transpose — checked by hand on a 3-sample
problem whose plan is not symmetric."""

from __future__ import annotations

import torch

from swap_hw.gradients import GradientSet
from swap_hw.layout import Layout
from swap_hw.pruners.iht import _Problem, reference_direction
from swap_hw.transport import TransportResult, sort_plan


def test_the_authors_direction_by_hand_with_a_plan_that_is_not_symmetric():
    P = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5]], dtype=torch.float64) / 3  # rows: dense cloud
    assert not torch.equal(P, P.T) and torch.allclose(P.sum(0), torch.full((3,), 1 / 3, dtype=torch.float64))
    X = torch.tensor([[1.0, 2.0], [0.0, 1.0], [3.0, -1.0]])
    w_bar = torch.tensor([1.0, 1.0])
    w = torch.tensor([2.0, 0.0])
    lam = 0.1
    grads = GradientSet(X=X, w_bar=w_bar, layout=Layout.from_shapes([("a", (2,))]))
    prob = _Problem(grads, (X @ w_bar).double(), 3 * lam, w_bar.double())
    plan = TransportResult("sinkhorn", targets=torch.zeros(3, dtype=torch.float64), spread=0.0, plan=P)
    # by hand: y = X w̄ = (3, 1, 2); Xw = (2, 0, 6); r = Xw − y = (−1, −1, 4)
    # nΠr = (½(−1) + ½(−1), ½(−1) + ½(4), ½(−1) + ½(4)) = (−1, 1.5, 1.5)
    # Xᵀ(nΠr) = (1·(−1) + 0·1.5 + 3·1.5, 2·(−1) + 1·1.5 + (−1)·1.5) = (3.5, −2)
    # nλ(w − w̄) = 0.3·(1, −1) = (0.3, −0.3)
    expected = torch.tensor([3.8, -2.3], dtype=torch.float64)
    got = reference_direction(prob, plan, w.double(), (X @ w).double())
    assert torch.allclose(got, expected, atol=1e-12)
    # the transposed plan (what `direction: reference` computed before) gives another vector
    transposed = (X.double().T @ (3 * P.T @ torch.tensor([-1.0, -1.0, 4.0], dtype=torch.float64))) + 0.3 * (w - w_bar)
    assert not torch.allclose(transposed, expected)


def test_row_average_inverts_a_matching_plan():
    a = torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)
    b = torch.tensor([10.0, 30.0, 20.0], dtype=torch.float64)
    plan = sort_plan(a, b)  # pairs a's ranks with b's: 1↔10, 2↔20, 3↔30
    v = torch.tensor([100.0, 300.0, 200.0], dtype=torch.float64)  # on the b side
    # row i (a sample) gets the v of the b sample it is matched to
    assert torch.equal(plan.row_average(v), torch.tensor([300.0, 100.0, 200.0], dtype=torch.float64))
    assert torch.equal(plan.row_average(plan.barycentric(a)), a)  # Π and Πᵀ undo each other for a permutation

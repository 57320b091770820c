"""Solver or objective? Each pruner's solution scored on LR's and on SWAP's objective.

SWAP trails LR in accuracy on MLPNet / MNIST (docs/results.md). Two explanations predict
different numbers here:
- a weak SWAP solver: LR's solution would score LOWER than SWAP's own on SWAP's objective Q_EWR
  (the solver missed a better point that exists);
- an objective that does not track accuracy: SWAP's solution scores lower on Q_EWR than LR's,
  yet loses accuracy.

For each sparsity, the one-shot solutions (gradients collected once at w̄, 10 solver stages, every
pruner at its defaults unless listed) of magnitude, lr, swap (ε = 0.1) and swap (ε = 0, the exact
sort plan) are scored at their own weights w with

    LR data   ½‖X(w − w̄)‖²                      what lr fits: every sample's output change
    EWR data  (n/2)⟨Π(w), M(w)⟩                 what swap fits, with the plan swap would compute
                                                at w for that ε (transport.py; ε relative to 2·Var(Xw̄))
    ridge     (nλ/2)‖w − w̄‖²                     at swap's λ (default 10 × mean(diag F); --swap-lambda
                                                sets it for the swap solutions and this score alike)
    Q_EWR     EWR data + ridge

all in loss² units. Then, from LR's solution, `--refits` rounds of SWAP's own fixed-support step
(plan at the current Xw, then the ridge-regularised least-squares fit to its barycentric targets ỹ
on LR's support, by conjugate gradients): if SWAP's objective tracked accuracy, lowering it from
a good point would not cost accuracy. Same data, model, calibration draw (replicate 0, n = 1000, clean gradients)
as bench/replicate_mnist.py, which must have run once (it writes the npz and caches the model).

    python bench/objective_check.py [--sparsities 0.9,0.95] [--noise STD,PROP] [--swap-lambda 10]
                                    [--refits 6]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

def solutions(swap_lambda: float) -> list[tuple[str, str, dict]]:
    return [("magnitude", "magnitude", {}), ("lr", "lr", {"stages": 10}),
            ("swap eps=0.1", "swap", {"stages": 10, "epsilon": 0.1, "lambda": swap_lambda}),
            ("swap eps=0", "swap", {"stages": 10, "epsilon": 0.0, "lambda": swap_lambda})]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sparsities", default="0.9,0.95")
    ap.add_argument("--noise", default="", help="STD,PROP of the paper's gaussian gradient noise")
    ap.add_argument("--swap-lambda", type=float, default=None,
                    help="swap's relative λ, for its solutions and the ridge score (default: swap's default)")
    ap.add_argument("--refits", type=int, default=6, help="SWAP fixed-support refits started at LR's solution")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    import replicate_mnist as R
    from swap_hw.config import parse_scenario_text
    from swap_hw.models import accuracy_and_loss
    from swap_hw.gradients import GRADIENT_SOURCES
    from swap_hw.models import apply_weights
    from swap_hw.pruners import PRUNERS
    from swap_hw.sweep.prepare import prepare
    from swap_hw.transport import EntropicPlans

    npz = ROOT / "results/bench/mnist_8k2k.npz"
    if not npz.is_file():
        sys.exit(f"{npz} is missing: run bench/replicate_mnist.py first")
    prep = prepare(parse_scenario_text(R.scenario_text(npz, "one_shot", 1, True), "objective_check.yaml"))
    layout, weights = prep.layout, prep.layout.weights_of(prep.dense)
    if args.noise:
        std, prop = (float(v) for v in args.noise.split(","))
        source = GRADIENT_SOURCES.get("gaussian")(std=std, prop=prop)
    else:
        source = GRADIENT_SOURCES.get("clean")()
    batch = prep.splits.calibration(1000, prep.seeds.calibration(0))
    grads = source.collect(prep.dense, batch, prep.seeds.source(0), layout)
    X, n = grads.X, grads.n
    w_bar = grads.w_bar.double()
    y = grads.xv(grads.w_bar).double()
    swap_lambda = PRUNERS.get("swap")().params.lambda_ if args.swap_lambda is None else args.swap_lambda
    lam_abs = swap_lambda * grads.mean_square()
    # a tight, cold solve per solution, so the score does not depend on the order of evaluation
    plans = {eps: EntropicPlans(y, eps, tol=1e-6, max_iter=20000, warm_start=False) for eps in (0.1, 0.0)}

    print(f"dense {100 * accuracy_and_loss(prep.dense, *prep.splits.test)[0]:.2f} %, n = {n}, "
          f"{source.label} gradients; ridge at swap's λ = {swap_lambda:g} × mean(diag F) = {lam_abs:.3g}; loss² units")
    head = (f"{'s':>5} {'solution':<13} {'acc %':>6} {'LR data':>9} {'EWR data':>9} {'EWR data':>9} "
            f"{'ridge':>8} {'Q_EWR':>9} {'Q_EWR':>9}")
    print(head + "\n" + f"{'':>5} {'':<13} {'':>6} {'':>9} {'ε=0.1':>9} {'ε=0':>9} {'':>8} {'ε=0.1':>9} {'ε=0':>9}")
    for s in (float(v) for v in args.sparsities.split(",")):
        for name, pruner, params in solutions(swap_lambda):
            result = PRUNERS.get(pruner)(**params).prune(weights, grads if pruner != "magnitude" else None, s)
            w = layout.flatten(result.weights).reshape(-1).double()
            b = (X @ w.float()).double()
            lr_data = 0.5 * float((b - y).pow(2).sum())
            ewr = {eps: plan(b).fit_cost(b) for eps, plan in plans.items()}
            ridge = 0.5 * n * lam_abs * float((w - w_bar).pow(2).sum())
            acc = 100 * accuracy_and_loss(apply_weights(prep.dense, result.weights), *prep.splits.test)[0]
            print(f"{s:5.2f} {name:<13} {acc:6.2f} {lr_data:9.4f} {ewr[0.1]:9.4f} {ewr[0.0]:9.4f} "
                  f"{ridge:8.3f} {ewr[0.1] + ridge:9.3f} {ewr[0.0] + ridge:9.3f}", flush=True)
            if name == "lr":
                lr_w = w
        for eps, plan in plans.items():
            steps = []
            w = lr_w.clone()
            for _ in range(args.refits + 1):
                b = (X @ w.float()).double()
                fit = plan(b)
                ridge = 0.5 * n * lam_abs * float((w - w_bar).pow(2).sum())
                acc = 100 * accuracy_and_loss(apply_weights(prep.dense, layout.unflatten(w.float())), *prep.splits.test)[0]
                steps.append(f"{acc:.2f} / {fit.fit_cost(b) + ridge:.3f}")
                w = support_refit(X, w != 0, w_bar, n * lam_abs, fit.targets, w)
            print(f"{s:5.2f} SWAP ε={eps:g} refits from lr's solution, accuracy % / Q_EWR: " + ", ".join(steps), flush=True)


def support_refit(X, support, anchor, n_lambda, targets, start, iters: int = 300, tol: float = 1e-7):
    """argmin over w with w = 0 off `support` of ½‖targets − Xw‖² + (n_lambda/2)‖w − anchor‖², by
    conjugate gradients on (X_Sᵀ X_S + n_lambda I) w_S = X_Sᵀ targets + n_lambda·anchor_S from `start`."""
    import torch

    xs = X[:, support]

    def apply(v):
        return (xs.T @ (xs @ v.float())).double() + n_lambda * v

    rhs = (xs.T @ targets.float()).double() + n_lambda * anchor[support]
    x = start[support].clone()
    r = rhs - apply(x)
    p, rr = r.clone(), float(r @ r)
    for _ in range(iters):
        if rr ** 0.5 <= tol * float(rhs.norm()):
            break
        ap = apply(p)
        alpha = rr / float(p @ ap)
        x += alpha * p
        r -= alpha * ap
        rr_new = float(r @ r)
        p, rr = r + (rr_new / rr) * p, rr_new
    w = torch.zeros_like(anchor)
    w[support] = x
    return w


if __name__ == "__main__":
    main()

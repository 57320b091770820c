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
a good point would not cost accuracy (`--refits 0` skips them). Same data, model, calibration draw (replicate 0, n = 1000, clean gradients)
as bench/replicate_mnist.py (the npz of the fixed 8k/2k split is written from `--mnist` if missing, and
the dense model is trained once and cached the same way, so the two scripts share it).

A fifth solution is swap at the authors' setting, ε = 1.0 ABSOLUTE (ε_abs = 1 loss², specs/swap.md §9;
10 stages and the same λ as the other swap solutions), and a third plan, ε = 1.0 absolute, is scored.

Then the review's three reasons why SWAP trails LR here, each as a figure (docs/results.md, "The
review's three reasons, measured"), for every solution w, with y = Xw̄ (rows of Π) and b = Xw (columns)
(with `--noise`, X is the noisy X̃ throughout, as the pruners see it, so y = X̃w̄):

(i)  effective neighbourhood size, reason (b): for the entropic plans Π at b (ε = 0.1 relative and ε =
     1.0 absolute, tight cold solves), each row i normalised to a distribution p_i = Π_i· / Σ_j Π_ij
     over the n samples of b; its perplexity exp(−Σ_j p_ij log p_ij) ∈ [1, n] (1 = one partner, n =
     uniform) and m90_i = the fewest entries holding ≥ 90 % of the row's mass ∈ [1, n]; printed as the
     10th percentile / median / 90th percentile over the n rows. Also at the dense point (b = y).
     The exact plan (ε = 0) is a permutation: both are 1 for every row, not printed.
(ii) rank shift of per-sample outputs, reason (a): r(v)_i = rank of v_i among v (0 … n−1);
     |r(y)_i − r(b)_i| / n ∈ [0, 1), mean, median and 90th percentile over samples, and Spearman's ρ(y, b) =
     Pearson correlation of the ranks. Near 0 / ρ ≈ 1: the solution keeps which sample has which
     output; large: it permutes them, which the ε → 0 data term cannot see (it depends only on the
     sets) but LR's does.
(iii) what the plan changes, reason (c): swap's frozen-plan data term is ½‖ỹ − Xw‖² = ½wᵀXᵀXw − ỹᵀXw
     + const, LR's is ½wᵀXᵀXw − yᵀXw + const; the plan only moves the targets y → ỹ (the cross term),
     the quadratic XᵀX is identical in both. Printed: ‖ỹ − y‖/‖y‖ (dimensionless) per plan at b. With
     `--noise`, clean gradients X are collected on the same batch and printed once: the relative noise
     of the quadratic ‖X̃ᵀX̃ − XᵀX‖_F/‖XᵀX‖_F (computed through n×n Gram matrices, since
     ‖AᵀA − BᵀB‖²_F = ‖AAᵀ‖²_F + ‖BBᵀ‖²_F − 2‖ABᵀ‖²_F), with its diagonal part alone (the noise's
     variance inflation, ridge-like), and of the targets ‖X̃w̄ − Xw̄‖/‖Xw̄‖, and per
     plan ‖ỹ − y_clean‖/‖y_clean‖: whether the plan's smoothing brings the noisy targets closer to the
     clean ones (if smaller than the targets' noise) — it cannot touch XᵀX's noise.

    python bench/objective_check.py [--sparsities 0.9,0.95] [--noise STD,PROP] [--swap-lambda 10]
                                    [--refits 6] [--mnist ../shared/data/mnist]
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
            ("swap eps=0", "swap", {"stages": 10, "epsilon": 0.0, "lambda": swap_lambda}),
            ("swap eps=1abs", "swap", {"stages": 10, "epsilon": 1.0, "epsilon_units": "absolute",
                                       "lambda": swap_lambda})]

# the plans scored and measured: label → (ε, scale); scale None = ε relative to 2·Var(Xw̄), 1.0 = absolute
PLANS = {"0.1rel": (0.1, None), "0": (0.0, None), "1abs": (1.0, 1.0)}
ENTROPIC = ("0.1rel", "1abs")


def neighbourhood(plan) -> tuple[list[float], list[float]]:
    """([p10, median, p90] of the rows' perplexity, same of m90) for an n×n plan (see the docstring)."""
    import torch

    plan = plan.double()
    p = plan / plan.sum(dim=1, keepdim=True)
    plogp = torch.where(p > 0, p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))
    perplexity = torch.exp(-plogp.sum(dim=1))
    mass = torch.sort(p, dim=1, descending=True).values.cumsum(dim=1)
    # entries needed to reach 90 %: those strictly below it before the crossing, plus the crossing one
    m90 = ((mass < 0.9).sum(dim=1) + 1).clamp_max(p.shape[1]).double()
    q = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    return torch.quantile(perplexity, q).tolist(), torch.quantile(m90, q).tolist()


def rank_shift(y, b) -> tuple[float, float, float, float]:
    """(mean, median, 90th percentile of |r(y)_i − r(b)_i| / n, Spearman's ρ) — see the docstring."""
    import torch

    n = y.numel()
    ry = torch.argsort(torch.argsort(y, stable=True)).double()
    rb = torch.argsort(torch.argsort(b, stable=True)).double()
    d = (ry - rb).abs() / n
    rho = float(torch.corrcoef(torch.stack([ry, rb]))[0, 1])
    return float(d.mean()), float(d.median()), float(torch.quantile(d, 0.9)), rho


def gram_fro_rel(X_noisy, X_clean) -> tuple[float, float]:
    """(‖X̃ᵀX̃ − XᵀX‖_F, ‖diag(X̃ᵀX̃ − XᵀX)‖) / ‖XᵀX‖_F, through n×n Gram matrices (the d×d ones do
    not fit). The diagonal part is the noise's systematic variance inflation (it acts like an extra
    ridge); the rest is the random off-diagonal perturbation."""
    A, B = X_noisy.double(), X_clean.double()
    aa, bb, ab = (A @ A.T).pow(2).sum(), (B @ B.T).pow(2).sum(), (A @ B.T).pow(2).sum()
    diag = (A.pow(2).sum(dim=0) - B.pow(2).sum(dim=0)).norm()
    return float((aa + bb - 2 * ab).clamp_min(0).sqrt() / bb.sqrt()), float(diag / bb.sqrt())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sparsities", default="0.9,0.95")
    ap.add_argument("--noise", default="", help="STD,PROP of the paper's gaussian gradient noise")
    ap.add_argument("--swap-lambda", type=float, default=None,
                    help="swap's relative λ, for its solutions and the ridge score (default: swap's default)")
    ap.add_argument("--refits", type=int, default=6, help="SWAP fixed-support refits started at LR's solution")
    ap.add_argument("--mnist", default=str(ROOT.parent / "shared/data/mnist"),
                    help="folder of the MNIST test split's IDX files (used only if the npz is missing)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    import replicate_mnist as R

    from swap_hw.config import parse_scenario_text
    from swap_hw.gradients import GRADIENT_SOURCES
    from swap_hw.models import accuracy_and_loss, apply_weights
    from swap_hw.pruners import PRUNERS
    from swap_hw.sweep.prepare import prepare
    from swap_hw.transport import EntropicPlans

    npz = R.make_npz(Path(args.mnist), ROOT / "results/bench/mnist_8k2k.npz")  # no-op when it exists
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
    plans = {label: EntropicPlans(y, eps, scale=scale, tol=1e-6, max_iter=20000, warm_start=False)
             for label, (eps, scale) in PLANS.items()}

    print(f"dense {100 * accuracy_and_loss(prep.dense, *prep.splits.test)[0]:.2f} %, n = {n}, "
          f"{source.label} gradients; ridge at swap's λ = {swap_lambda:g} × mean(diag F) = {lam_abs:.3g}; loss² units")
    print(f"y = Xw̄: mean {float(y.mean()):.4g}, std {float(y.std()):.4g}, |y| median {float(y.abs().median()):.4g}, "
          f"max {float(y.abs().max()):.4g}; 2·Var(y) = {plans['0.1rel'].scale:.4g}, so ε = 0.1 relative is "
          f"ε_abs = {0.1 * plans['0.1rel'].scale:.4g} and ε = 1.0 absolute is {1.0 / plans['0.1rel'].scale:.4g} relative")
    y_clean = None
    if args.noise:  # the same batch without noise: what the plan would have to recover
        clean = GRADIENT_SOURCES.get("clean")().collect(prep.dense, batch, prep.seeds.source(0), layout)
        y_clean = clean.xv(clean.w_bar).double()
        total, diagonal = gram_fro_rel(X, clean.X)
        print(f"reason (c), noise: ‖X̃ᵀX̃ − XᵀX‖_F/‖XᵀX‖_F = {total:.3f} (its diagonal alone: {diagonal:.3f}); "
              f"targets ‖X̃w̄ − Xw̄‖/‖Xw̄‖ = {float((y - y_clean).norm() / y_clean.norm()):.3f}", flush=True)
        del clean

    # the dense point (b = y): the plans' blur before any pruning
    dense_key = ("dense", "y vs y")
    dense_fits = {label: plan(y) for label, plan in plans.items()}
    nb = {dense_key: {label: neighbourhood(dense_fits[label].dense()) for label in ENTROPIC}}
    shifts = {dense_key: rank_shift(y, y)}

    def moves(fits):  # plan label → (‖ỹ − y‖/‖y‖, ‖ỹ − y_clean‖/‖y_clean‖ or None)
        return {label: (float((fit.targets - y).norm() / y.norm()),
                        None if y_clean is None else float((fit.targets - y_clean).norm() / y_clean.norm()))
                for label, fit in fits.items()}

    target_moves = {dense_key: moves(dense_fits)}
    del dense_fits
    head = (f"{'s':>5} {'solution':<13} {'acc %':>6} {'LR data':>9} {'EWR data':>9} {'EWR data':>9} {'EWR data':>9} "
            f"{'ridge':>8} {'Q_EWR':>9} {'Q_EWR':>9} {'Q_EWR':>9}")
    print(head + "\n" + f"{'':>5} {'':<13} {'':>6} {'':>9} {'ε=0.1':>9} {'ε=0':>9} {'ε=1abs':>9} {'':>8} "
          f"{'ε=0.1':>9} {'ε=0':>9} {'ε=1abs':>9}")
    sparsities = [float(v) for v in args.sparsities.split(",")]
    for s in sparsities:
        for name, pruner, params in solutions(swap_lambda):
            result = PRUNERS.get(pruner)(**params).prune(weights, grads if pruner != "magnitude" else None, s)
            w = layout.flatten(result.weights).reshape(-1).double()
            b = (X @ w.float()).double()
            lr_data = 0.5 * float((b - y).pow(2).sum())
            fits = {label: plan(b) for label, plan in plans.items()}
            ewr = {label: fit.fit_cost(b) for label, fit in fits.items()}
            ridge = 0.5 * n * lam_abs * float((w - w_bar).pow(2).sum())
            acc = 100 * accuracy_and_loss(apply_weights(prep.dense, result.weights), *prep.splits.test)[0]
            print(f"{s:5.2f} {name:<13} {acc:6.2f} {lr_data:9.4f} {ewr['0.1rel']:9.4f} {ewr['0']:9.4f} "
                  f"{ewr['1abs']:9.4f} {ridge:8.3f} {ewr['0.1rel'] + ridge:9.3f} {ewr['0'] + ridge:9.3f} "
                  f"{ewr['1abs'] + ridge:9.3f}", flush=True)
            nb[(f"{s:.2f}", name)] = {label: neighbourhood(fits[label].dense()) for label in ENTROPIC}
            shifts[(f"{s:.2f}", name)] = rank_shift(y, b)
            target_moves[(f"{s:.2f}", name)] = moves(fits)
            if name == "lr":
                lr_w = w
                print(f"{'':>5} (k = {int((w != 0).sum())} weights kept of d = {w.numel()}, n = {n})", flush=True)
        for label in ("0.1rel", "0") if args.refits > 0 else ():
            plan = plans[label]
            steps = []
            w = lr_w.clone()
            for _ in range(args.refits + 1):
                b = (X @ w.float()).double()
                fit = plan(b)
                ridge = 0.5 * n * lam_abs * float((w - w_bar).pow(2).sum())
                acc = 100 * accuracy_and_loss(apply_weights(prep.dense, layout.unflatten(w.float())), *prep.splits.test)[0]
                steps.append(f"{acc:.2f} / {fit.fit_cost(b) + ridge:.3f}")
                w = support_refit(X, w != 0, w_bar, n * lam_abs, fit.targets, w)
            print(f"{s:5.2f} SWAP ε={PLANS[label][0]:g} refits from lr's solution, accuracy % / Q_EWR: "
                  + ", ".join(steps), flush=True)

    def trio(v, fmt):
        return "/".join(format(x, fmt) for x in v)

    print("\nreason (b): effective neighbourhood per row of Π (rows = dense samples y_i), p10/median/p90 over "
          f"rows, n = {n}")
    print(f"{'s':>5} {'solution':<13} {'perplexity ε=0.1':>18} {'m90 ε=0.1':>14} {'perplexity ε=1abs':>18} "
          f"{'m90 ε=1abs':>14}")
    for (s, name), d in nb.items():
        print(f"{s:>5} {name:<13} {trio(d['0.1rel'][0], '.0f'):>18} {trio(d['0.1rel'][1], '.0f'):>14} "
              f"{trio(d['1abs'][0], '.0f'):>18} {trio(d['1abs'][1], '.0f'):>14}")
    print("\nreason (a): rank shift between y = Xw̄ and b = Xw; reason (c): ‖ỹ − y‖/‖y‖ of each plan's targets at b"
          + (" (in brackets ‖ỹ − y_clean‖/‖y_clean‖)" if y_clean is not None else ""))
    print(f"{'s':>5} {'solution':<13} {'mean|Δr|/n':>10} {'med|Δr|/n':>10} {'p90|Δr|/n':>10} {'Spearman':>9} "
          + " ".join(f"{'ỹ ε=' + ('0.1' if l == '0.1rel' else l):>15}" for l in PLANS))
    for key, (mean_d, med_d, p90_d, rho) in shifts.items():
        moves = target_moves[key]
        cells = [f"{m[0]:.3f}" + ("" if m[1] is None else f" [{m[1]:.3f}]") for m in (moves[l] for l in PLANS)]
        print(f"{key[0]:>5} {key[1]:<13} {mean_d:10.3f} {med_d:10.3f} {p90_d:10.3f} {rho:9.3f} "
              + " ".join(f"{c:>15}" for c in cells), flush=True)


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

"""SWAP vs LR vs WoodFisher prune time on the same gradients, and one-shot accuracy vs magnitude.

Setup per seed: MLPNet 64-40-20-10 trained on scikit-learn's digits (test fraction 0.2, 30 epochs,
Adam lr 3e-3, batch 64; ~95 % test accuracy), n = 1000 clean per-sample gradients from the
training split (swap_hw.gradients "clean"). Everything runs on one thread by default.

1. Time: each pruner prunes the same GradientSet `--repeats` times per sparsity (fastest kept);
   printed with its solver statistics and the SWAP/LR time ratio (target ≤ 3 at MLPNet size).
2. Quality: one-shot test accuracy (no fine-tuning) after pruning at each sparsity, mean ± sd over
   the seeds, for magnitude / lr / swap / woodfisher plus any `--variant`.
3. With `--sinkhorn`: the entropic solvers on the clouds SWAP meets (y = X w̄ against X·H_k(w̄)
   at s = 0.9, then one IHT-sized move): own over-relaxed Sinkhorn (cold / warm-started) vs POT.

    python bench/prune_time.py                                  # 3 seeds, s = 0.5 0.7 0.9 0.95
    python bench/prune_time.py --seeds 5 --variant lr:lambda=0.003 --variant swap:epsilon=0
    python bench/prune_time.py --option swap.plan_every=1 --sinkhorn
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from swap_hw.data import load_digits_splits  # noqa: E402
from swap_hw.gradients import GRADIENT_SOURCES  # noqa: E402
from swap_hw.models import apply_weights, build_model, train_model  # noqa: E402
from swap_hw.pruners import PRUNERS  # noqa: E402

TIMED = ["lr", "swap", "woodfisher"]
QUALITY = ["magnitude", "lr", "swap", "woodfisher"]


def parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def parse_options(items: list[str]) -> dict[str, dict]:
    """--option PRUNER.KEY=VALUE → {pruner: {key: value}}."""
    out: dict[str, dict] = {}
    for item in items:
        key, value = item.split("=", 1)
        name, field = key.split(".", 1)
        out.setdefault(name, {})[field] = parse_value(value)
    return out


def parse_variant(text: str) -> tuple[str, dict]:
    """NAME:key=value,key=value → (name, params)."""
    name, _, rest = text.partition(":")
    params = {}
    for part in filter(None, rest.split(",")):
        key, value = part.split("=", 1)
        params[key] = parse_value(value)
    return name, params


def prepare(seed: int, n: int):
    splits = load_digits_splits(0.2, seed)
    model = build_model("mlpnet", splits.input_shape, splits.n_classes, seed)
    train_model(model, splits.x_train, splits.y_train, epochs=30, lr=3e-3, batch_size=64, seed=seed)
    for p in model.parameters():
        p.requires_grad_(False)
    grads = GRADIENT_SOURCES.get("clean")().collect(model, splits.calibration(n, seed), seed)
    return splits, model, grads


def accuracy(model, weights, splits) -> float:
    x, y = splits.test
    with torch.no_grad():
        return float((apply_weights(model, weights)(x).argmax(1) == y).float().mean())


def time_pruners(model, grads, sparsities, options, repeats) -> None:
    weights = grads.layout.weights_of(model)
    print(f"\n== prune time (n = {grads.n}, d = {grads.d}, fastest of {repeats}) ==")
    print(f"{'s':>5}  {'pruner':<28}{'seconds':>9}  solver")
    for s in sparsities:
        seconds = {}
        for name in TIMED:
            pruner = PRUNERS.get(name)(**options.get(name, {}))
            best, result = float("inf"), None
            for _ in range(repeats):
                t0 = time.perf_counter()
                result = pruner.prune(weights, grads, s)
                best = min(best, time.perf_counter() - t0)
            seconds[name] = best
            stage = (result.log.get("stages") or [{}])[-1]
            plan = result.log.get("plan", {})
            info = ""
            if "iht_iterations" in stage:
                info = (f"IHT {stage['iht_iterations']} steps ({stage['support_changes']} support changes), "
                        f"CG {stage.get('cg_iterations', 0)}, {result.log['products']} products")
            if plan.get("plan") == "entropic":
                info += f"; {plan['calls']} plans, {plan['sinkhorn_iterations']} Sinkhorn it, {plan['seconds']:.3f}s"
            print(f"{s:>5}  {pruner.label:<28}{best:>9.3f}  {info}")
        print(f"{'':>5}  SWAP/LR time ratio = {seconds['swap'] / seconds['lr']:.2f}, "
              f"WoodFisher/LR = {seconds['woodfisher'] / seconds['lr']:.2f}")


def quality(seeds, sparsities, entries, n, prepared) -> None:
    results: dict[str, dict[float, list[float]]] = {}
    dense: list[float] = []
    for seed in seeds:
        splits, model, grads = prepared(seed)
        with torch.no_grad():
            dense.append(float((model(splits.test[0]).argmax(1) == splits.test[1]).float().mean()))
        weights = grads.layout.weights_of(model)
        for name, params in entries:
            pruner = PRUNERS.get(name)(**params)
            for s in sparsities:
                result = pruner.prune(weights, grads if pruner.needs_gradients else None, s)
                results.setdefault(pruner.label, {}).setdefault(s, []).append(accuracy(model, result.weights, splits))
    print(f"\n== one-shot test accuracy (%), mean ± sd over seeds {list(seeds)}, n = {n} ==")
    print(f"dense: {100 * statistics.mean(dense):.1f} ± {100 * statistics.pstdev(dense):.1f}")
    head = f"{'pruner':<34}" + "".join(f"{'s = ' + format(s, 'g'):>16}" for s in sparsities)
    print(head)
    print("-" * len(head))
    best = {s: max(statistics.mean(by[s]) for by in results.values()) for s in sparsities}
    for label, by in results.items():
        cells = []
        for s in sparsities:
            m, sd = statistics.mean(by[s]), statistics.pstdev(by[s])
            mark = "*" if m == best[s] else " "
            cells.append(f"{100 * m:>9.1f} ± {100 * sd:>4.1f}{mark}")
        print(f"{label:<34}" + "".join(f"{c:>16}" for c in cells))
    print("(* best mean in the column)")


def sinkhorn_comparison(grads) -> None:
    from swap_hw.pruners.base import hard_threshold
    from swap_hw.transport import EntropicPlans

    X = grads.X
    y = (X @ grads.w_bar).double()
    b0 = (X @ hard_threshold(grads.w_bar, int(0.1 * grads.d))).double()
    moves = [b0 + 0.01 * i * (y - b0) for i in range(1, 6)]  # five IHT-sized moves toward y
    print("\n== entropic solvers on SWAP's clouds (s = 0.9 start, then 5 small moves; tol 1e-3) ==")
    print(f"{'epsilon':>8}  {'solver':<18}{'first it':>9}{'first s':>9}{'next it':>9}{'next s':>9}  method / warning")
    for eps in (1.0, 0.1, 0.05, 0.01):
        for solver, warm in (("sor", True), ("sor", False), ("pot", True)):
            plans = EntropicPlans(y, eps, solver=solver, warm_start=warm, max_iter=5000)
            t0 = time.perf_counter()
            first = plans(b0)
            t1 = time.perf_counter()
            its = 0
            for b in moves:
                r = plans(b)
                its += r.iterations
            t2 = time.perf_counter()
            label = f"{solver}{' warm' if warm else ' cold'}"
            print(f"{eps:>8g}  {label:<18}{first.iterations:>9d}{t1 - t0:>9.3f}{its / len(moves):>9.1f}"
                  f"{(t2 - t1) / len(moves):>9.3f}  {first.method}{' / ' + first.warning[:60] if first.warning else ''}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N−1 for the quality table (default 3)")
    ap.add_argument("--n", type=int, default=1000, help="calibration examples (default 1000)")
    ap.add_argument("--sparsities", default="0.5,0.7,0.9,0.95")
    ap.add_argument("--time-sparsities", default=None, help="sparsities timed (default: --sparsities)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--option", action="append", default=[], metavar="PRUNER.KEY=VALUE",
                    help="parameter of a default pruner, e.g. swap.epsilon=0.05 (repeatable)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                    help="an extra row in the quality table, e.g. swap:epsilon=0,plan_every=1 (repeatable)")
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--sinkhorn", action="store_true", help="also compare the entropic solvers")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    sparsities = [float(s) for s in args.sparsities.split(",")]
    timed = [float(s) for s in (args.time_sparsities or args.sparsities).split(",")]
    options = parse_options(args.option)
    cache: dict[int, tuple] = {}

    def prepared(seed: int):
        if seed not in cache:
            t0 = time.perf_counter()
            cache[seed] = prepare(seed, args.n)
            print(f"seed {seed}: trained + gradients in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        return cache[seed]

    splits, model, grads = prepared(0)
    time_pruners(model, grads, timed, options, args.repeats)
    if args.sinkhorn:
        sinkhorn_comparison(grads)
    if not args.no_quality:
        entries = [(name, options.get(name, {})) for name in QUALITY] + [parse_variant(v) for v in args.variant]
        quality(range(args.seeds), sparsities, entries, args.n, prepared)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How LR one-shot accuracy on MLPNet / MNIST depends on λ, calibration size n and stages.

    python bench/lr_sensitivity.py [--lambdas 1,0.1,0.01] [--units relative] [--n 1000,3000]
                                   [--stages 1,10] [--sparsities 0.9,0.95] [--pruner lr]

λ is in `--units` (relative: a multiple of mean(diag F), the pruners' default; absolute: F's
units); the table prints the absolute value used too.
Same data and dense model as bench/replicate_mnist.py (run that first: it writes the 8k/2k npz
and caches the model), one replicate (seed 0), clean gradients. Prints, per setting, test
accuracy, the solver's final objective, how many support changes IHT made, and seconds. Written
to answer why LR stays far from the CBS paper's drop at high sparsity (docs/pruners.md).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lambdas", default="1,0.1,0.01")
    ap.add_argument("--units", default="relative", choices=["relative", "absolute"])
    ap.add_argument("--pruner", default="lr", choices=["lr", "swap"])
    ap.add_argument("--n", default="1000,3000")
    ap.add_argument("--stages", default="1,10")
    ap.add_argument("--sparsities", default="0.9,0.95")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    import replicate_mnist as R
    from swap_hw.config import parse_scenario_text
    from swap_hw.deploy.base import accuracy_and_loss
    from swap_hw.gradients import GRADIENT_SOURCES
    from swap_hw.models import apply_weights
    from swap_hw.pruners import PRUNERS
    from swap_hw.runner import prepare

    npz = ROOT / "results/bench/mnist_8k2k.npz"
    if not npz.is_file():
        sys.exit(f"{npz} is missing: run bench/replicate_mnist.py first")
    prep = prepare(parse_scenario_text(R.scenario_text(npz, "one_shot", 1, True), "lr_sensitivity.yaml"))
    weights = prep.layout.weights_of(prep.dense)
    print(f"dense accuracy {100 * accuracy_and_loss(prep.dense, *prep.splits.test)[0]:.2f} %")
    print(f"{'n':>5} {'lambda':>8} {'abs.':>8} {'stages':>6} {'s':>5} {'acc %':>7} {'objective':>10} {'supp.chg':>8} {'sec':>6}")
    grads = {}
    for n, lam, stages, s in itertools.product([int(x) for x in floats(args.n)], floats(args.lambdas),
                                               [int(x) for x in floats(args.stages)], floats(args.sparsities)):
        if n not in grads:
            batch = prep.splits.calibration(n, prep.seeds.calibration(0))
            grads[n] = GRADIENT_SOURCES.get("clean")().collect(prep.dense, batch, prep.seeds.source(0), prep.layout)
        start = time.perf_counter()
        pruner = PRUNERS.get(args.pruner)(**{"lambda": lam, "lambda_units": args.units, "stages": stages})
        result = pruner.prune(weights, grads[n], s)
        seconds = time.perf_counter() - start
        acc = accuracy_and_loss(apply_weights(prep.dense, result.weights), *prep.splits.test)[0]
        stages_log = [st for st in result.log.get("stages", []) if "skipped" not in st]
        changes = sum(st.get("support_changes", 0) for st in stages_log)
        objective = result.log.get("objective")
        obj = f"{objective:10.3g}" if isinstance(objective, (int, float)) else f"{'':>10}"
        print(f"{n:5d} {lam:8.0e} {result.log['lambda_abs']:8.1e} {stages:6d} {s:5.2f} {100 * acc:7.2f} {obj} {changes:8d} {seconds:6.1f}", flush=True)


if __name__ == "__main__":
    main()

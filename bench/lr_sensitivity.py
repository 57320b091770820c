"""How LR / SWAP one-shot accuracy on MLPNet / MNIST depends on λ, ε, calibration size n, stages
and whether gradients are re-collected between stages.

    python bench/lr_sensitivity.py [--lambdas 1,0.1,0.01] [--units relative] [--n 1000,3000]
                                   [--stages 1,10] [--sparsities 0.9,0.95] [--pruner lr]
                                   [--protocol one_shot|multi_stage] [--epsilons 0.1,0]
                                   [--noise STD,PROP] [--option KEY=VALUE ...]

--protocol one_shot: the pruner runs `stages` solver stages on gradients collected once at w̄.
--protocol multi_stage: `stages` protocol stages, gradients re-collected at the pruned weights
before each, the pruner one solver stage per protocol stage (swap_hw/protocols/staged.py).
--epsilons (swap only): entropic ε relative to mean(M), `0` = exact sort plan, `inf`.
--noise: the paper's gaussian gradient noise (e.g. 2,0.25) instead of clean gradients.
--option: any other parameter of the pruner (YAML value), e.g. --option backsolve=false.

λ is in `--units` (relative: a multiple of mean(diag F), the pruners' default; absolute: F's
units); the table prints the absolute value used too.
Same data and dense model as bench/replicate_mnist.py (run that first: it writes the 8k/2k npz
and caches the model), one replicate (seed 0), clean gradients. Prints, per setting, test
accuracy, the solver's final objective (last stage for multi_stage), how many support changes IHT
made (all stages), and seconds. Written to answer why LR stays far from the CBS paper's drop at high
sparsity (docs/pruners.md).
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
    ap.add_argument("--protocol", default="one_shot", choices=["one_shot", "multi_stage"])
    ap.add_argument("--epsilons", default="", help="swap only: ε values (relative; 0 = sort plan; inf)")
    ap.add_argument("--noise", default="", help="STD,PROP of the paper's gaussian gradient noise")
    ap.add_argument("--option", action="append", default=[], help="KEY=VALUE, another pruner parameter")
    args = ap.parse_args()
    import yaml

    options = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.option)}
    if args.epsilons and args.pruner != "swap":
        ap.error("--epsilons applies to --pruner swap")
    epsilons = [None] if not args.epsilons else [e if e == "inf" else float(e) for e in args.epsilons.split(",")]
    if args.noise:
        std, prop = floats(args.noise)
        source_name, source_params = "gaussian", {"std": std, "prop": prop}
    else:
        source_name, source_params = "clean", {}

    import torch

    torch.set_num_threads(1)
    import replicate_mnist as R
    from swap_hw.config import parse_scenario_text
    from swap_hw.models import accuracy_and_loss
    from swap_hw.gradients import GRADIENT_SOURCES
    from swap_hw.models import apply_weights
    from swap_hw.protocols import prune_staged
    from swap_hw.pruners import PRUNERS
    from swap_hw.sweep.prepare import prepare

    npz = ROOT / "results/bench/mnist_8k2k.npz"
    if not npz.is_file():
        sys.exit(f"{npz} is missing: run bench/replicate_mnist.py first")
    prep = prepare(parse_scenario_text(R.scenario_text(npz, "one_shot", 1, True), "lr_sensitivity.yaml"))
    weights = prep.layout.weights_of(prep.dense)
    print(f"dense accuracy {100 * accuracy_and_loss(prep.dense, *prep.splits.test)[0]:.2f} %")
    print(f"{args.pruner} {options or ''}, {args.protocol}, {source_name} gradients {source_params or ''}")
    print(f"{'n':>5} {'lambda':>8} {'abs.':>8} {'eps':>6} {'stages':>6} {'s':>5} {'acc %':>7} {'objective':>10} {'supp.chg':>8} {'sec':>6}")
    source = GRADIENT_SOURCES.get(source_name)(**source_params)
    batches, grads = {}, {}
    for n, lam, eps, stages, s in itertools.product([int(x) for x in floats(args.n)], floats(args.lambdas), epsilons,
                                                    [int(x) for x in floats(args.stages)], floats(args.sparsities)):
        if n not in batches:
            batches[n] = prep.splits.calibration(n, prep.seeds.calibration(0))
        batch = batches[n]
        params = {**options, "lambda": lam, "lambda_units": args.units, **({"epsilon": eps} if eps is not None else {})}
        start = time.perf_counter()
        if args.protocol == "one_shot":
            if n not in grads:
                grads[n] = source.collect(prep.dense, batch, prep.seeds.source(0), prep.layout)
            result = PRUNERS.get(args.pruner)(**params, stages=stages).prune(weights, grads[n], s)
            pruned = apply_weights(prep.dense, result.weights)
            stage_logs = [result.log]
        else:
            pruned, result = prune_staged(PRUNERS.get(args.pruner)(**params), prep.dense, source, batch, s, stages,
                                          prep.seeds.source(0), prep.layout)
            stage_logs = [e["prune"] for e in result.log["multi_stage"]["stages"]]
        seconds = time.perf_counter() - start
        acc = accuracy_and_loss(pruned, *prep.splits.test)[0]
        changes = sum(st.get("support_changes", 0) for log in stage_logs for st in log.get("stages", [])
                      if "skipped" not in st)
        objective = stage_logs[-1].get("objective")
        obj = f"{objective:10.3g}" if isinstance(objective, (int, float)) else f"{'':>10}"
        print(f"{n:5d} {lam:8.0e} {stage_logs[-1]['lambda_abs']:8.1e} {str(eps if eps is not None else '-'):>6} "
              f"{stages:6d} {s:5.2f} {100 * acc:7.2f} {obj} {changes:8d} {seconds:6.1f}", flush=True)


if __name__ == "__main__":
    main()

"""Prune time and peak memory at the paper's model sizes: MLPNet, ResNet20, MobileNetV1, n = 1000.

For each case the model is freshly initialised (`train.epochs: 0` weights; timing and memory do
not depend on training), the n calibration inputs are uniform random images of the right shape
with random labels, the clean per-sample gradients are collected (dense X when n·d·4 bytes fits
`--memory-budget-mb`, matrix-free otherwise), and each pruner prunes to `--sparsity`. Every
(case, pruner) runs in its own subprocess so its peak resident memory (ru_maxrss) is its own.

    case          model                                  input       d          X dense
    mlpnet        MLPNet 784-40-20-10                    1×28×28     32,360     0.13 GB
    resnet20      ResNet20 (CIFAR, option A)             3×32×32     268,336    1.07 GB
    mobilenetv1   MobileNetV1 1.0, ImageNet (1000 cls)   3×224×224   4,209,088  16.8 GB
    mobilenetv1_32  the same network on 3×32×32 inputs   3×32×32     4,209,088  16.8 GB

mobilenetv1_32 has MobileNetV1's d (what memory depends on) at ~1/50 of the compute per
product, for machines where recomputed products at 224×224 take hours (`--over-budget disk`
avoids that). Printed per run: gradient collection seconds (including the write to disk with
`--over-budget disk`), one Xv and one Xᵀu (seconds), prune seconds, peak RSS (GiB), then the
SWAP/LR prune-time ratio per case. Targets (issue 4): SWAP ≤ 1.5× LR at ResNet20, ≤ 3× at
MLPNet; MobileNetV1 with n = 1000 within 8 GiB peak RSS (X recomputed or on disk, never in memory).

    python bench/prune_scale.py                              # every case × lr, swap, woodfisher
    python bench/prune_scale.py --case resnet20 --pruner lr --pruner swap
    python bench/prune_scale.py --case mobilenetv1_32 --option lr.iht_steps=5
    python bench/prune_scale.py --case mobilenetv1 --pruner lr --pruner swap --over-budget disk
    python bench/prune_scale.py --products-vs-floor           # Xv, Xᵀu against the floor, no pruning

`--products-vs-floor` (issue 20) times, per case (default resnet20 and mobilenetv1_32, n = 1000,
each in its own process), one matrix-free Xv and one Xᵀu (`over_budget: recompute`, forced by a
zero budget) against the floor, one forward + backward of the summed loss over the same n
examples (eval mode, as the gradient sources run the model), and prints each product's time as a
ratio to the floor, all measured in the same run (`products_child`). Target: both ≤ 3×. It takes
about 1.5 min on one idle core (3 min on this shared machine).

Pruners that are not registered are reported as missing. One thread by default (a 2-thread run
on a shared, oversubscribed machine was measured 10–30× slower than 1 thread).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "mlpnet": {"arch": "mlpnet", "shape": (1, 28, 28), "classes": 10, "options": {}},
    "resnet20": {"arch": "resnet20", "shape": (3, 32, 32), "classes": 10, "options": {}},
    "mobilenetv1": {"arch": "mobilenetv1", "shape": (3, 224, 224), "classes": 1000, "options": {"variant": "imagenet"}},
    "mobilenetv1_32": {"arch": "mobilenetv1", "shape": (3, 32, 32), "classes": 1000, "options": {"variant": "imagenet"}},
}
DEFAULT_PRUNERS = ["lr", "swap", "woodfisher"]
PRODUCT_CASES = ["resnet20", "mobilenetv1_32"]  # --products-vs-floor: the zoo's sizes at 32×32 inputs


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def parse_value(text: str):
    import yaml

    return yaml.safe_load(text)


def build_case(name: str, n: int):
    """(model, x, y, layout, generator) of a case: the model at seed 0 in eval mode with frozen
    parameters, n uniform random inputs and random labels from generator seed 1 (which later
    draws, e.g. product vectors, continue), and the layout of its prunable weights."""
    import torch

    sys.path.insert(0, str(ROOT))
    from swap_hw.layout import Layout
    from swap_hw.models import build_model
    from swap_hw.models.zoo import prunable_names

    case = CASES[name]
    model = build_model(case["arch"], case["shape"], case["classes"], seed=0, **case["options"]).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(n, *case["shape"], generator=gen)
    y = torch.randint(0, case["classes"], (n,), generator=gen)
    layout = Layout.from_model(model, include=prunable_names(model))
    return model, x, y, layout, gen


def products_child(args: argparse.Namespace) -> dict:
    """One matrix-free Xv and Xᵀu against the floor, all timed in this process (`--products-vs-floor`).

    X is forced matrix-free (`over_budget: recompute`, budget 0), as `GradientSource.collect`
    builds it when X is over the budget. The floor is one forward + backward of the summed loss
    Σ_i CE(f(x_i), y_i) over the n examples in eval mode, gradients with respect to the pruned
    weights only (the d columns of X): timed both as one batch of n and in the operator's chunks
    of examples, and the faster of the two is the floor. The four are timed in turn, `--repeats`
    rounds, and each keeps its fastest round (the first round pays page faults and tracing).
    Two checks, free from the timed results: Σ_i (Xv)_i = ⟨∇Σℓ, v⟩ (Xv against the floor's
    gradient) and ⟨Xᵀu, v⟩ = ⟨u, Xv⟩ (Xᵀu is Xv's adjoint); both relative errors are printed.
    """
    import torch
    from torch import nn

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from swap_hw.gradients import GRADIENT_SOURCES

    model, x, y, layout, gen = build_case(args.case, args.n)
    grads = GRADIENT_SOURCES.get("clean")().collect(model, (x, y), seed=0, layout=layout, memory_budget_mb=0,
                                                    over_budget="recompute")
    if not getattr(grads, "matrix_free", False):
        return {"case": args.case, "error": "the gradients did not come back matrix-free"}
    chunk = int(getattr(grads.operator, "chunk_size", args.n))
    pruned = [dict(model.named_parameters())[s.name] for s in layout.slices]

    def floor(rows: int) -> list:
        grads_sum = [torch.zeros_like(p) for p in pruned]
        for p in pruned:
            p.requires_grad_(True)
        try:
            for start in range(0, args.n, rows):
                loss = nn.functional.cross_entropy(model(x[start:start + rows]), y[start:start + rows],
                                                   reduction="sum")
                for total, g in zip(grads_sum, torch.autograd.grad(loss, pruned)):
                    total += g
        finally:
            for p in pruned:
                p.requires_grad_(False)
        return grads_sum

    v = torch.randn(layout.d, generator=gen)
    u = torch.randn(args.n, generator=gen)
    results: dict = {}
    fns = {"floor_batch": lambda: floor(args.n), "floor_chunked": lambda: floor(chunk),
           "xv": lambda: grads.xv(v), "xtu": lambda: grads.xtu(u)}
    best = {k: float("inf") for k in fns}
    for _ in range(args.repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            results[key] = fn()
            best[key] = min(best[key], time.perf_counter() - t0)
    floor_s = min(best["floor_batch"], best["floor_chunked"])
    g_floor = layout.flatten({s.name: g for s, g in zip(layout.slices, results["floor_batch"])})
    xv, xtu = results["xv"].double(), results["xtu"].double()
    expect_sum = float(g_floor.double() @ v.double())
    adjoint = float(u.double() @ xv)
    return {"case": args.case, "n": args.n, "d": layout.d, "chunk": chunk, "threads": args.threads,
            "repeats": args.repeats, "floor_batch_seconds": best["floor_batch"],
            "floor_chunked_seconds": best["floor_chunked"], "floor_seconds": floor_s,
            "xv_seconds": best["xv"], "xtu_seconds": best["xtu"],
            "xv_ratio": best["xv"] / floor_s, "xtu_ratio": best["xtu"] / floor_s,
            "xv_check": abs(float(xv.sum()) - expect_sum) / max(abs(expect_sum), 1e-30),
            "adjoint_check": abs(float(xtu @ v.double()) - adjoint) / max(abs(adjoint), 1e-30),
            "peak_rss_gib": peak_rss_gib()}


def launch_products(case: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--products-vs-floor", "--case", case,
           "--n", str(args.n), "--threads", str(args.threads), "--repeats", str(args.repeats)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"case": case, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def print_products_table(rows: list[dict]) -> None:
    head = (f"{'case':<15}{'d':>10}{'n':>6}{'chunk':>7}{'floor s':>9}{'(batch':>8}{' chunked)':>10}"
            f"{'Xv s':>8}{'Xv/fl':>7}{'Xᵀu s':>8}{'Xᵀu/fl':>8}{'peak GiB':>10}  checks / note")
    print(head)
    print("-" * len(head))
    for r in rows:
        checks = (f"Σ(Xv) {r['xv_check']:.0e}, adjoint {r['adjoint_check']:.0e}" if "xv_check" in r else "")
        print(f"{r['case']:<15}{fmt(r.get('d'), ',d'):>10}{fmt(r.get('n'), 'd'):>6}{fmt(r.get('chunk'), 'd'):>7}"
              f"{fmt(r.get('floor_seconds'), '.2f'):>9}{fmt(r.get('floor_batch_seconds'), '.2f'):>8}"
              f"{fmt(r.get('floor_chunked_seconds'), '.2f'):>10}{fmt(r.get('xv_seconds'), '.2f'):>8}"
              f"{fmt(r.get('xv_ratio'), '.2f'):>7}{fmt(r.get('xtu_seconds'), '.2f'):>8}"
              f"{fmt(r.get('xtu_ratio'), '.2f'):>8}{fmt(r.get('peak_rss_gib'), '.2f'):>10}  "
              f"{r.get('error', checks)}")
    print("\nfloor = the faster of one forward + backward of the summed loss over the n examples as one batch "
          "or in the operator's chunks (eval mode, gradients of the pruned weights); each time the fastest of "
          "the repeats; target: Xv and Xᵀu each ≤ 3× the floor")


def run_child(args: argparse.Namespace) -> dict:
    """One (case, pruner) measurement in this process; returns a JSON-able dict."""
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    from swap_hw.gradients import GRADIENT_SOURCES
    from swap_hw.pruners import PRUNERS

    out: dict = {"case": args.case, "pruner": args.pruner, "n": args.n, "sparsity": args.sparsity}
    if args.pruner not in PRUNERS:
        return {**out, "error": f"pruner {args.pruner!r} is not registered (have: {', '.join(PRUNERS.names())})"}
    options = {}
    for item in args.option:
        key, value = item.split("=", 1)
        name, field = key.split(".", 1)
        if name == args.pruner:
            options[field] = parse_value(value)
    pruner = PRUNERS.get(args.pruner)(**options)
    out["pruner_label"] = pruner.label

    model, x, y, layout, gen = build_case(args.case, args.n)
    out.update(d=layout.d, dense_gib=args.n * layout.d * 4 / 2**30, rss_model_gib=peak_rss_gib())

    t0 = time.perf_counter()
    grads = GRADIENT_SOURCES.get("clean")().collect(model, (x, y), seed=0, layout=layout,
                                                    memory_budget_mb=args.memory_budget_mb,
                                                    over_budget=args.over_budget, spill_dir=args.spill_dir)
    out["gradient_seconds"] = time.perf_counter() - t0
    out["mode"] = grads.provenance.get("gradient_mode", "dense")
    if args.products:
        v = torch.randn(layout.d, generator=gen)
        t0 = time.perf_counter()
        xv = grads.xv(v)
        out["xv_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        grads.xtu(xv)
        out["xtu_seconds"] = time.perf_counter() - t0
    out["rss_before_prune_gib"] = peak_rss_gib()

    weights = layout.weights_of(model)
    t0 = time.perf_counter()
    try:
        result = pruner.prune(weights, grads if pruner.needs_gradients else None, args.sparsity)
    except Exception as exc:  # noqa: BLE001 - report the failure as the measurement
        out.update(error=f"{type(exc).__name__}: {exc}", prune_seconds=time.perf_counter() - t0)
    else:
        out["prune_seconds"] = time.perf_counter() - t0
        out["realised_sparsity"] = result.sparsity
        out["solver_seconds"] = result.log.get("seconds")
        if isinstance(result.log.get("products"), int):
            out["products"] = result.log["products"]  # Xv / Xᵀu evaluations the solver made
    out["peak_rss_gib"] = peak_rss_gib()
    return out


def launch(case: str, pruner: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--case", case, "--pruner", pruner,
           "--n", str(args.n), "--sparsity", str(args.sparsity), "--threads", str(args.threads),
           "--memory-budget-mb", str(args.memory_budget_mb), "--over-budget", args.over_budget]
    if args.spill_dir:
        cmd += ["--spill-dir", args.spill_dir]
    cmd += [a for item in args.option for a in ("--option", item)]
    if not args.products:
        cmd.append("--no-products")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"case": case, "pruner": pruner, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def print_table(rows: list[dict]) -> None:
    head = (f"{'case':<15}{'pruner':<12}{'d':>10}{'mode':>13}{'grad s':>9}{'Xv s':>8}{'Xᵀu s':>8}"
            f"{'prune s':>10}{'products':>10}{'peak GiB':>10}  note")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case']:<15}{r['pruner']:<12}{fmt(r.get('d'), ',d'):>10}{r.get('mode', '-'):>13}"
              f"{fmt(r.get('gradient_seconds'), '.2f'):>9}{fmt(r.get('xv_seconds'), '.2f'):>8}"
              f"{fmt(r.get('xtu_seconds'), '.2f'):>8}{fmt(r.get('prune_seconds'), '.2f'):>10}"
              f"{fmt(r.get('products'), 'd'):>10}"
              f"{fmt(r.get('peak_rss_gib'), '.2f'):>10}  {r.get('error', '')}")
    print()
    for case in dict.fromkeys(r["case"] for r in rows):
        by = {r["pruner"]: r for r in rows if r["case"] == case and "error" not in r}
        if "lr" in by and "swap" in by:
            ratio = by["swap"]["prune_seconds"] / by["lr"]["prune_seconds"]
            print(f"{case}: SWAP/LR prune time = {ratio:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="repeatable; default: all")
    parser.add_argument("--pruner", action="append", help=f"repeatable; default: {', '.join(DEFAULT_PRUNERS)}")
    parser.add_argument("--option", action="append", default=[], metavar="PRUNER.KEY=VALUE",
                        help="a pruner parameter, e.g. swap.epsilon=0.1 (repeatable)")
    parser.add_argument("--n", type=int, default=1000, help="calibration examples (default 1000)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--memory-budget-mb", type=float, default=2048.0,
                        help="X up to this many MiB is held in memory (default 2048, the scenario default); beyond it, --over-budget")
    parser.add_argument("--over-budget", choices=["recompute", "disk"], default="recompute",
                        help="X over the budget: recompute per product (matrix-free) or write it once to disk")
    parser.add_argument("--spill-dir", help="folder for --over-budget disk (default: the system temp folder)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-products", dest="products", action="store_false",
                        help="skip timing one Xv and one Xᵀu before pruning")
    parser.add_argument("--products-vs-floor", action="store_true",
                        help="only time one matrix-free Xv and Xᵀu against one batched forward + backward "
                             f"(default cases: {', '.join(PRODUCT_CASES)}); no pruning")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of --products-vs-floor timings; the fastest of each is kept (default 3)")
    parser.add_argument("--json", help="also append every result as a JSON line to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child and args.products_vs_floor:
        args.case = args.case[0]
        print(json.dumps(products_child(args)))
        return 0
    if args.child:
        args.case, args.pruner = args.case[0], args.pruner[0]
        print(json.dumps(run_child(args)))
        return 0
    if args.products_vs_floor:
        rows = []
        for case in args.case or PRODUCT_CASES:
            row = launch_products(case, args)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
        print(f"matrix-free products (over_budget: recompute) against the floor: threads = {args.threads}, "
              f"repeats = {args.repeats} (fastest kept), {os.cpu_count()} CPUs")
        print_products_table(rows)
        return 0
    cases = args.case or list(CASES)
    pruners = args.pruner or DEFAULT_PRUNERS
    rows = []
    for case in cases:
        for pruner in pruners:
            row = launch(case, pruner, args)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
    print(f"n = {args.n}, sparsity = {args.sparsity}, threads = {args.threads}, "
          f"memory budget = {args.memory_budget_mb:g} MiB (over it: {args.over_budget}), {os.cpu_count()} CPUs")
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

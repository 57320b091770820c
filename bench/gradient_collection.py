"""Per-sample gradient collection: swap_hw's path vs a Python loop vs just writing X.

For an MLPNet on digits (8×8 inputs, d = 3 560) and the paper's MLPNet (784 inputs, d = 32 360,
random inputs), n = 1000 examples, it prints wall-clock seconds (median of `--repeats` warm runs):

- first call   : the first call in the process of swap_hw's path and of the torch.func path
                 (the latter includes torch.func's tracing);
- swap_hw      : per_sample_gradients, warm (its Linear fast path for these models);
- torch.func   : the general vmap(grad) path per_sample_gradients uses for other models;
- loop         : one forward + backward per example, gradients copied into row i of X;
- write X      : filling a fresh (n, d) float32 matrix (n·d·4 bytes), the floor any method pays;
- analog       : the `analog` gradient source's collect() (programming + drift + digital copy +
                 gradients), per 1000 samples.

Targets: swap_hw ≥ 4× faster than the loop, and within 3× of the write-X time.

`--zoo` (issue: the per-sample engine at its floor) measures ResNet20 and MobileNetV1 on 32×32
inputs (n = 1000 by default; MobileNetV1's X is then 12.8 GB: `--n 256` fits 24 GB), each in a
fresh process so its peak memory is its own: swap_hw's path (which one
ran and its byte-sized chunk), the floor (one batched forward + backward over the n examples plus
writing X), torch.func at the engine's chunk, a per-example loop (timed on 100 examples, scaled to
n), and the process's peak resident memory. Target: swap_hw ≤ 1.5× the floor.

    python bench/gradient_collection.py [--n 1000] [--repeats 5] [--threads 1] [--zoo]

One thread by default: on a shared, oversubscribed machine OpenMP threads spin-wait and a
2-thread run of these small kernels was measured 30–50× slower than a 1-thread run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from torch import nn


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall-clock seconds per function over `repeats` rounds, the functions run in turn.

    Interleaving makes a load change on a shared machine hit every method alike. Each function's
    last two results are kept alive (see also `fresh_pages_for_large_allocations`).
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    alive: dict[str, list[object]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            result = fn()
            times[key].append(time.perf_counter() - start)
            alive[key] = (alive[key] + [result])[-2:]
    return {k: statistics.median(v) for k, v in times.items()}


def fresh_pages_for_large_allocations() -> None:
    """Make glibc serve every allocation ≥ 1 MiB with new mmap'd pages.

    Otherwise glibc's adaptive threshold recycles a freed 14 MiB X on the heap, so "write X"
    measures a memset into already-mapped pages (~0.7 ms) while a real first X pays the page
    faults (~4 ms here). With this, every method pays them, as a caller creating X does.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB
    except (OSError, AttributeError):  # not glibc: keep the allocator's default
        pass


def loop_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layout) -> torch.Tensor:
    """The naive reference: one backward pass per example."""
    params = dict(model.named_parameters())
    wanted = [params[s.name] for s in layout.slices]
    X = torch.empty((x.shape[0], layout.d), dtype=torch.float32)
    for i in range(x.shape[0]):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, wanted)
        X[i] = torch.cat([g.reshape(-1) for g in grads])
    return X


def write_matrix(n: int, d: int) -> torch.Tensor:
    X = torch.empty((n, d), dtype=torch.float32)
    X.fill_(1.0)
    return X


def bench_case(label: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int, analog: bool) -> None:
    from swap_hw.gradients import GRADIENT_SOURCES, per_sample_gradients
    from swap_hw.gradients.per_sample import _torch_func_per_sample_gradients
    from swap_hw.layout import Layout

    model.eval()
    layout = Layout.from_model(model)
    n, d = x.shape[0], layout.d

    start = time.perf_counter()
    X = per_sample_gradients(model, x, y, layout)
    first = time.perf_counter() - start
    start = time.perf_counter()
    _torch_func_per_sample_gradients(model, x, y, layout, 256)
    first_general = time.perf_counter() - start
    err = float((X[:50] - loop_gradients(model, x[:50], y[:50], layout)).abs().max())
    del X
    fns = {
        "fast": lambda: per_sample_gradients(model, x, y, layout),
        "general": lambda: _torch_func_per_sample_gradients(model, x, y, layout, 256),
        "loop": lambda: loop_gradients(model, x, y, layout),
        "write": lambda: write_matrix(n, d),
    }
    if analog:
        source = GRADIENT_SOURCES.get("analog")()
        source.collect(model, (x[:10], y[:10]), seed=0)  # import aihwkit, warm up
        fns["analog"] = lambda: source.collect(model, (x, y), seed=0)
    t = interleaved(fns, repeats)

    print(f"\n{label}: n = {n}, d = {d}, X = {n * d * 4 / 2**20:.1f} MiB (medians of {repeats})")
    print(f"  first call            {first * 1e3:9.1f} ms   torch.func first call (tracing) {first_general * 1e3:.1f} ms")
    print(f"  swap_hw (warm)        {t['fast'] * 1e3:9.1f} ms")
    print(f"  torch.func (general)  {t['general'] * 1e3:9.1f} ms   (path used for non-Linear models)")
    print(f"  per-sample loop       {t['loop'] * 1e3:9.1f} ms   loop / swap_hw {t['loop'] / t['fast']:5.1f}x (target ≥ 4)")
    print(f"  write X only          {t['write'] * 1e3:9.1f} ms   swap_hw / write {t['fast'] / t['write']:5.2f}x (target ≤ 3)")
    print(f"  max |swap_hw − loop|  {err:9.2e}")
    if analog:
        print(f"  analog source         {t['analog'] * 1e3 * 1000 / n:9.1f} ms per 1000 samples")


def zoo_case(arch: str, n: int, repeats: int) -> None:
    """One zoo architecture on 32×32 inputs (run in its own process, for its peak memory)."""
    import resource

    from swap_hw.gradients.per_sample import _torch_func_per_sample_gradients, per_sample_gradients
    from swap_hw.layout import Layout
    from swap_hw.models import build_model, prunable_names

    options = {"variant": "cifar"} if arch == "mobilenetv1" else {}
    model = build_model(arch, (3, 32, 32), 10, seed=0, **options).eval()
    layout = Layout.from_model(model, include=prunable_names(model))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand((n, 3, 32, 32), generator=gen), torch.randint(0, 10, (n,), generator=gen)
    params = [p for p in model.parameters()]

    def floor() -> torch.Tensor:
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
        return write_matrix(n, layout.d)

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    info: dict = {}
    start = time.perf_counter()
    X = per_sample_gradients(model, x, y, layout, info=info)
    first = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    del X
    fns = {"swap_hw": lambda: per_sample_gradients(model, x, y, layout),
           "floor": floor,
           "torch.func": lambda: _torch_func_per_sample_gradients(model, x, y, layout, info["chunk_rows"])}
    # interleaved, but each X freed at once: at MobileNetV1 size one X is n·12.8 MiB
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            result = fn()
            samples[key].append(time.perf_counter() - start)
            del result
    t = {k: statistics.median(v) for k, v in samples.items()}
    m = min(100, n)
    start = time.perf_counter()
    loop_gradients(model, x[:m], y[:m], layout)
    loop = (time.perf_counter() - start) * n / m
    x_mib = n * layout.d * 4 / 2**20
    print(f"\n{arch}, 32×32 inputs: n = {n}, d = {layout.d:,}, X = {x_mib:.0f} MiB (medians of {repeats})")
    print(f"  swap_hw ({info['per_sample_path']}, chunk {info['chunk_rows']} rows)  {t['swap_hw']:7.2f} s"
          f"   / floor {t['swap_hw'] / t['floor']:4.2f}x (target ≤ 1.5); first call {first:.2f} s")
    print(f"  floor: one forward + backward, write X   {t['floor']:7.2f} s")
    print(f"  torch.func at the same chunk              {t['torch.func']:7.2f} s")
    print(f"  per-example loop (100 timed, scaled)      {loop:7.2f} s   / swap_hw {loop / t['swap_hw']:4.1f}x")
    print(f"  peak memory of the first swap_hw call: {peak / 1024:.0f} MiB resident (process; before it "
          f"{before / 1024:.0f} MiB; X alone {x_mib:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--zoo", action="store_true", help="ResNet20 and MobileNetV1 (32×32) instead of the MLPNets")
    parser.add_argument("--arch", help=argparse.SUPPRESS)  # one zoo case, in a child process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fresh_pages_for_large_allocations()
    if args.arch:
        zoo_case(args.arch, args.n, args.repeats)
        return
    if args.zoo:
        import subprocess
        import sys

        for arch in ("resnet20", "mobilenetv1"):
            subprocess.run([sys.executable, __file__, "--arch", arch, "--n", str(args.n), "--repeats",
                            str(args.repeats), "--threads", str(args.threads)], check=True)
        return

    from swap_hw.data import load_digits_splits
    from swap_hw.models import MLPNet, build_model

    splits = load_digits_splits(0.2, 0)
    x, y = splits.calibration(args.n, seed=0)
    digits = build_model("mlpnet", splits.input_shape, splits.n_classes, seed=0)
    bench_case("MLPNet on digits (64 inputs)", digits, x, y, args.repeats, analog=True)

    gen = torch.Generator().manual_seed(0)
    xm = torch.rand((args.n, 1, 28, 28), generator=gen)
    ym = torch.randint(0, 10, (args.n,), generator=gen)
    torch.manual_seed(0)
    mnist = MLPNet((1, 28, 28), 10)
    bench_case("MLPNet, 784 inputs (random data)", mnist, xm, ym, args.repeats, analog=True)


if __name__ == "__main__":
    main()

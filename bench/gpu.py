"""The paper's sizes on whatever accelerator is present, against this machine's CPU (issue 19).

    python bench/gpu.py                         # the GPU if there is one, then the CPU for the ratio
    python bench/gpu.py --cases mlpnet,resnet20 --cpu-n 256 --threads 16

For each case (bench/prune_scale.py's models, freshly initialised at seed 0; n random inputs and
labels from generator seed 1 — times do not depend on training) and each device:

    gradients   the clean source's per-sample gradients X (n × d), dense in the device's memory
    lr, swap    one full prune to s = 0.9 at the pruners' defaults, on that X
    analog      programming the dense model onto aihwkit's torch tiles (PCM noise model, aihwkit's
                default tile size), drifting it one day, one test pass over 1000 random images

Each figure is the wall time of one run after one warm-up of the gradient path (CUDA kernels are
compiled/loaded on first use), with the device synchronised before the clock is read. The CPU row
runs at `--cpu-n` samples when that is smaller than n (MobileNetV1's X is 16.8 GB at n = 1000 and
an lr prune is hundreds of products over it), and the ratio column then compares the CPU time
scaled linearly to n (gradient collection and every product with X are linear in n; the solver's
vector work is not, so a scaled ratio is an estimate and is marked `~`).
Printed: device name, d, seconds per item per device, the CPU/GPU ratio, peak device memory.
Sized to finish in under 5 minutes on one H200-class GPU with a 16-core host (the CPU side is
the long part: lower --cpu-n or drop a case if a budget is tight).

Needs the package's device support (scenario `device:`; docs/gpu.md). Without a GPU it runs the
CPU side only and says so.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

CASES = ["mlpnet", "resnet20", "mobilenetv1_32"]
SPARSITY = 0.9
ANALOG_IMAGES = 1000


def synchronise(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn):
    """(seconds, result) of fn() with the device synchronised on both sides of the clock."""
    synchronise(device)
    start = time.perf_counter()
    result = fn()
    synchronise(device)
    return time.perf_counter() - start, result


def measure(case: str, device, n: int) -> dict:
    """One case on one device: the items of the module docstring, in seconds."""
    import torch
    from prune_scale import build_case

    from swap_hw.gradients import GRADIENT_SOURCES
    from swap_hw.noise.hardware import HardwareConfig, program
    from swap_hw.pruners import PRUNERS

    model, x, y, layout, gen = build_case(case, n)  # drawn on the CPU: the same inputs on every device
    out: dict = {"case": case, "device": str(device), "n": n, "d": layout.d}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.device(device):
        model, x, y = model.to(device), x.to(device), y.to(device)
        source = GRADIENT_SOURCES.get("clean")()

        def collect():
            # a budget above X's size keeps X dense in the device's memory, as the comparison needs
            return source.collect(model, (x, y), seed=0, layout=layout,
                                  memory_budget_mb=n * layout.d * 4 / 2**20 + 1)

        timed(device, lambda: source.collect(model, (x[:8], y[:8]), seed=0, layout=layout))  # warm-up
        out["gradients"], grads = timed(device, collect)
        out["x_device"] = str(grads.X.device) if getattr(grads, "X", None) is not None else "?"
        weights = layout.weights_of(model)
        for name in ("lr", "swap"):
            pruner = PRUNERS.get(name)()
            out[name], result = timed(device, functools.partial(pruner.prune, weights, grads, SPARSITY))
            out[f"{name}_sparsity"] = result.sparsity
        del grads
        images = torch.rand(ANALOG_IMAGES, *x.shape[1:], generator=gen).to(device)
        labels = torch.randint(0, int(y.max()) + 1, (ANALOG_IMAGES,), generator=gen).to(device)

        def analog():
            chip = program(model, HardwareConfig(), seed=0)
            chip.drift(86400.0, seed=1)
            return chip.accuracy_and_loss(images, labels, seed=2)

        out["analog"], _ = timed(device, analog)
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="the accelerator to compare with the CPU (default cuda)")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--n", type=int, default=1000, help="calibration samples on the accelerator")
    ap.add_argument("--cpu-n", type=int, default=None,
                    help="samples on the CPU (default: n for mlpnet and resnet20, 128 for mobilenetv1_32)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's own)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    accelerator = torch.device(args.device)
    if accelerator.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the CPU side only (the ratios need a GPU)")
        accelerator = None
    host = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    name = torch.cuda.get_device_name(accelerator) if accelerator is not None else "—"
    print(f"accelerator: {name}; CPU: {host}; torch {torch.__version__}; s = {SPARSITY}", flush=True)

    rows = []
    for case in cases:
        cpu_n = args.cpu_n or (128 if case.startswith("mobilenet") else args.n)
        fast = measure(case, accelerator, args.n) if accelerator is not None else None
        if fast is not None:
            print(f"  {case} on {name}: " + ", ".join(f"{k} {fast[k]:.2f} s" for k in ("gradients", "lr", "swap", "analog")),
                  flush=True)
        slow = measure(case, torch.device("cpu"), cpu_n)
        print(f"  {case} on the CPU (n = {cpu_n}): "
              + ", ".join(f"{k} {slow[k]:.2f} s" for k in ("gradients", "lr", "swap", "analog")), flush=True)
        rows.append((case, fast, slow))

    print()
    print("| case | d | item | accelerator (s) | CPU (s) | CPU / accelerator |")
    print("|---|---:|---|---:|---:|---:|")
    for case, fast, slow in rows:
        for item in ("gradients", "lr", "swap", "analog"):
            scale = 1.0 if item == "analog" or fast is None else fast["n"] / slow["n"]
            approx = "~" if scale != 1.0 else ""
            ratio = f"{approx}{slow[item] * scale / fast[item]:.1f}×" if fast else "—"
            gpu = f"{fast[item]:.3f}" if fast else "—"
            cpu = f"{slow[item]:.3f}" + (f" (n = {slow['n']})" if scale != 1.0 else "")
            print(f"| {case} | {slow['d']:,} | {item} | {gpu} | {cpu} | {ratio} |")
    for case, fast, _ in rows:
        if fast is not None:
            print(f"{case}: peak device memory {fast.get('peak_gib', 0):.1f} GiB, X on {fast['x_device']}; "
                  f"realised sparsity lr {fast['lr_sparsity']:.3f}, swap {fast['swap_sparsity']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What hardware-aware (HWA) fine-tuning costs per epoch, against digital fine-tuning.

On the digits MLPNet (64 → 40 → 20 → 10, trained 30 epochs as the scenarios do, magnitude-pruned
to 80 %; 1 438 training images, minibatches of 64, Adam, masks enforced) it times

- digital: `models.train_model(masks=...)`, what the gradual protocol runs after each stage;
- HWA:     `noise.hwa.hwa_train_model` with the default HWAConfig (additive noise σ = 0.1 × the
           tile's max|w|, ideal periphery) — the whole call: conversion onto aihwkit tiles,
           training, reading the weights back;
- HWA + IO: the same with aihwkit's periphery non-idealities on (out_noise 0.06, 7-bit DAC,
            9-bit ADC), which the analog forward then simulates on every minibatch;

and prints seconds per epoch (median of `repeats` warm calls of `epochs` epochs, after one
untimed warm-up that pays aihwkit's import) and the ratio to digital. The fixed cost of one HWA
call (conversion + read-back) is printed too: the gradual protocol pays it once per stage.

`--accuracy` adds `hwa_accuracy()`: what the fine-tuners give after programming and drift.

    python bench/hwa_cost.py [--epochs 5] [--repeats 3] [--threads 1] [--accuracy]

Measured (shared 2-core machine, 1 thread, torch 2.14, aihwkit 1.1.0): digital 12.0 ms/epoch, HWA
20.6 ms/epoch (1.7x), HWA + IO 41.8 ms/epoch (3.5x), 4 ms fixed cost per call.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: import this swap_hw


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: aihwkit's import, allocator, first-call tracing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def hwa_vs_digital(epochs: int = 5, repeats: int = 3) -> dict[str, float]:
    """Seconds per fine-tuning epoch of digital and HWA fine-tuning on the pruned digits MLPNet, and
    their ratios (see the module docstring); prints them and returns them."""
    from swap_hw.data import load_digits_splits
    from swap_hw.layout import Layout
    from swap_hw.models import apply_weights, build_model, train_model
    from swap_hw.noise.hwa import HWAConfig, hwa_train_model
    from swap_hw.pruners import PRUNERS

    splits = load_digits_splits(0.2, 0)
    model = build_model("mlpnet", splits.input_shape, splits.n_classes, seed=0)
    train_model(model, splits.x_train, splits.y_train, epochs=30, lr=3e-3, batch_size=64, seed=1)
    layout = Layout.from_model(model)
    result = PRUNERS.get("magnitude")().prune(layout.weights_of(model), None, 0.8)
    pruned = apply_weights(model, result.weights)
    opts = dict(lr=1e-3, batch_size=64, seed=5, masks=result.masks)
    x, y = splits.x_train, splits.y_train

    def digital(n: int = epochs) -> None:
        train_model(copy.deepcopy(pruned), x, y, epochs=n, **opts)

    def hwa(config: HWAConfig, n: int = epochs) -> Callable[[], object]:
        return lambda: hwa_train_model(pruned, x, y, config=config, epochs=n, **opts)

    io = HWAConfig(out_noise=0.06, inp_res=1 / 126, out_res=1 / 510)
    out = {
        "digital_s_per_epoch": _median_seconds(digital, repeats) / epochs,
        "hwa_s_per_epoch": _median_seconds(hwa(HWAConfig()), repeats) / epochs,
        "hwa_io_s_per_epoch": _median_seconds(hwa(io), repeats) / epochs,
        "hwa_call_overhead_s": _median_seconds(hwa(HWAConfig(), 0), repeats),
    }
    out["ratio"] = out["hwa_s_per_epoch"] / out["digital_s_per_epoch"]
    out["ratio_io"] = out["hwa_io_s_per_epoch"] / out["digital_s_per_epoch"]
    print(f"digits MLPNet, 80 % pruned, {x.shape[0]} images/epoch, batch 64, Adam, {torch.get_num_threads()} thread(s)")
    print(f"  digital fine-tuning     {out['digital_s_per_epoch'] * 1e3:8.1f} ms/epoch")
    print(f"  HWA fine-tuning         {out['hwa_s_per_epoch'] * 1e3:8.1f} ms/epoch   ratio {out['ratio']:.2f}x")
    print(f"  HWA + IO non-idealities {out['hwa_io_s_per_epoch'] * 1e3:8.1f} ms/epoch   ratio {out['ratio_io']:.2f}x")
    print(f"  HWA fixed cost per call (conversion + read-back) {out['hwa_call_overhead_s'] * 1e3:.1f} ms")
    return out


def hwa_accuracy(epochs: int = 10, draws: int = 10) -> list[dict]:
    """Test accuracy (fraction) of the digits MLPNet gradual-pruned with magnitude to 80 % (4 stages,
    `epochs` fine-tuning epochs after each), fine-tuned digitally or with HWA, then programmed on
    PCM (aihwkit's PCMLikeNoiseModel, global drift compensation) and drifted to 1 s, 1 day and
    1 year: mean over `draws` programming draws; also the digital accuracy. One dense model, one
    seed: indicative only (the test split has 359 images, so one image is 0.28 points)."""
    from swap_hw.data import load_digits_splits
    from swap_hw.deploy import CONDITIONS
    from swap_hw.layout import Layout
    from swap_hw.models import accuracy_and_loss, build_model, train_model
    from swap_hw.protocols import PROTOCOLS, PruneJob
    from swap_hw.pruners import PRUNERS

    splits = load_digits_splits(0.2, 0)
    model = build_model("mlpnet", splits.input_shape, splits.n_classes, seed=0)
    train_model(model, splits.x_train, splits.y_train, epochs=30, lr=3e-3, batch_size=64, seed=1)
    job = PruneJob(model=model, layout=Layout.from_model(model), seed=7,
                   train_split=(splits.x_train, splits.y_train))
    times = (1.0, 86400.0, 31536000.0)
    condition = CONDITIONS.get("analog")(draws=draws, drift_times=list(times))
    gradual = PROTOCOLS.get("gradual")
    rows = []
    print(f"digits MLPNet, magnitude 80 %, gradual 4 stages x {epochs} epochs, PCM, {draws} draws")
    print(f"  {'fine-tuner':<40} {'digital':>8} {'1 s':>7} {'1 day':>7} {'1 year':>7}")
    for hwa in (None, {"std_dev": 0.05}, {"std_dev": 0.1}, {"noise_type": "mult_normal", "std_dev": 0.2}):
        pruned, _ = gradual(gradual.Params(stages=4, epochs=epochs, hwa=hwa)).run(PRUNERS.get("magnitude")(), job, 0.8)
        by_time: dict[float, list[float]] = {}
        for m in condition.evaluate(pruned, splits.test, seed=11):
            if m.metric == "accuracy":
                by_time.setdefault(float(m.tags["drift_time"]), []).append(m.value)
        row = {"hwa": hwa, "digital": accuracy_and_loss(pruned, *splits.test)[0],
               **{t: statistics.mean(by_time[t]) for t in times}}
        rows.append(row)
        label = "digital" if hwa is None else "hwa " + ", ".join(f"{k}={v}" for k, v in hwa.items())
        print(f"  {label:<40} {row['digital']:8.3f} " + " ".join(f"{row[t]:7.3f}" for t in times))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accuracy", action="store_true",
                        help="also print the accuracy after PCM drift of digital vs HWA fine-tuning (~15 s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hwa_vs_digital(args.epochs, args.repeats)
    if args.accuracy:
        hwa_accuracy()


if __name__ == "__main__":
    main()

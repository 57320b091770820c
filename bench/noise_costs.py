"""What each noise world costs, and how much sparsity survives analog deployment.

On the digits MLPNet (64 → 40 → 20 → 10, d = 3 560 prunable weights, trained 30 epochs as the
scenarios do) it prints three tables, so users can plan sweeps:

1. gradient sources: wall-clock seconds of `collect()` per 1000 calibration samples (labels
   corrupted, attacks crafted, hardware programmed, per-sample gradients, gradient noise);
2. deployment conditions: seconds per 1000 test samples — digital; analog split into one
   programming (`hardware.program`, per draw) and one drift + test pass (per draw per drift
   time), per noise model (pcm, reram_wan2022, reram_cmo, custom, pcm_hermes), with aihwkit's
   realistic periphery (ADC noise, DAC/ADC quantisation), per drift compensation (per_column,
   global_exact, none; the other rows use global) and with 1 % stuck cells, and a whole analog condition as scenarios/analog.yaml lists it; adversarial
   per eps and attack; adversarial on analog hardware per draw per eps (programming included);
3. zero retention: the model magnitude-pruned (global) to 70 % and 90 %, programmed `--draws`
   times per noise model with and without `keep_pruned_zero`; the fraction of pruned weights
   still exactly 0 on the chip right after programming and after one day of drift, and the chip's
   test accuracy after one day (mean over draws);
4. fine-tuning (`--only hwa`): hardware-aware fine-tuning per epoch against digital fine-tuning
   on the 80 %-pruned model (bench/hwa_cost.py's `hwa_vs_digital`; target ≤ 3×).

Timings are medians of `--repeats` warm runs, after one untimed warm-up (which pays aihwkit's and
torchattacks' imports). The test split (359 images) is tiled to 1000 examples so condition costs are
measured at that size, not extrapolated.

    python bench/noise_costs.py [--repeats 7] [--draws 5] [--threads 1] [--only sources,conditions,zeros,hwa]

One thread by default: on a shared machine OpenMP threads spin-wait and small kernels get slower.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: import this swap_hw

PER = 1000  # costs are reported per this many samples


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: imports, allocator, first-call tracing
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def trained_digits_model():
    from swap_hw.data import load_digits_splits
    from swap_hw.models import build_model, train_model

    splits = load_digits_splits(0.2, 0)
    model = build_model("mlpnet", splits.input_shape, splits.n_classes, seed=0)
    train_model(model, splits.x_train, splits.y_train, epochs=30, lr=3e-3, batch_size=64, seed=1)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, splits


def tiled(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    reps = -(-n // x.shape[0])
    return x.repeat(reps, *([1] * (x.dim() - 1)))[:n], y.repeat(reps)[:n]


def source_table(model: nn.Module, splits, repeats: int) -> None:
    from swap_hw.gradients import GRADIENT_SOURCES
    from swap_hw.gradients.chain import ChainedSource

    make = GRADIENT_SOURCES.get
    batch = splits.calibration(PER, seed=0)
    sources = [
        ("clean", make("clean")()),
        ("gaussian std=2 prop=0.25", make("gaussian")(std=2.0, prop=0.25)),
        ("gaussian std=4 prop=1.0", make("gaussian")(std=4.0, prop=1.0)),
        ("label_noise symmetric rate=0.2", make("label_noise")(kind="symmetric", rate=0.2)),
        ("adversarial fgsm eps=0.1 fraction=0.5", make("adversarial")(attack="fgsm", eps=0.1, fraction=0.5)),
        ("adversarial pgd-10 eps=0.1 fraction=0.5", make("adversarial")(attack="pgd", eps=0.1, fraction=0.5)),
        ("adversarial pgd-10 eps=0.1 fraction=1.0", make("adversarial")(attack="pgd", eps=0.1, fraction=1.0)),
        ("adversarial apgd-10 eps=0.1 fraction=0.5", make("adversarial")(attack="apgd", eps=0.1, fraction=0.5)),
        ("analog pcm t=1d", make("analog")(noise_model="pcm", drift_time=86400)),
        ("analog reram_wan2022 t=1d", make("analog")(noise_model="reram_wan2022", drift_time=86400)),
        ("analog reram_cmo t=1d", make("analog")(noise_model="reram_cmo", drift_time=86400)),
        ("chain label_noise → analog pcm", ChainedSource([make("label_noise")(), make("analog")()])),
    ]
    print(f"\n1. gradient sources — collect() seconds per {PER} calibration samples (n = {PER}, d = 3560)")
    print(f"   {'source':44s} {'s / 1000':>9s}")
    for label, source in sources:
        t = median_seconds(lambda: source.collect(model, batch, seed=0), repeats)
        print(f"   {label:44s} {t:9.3f}")


def condition_table(model: nn.Module, splits, repeats: int) -> None:
    from swap_hw.deploy import CONDITIONS

    make = CONDITIONS.get
    test = tiled(*splits.test, PER)
    run = lambda cond: (lambda: cond.evaluate(model, test, seed=0))
    print(f"\n2. deployment conditions — seconds per {PER} test samples")
    print(f"   {'condition':64s} {'s / 1000':>9s}")
    print(f"   {'digital':64s} {median_seconds(run(make('digital')()), repeats):9.3f}")

    from swap_hw.noise.hardware import HardwareConfig, program

    realistic = {"out_noise": 0.06, "inp_res": 1 / 126, "out_res": 1 / 510}
    x, y = test
    devices = [(f"analog {m}", {"noise_model": m}) for m in ("pcm", "reram_wan2022", "reram_cmo", "custom")] + [
        ("analog pcm + IO noise, DAC/ADC steps", {"noise_model": "pcm", **realistic}),
        # chip realism added later: compensation choices, the Hermes PCM model, stuck cells
        ("analog pcm, per_column compensation", {"noise_model": "pcm", "compensation": "per_column"}),
        ("analog pcm, global_exact compensation", {"noise_model": "pcm", "compensation": "global_exact"}),
        ("analog pcm, no compensation", {"noise_model": "pcm", "compensation": "none"}),
        ("analog pcm_hermes", {"noise_model": "pcm_hermes"}),
        ("analog pcm, 1 % cells stuck (both)", {"noise_model": "pcm", "stuck_fraction": 0.01, "stuck_at": "both"}),
    ]
    for label, fields in devices:
        config = HardwareConfig(**fields)
        chip = program(model, config, seed=0)
        prog = median_seconds(lambda: program(model, config, seed=0), repeats)
        step = median_seconds(lambda: (chip.drift(86400.0, seed=1), chip.accuracy_and_loss(x, y, seed=2)), repeats)
        print(f"   {f'{label}: programming, per draw':64s} {prog:9.3f}")
        print(f"   {f'{label}: drift + test pass, per draw per time':64s} {step:9.3f}")
    whole = make("analog")(noise_model="pcm", draws=5)  # the analog scenario's condition
    print(f"   {'analog pcm, 5 draws × 4 drift times (scenarios/analog.yaml)':64s} "
          f"{median_seconds(run(whole), repeats):9.3f}")

    for attack in ("fgsm", "pgd", "apgd"):
        cond = make("adversarial")(attack=attack, eps=[0.1], steps=10, draws=1)
        label = f"adversarial {attack}{'-10' if attack != 'fgsm' else ''}: one eps, one draw"
        print(f"   {label:64s} {median_seconds(run(cond), repeats):9.3f}")
    for attack in ("fgsm", "pgd"):
        cond = make("adversarial")(attack=attack, eps=[0.1], steps=10, draws=1,
                                   hardware={"noise_model": "pcm", **realistic}, drift_time=86400)
        label = f"adversarial {attack}{'-10' if attack != 'fgsm' else ''} on analog pcm: one eps, one draw"
        print(f"   {label:64s} {median_seconds(run(cond), repeats):9.3f}")


def zero_table(model: nn.Module, splits, draws: int) -> None:
    from swap_hw.noise.hardware import HardwareConfig, program
    from swap_hw.layout import Layout
    from swap_hw.models import apply_weights
    from swap_hw.pruners import PRUNERS

    layout = Layout.from_model(model)
    weights = layout.weights_of(model)
    devices = [
        ("pcm", {"noise_model": "pcm"}, 86400.0),
        ("pcm, prog_noise_scale=0", {"noise_model": "pcm", "prog_noise_scale": 0.0}, 86400.0),
        ("reram_wan2022", {"noise_model": "reram_wan2022"}, 86400.0),
        ("reram_cmo", {"noise_model": "reram_cmo"}, 86400.0),
        ("custom (0.2 µS state-indep.)", {"noise_model": "custom"}, 86400.0),
    ]
    print(f"\n3. zero retention — fraction of pruned weights exactly 0 on the chip, mean over {draws} "
          "programming draws (min–max)")
    print(f"   {'sparsity':>8s}  {'device':30s} {'keep_pruned_zero':>16s} {'programmed':>17s} "
          f"{'after 1 day':>17s} {'chip acc 1 day':>14s}")
    x, y = splits.test
    for sparsity in (0.7, 0.9):
        result = PRUNERS.get("magnitude")().prune(weights, None, sparsity)
        pruned = apply_weights(model, result.weights)
        for label, fields, t in devices:
            for keep in (False, True):
                config = HardwareConfig(**fields, keep_pruned_zero=keep)
                programmed, drifted, accs = [], [], []
                for k in range(draws):
                    chip = program(pruned, config, seed=k)
                    programmed.append(chip.pruned_zero_fraction())
                    chip.drift(t, seed=1000 + k)
                    drifted.append(chip.pruned_zero_fraction())
                    accs.append(chip.accuracy_and_loss(x, y, seed=2000 + k)[0])
                cell = lambda v: f"{statistics.mean(v):5.3f} ({min(v):.2f}–{max(v):.2f})"
                print(f"   {sparsity:8.1f}  {label:30s} {str(keep):>16s} {cell(programmed):>17s} "
                      f"{cell(drifted):>17s} {100 * statistics.mean(accs):13.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per measurement (median)")
    parser.add_argument("--draws", type=int, default=5, help="programming draws per zero-retention cell")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default="sources,conditions,zeros,hwa", help="comma-separated tables to print")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    wanted = set(args.only.split(","))

    import platform

    from swap_hw.models import accuracy_and_loss

    model, splits = trained_digits_model()
    acc, _ = accuracy_and_loss(model, *splits.test)
    print(f"digits MLPNet, dense test accuracy {100 * acc:.1f} %, torch {torch.__version__}, "
          f"{args.threads} thread(s), {platform.processor() or platform.machine()}")
    if "sources" in wanted:
        source_table(model, splits, args.repeats)
    if "conditions" in wanted:
        condition_table(model, splits, args.repeats)
    if "zeros" in wanted:
        zero_table(model, splits, args.draws)
    if "hwa" in wanted:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from hwa_cost import hwa_vs_digital

        print("\n== fine-tuning per epoch: HWA (aihwkit torch tiles) vs digital, 80 % pruned (target ≤ 3×) ==")
        hwa_vs_digital(repeats=max(1, min(args.repeats, 3)))


if __name__ == "__main__":
    main()

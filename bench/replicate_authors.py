"""The SWAP paper's claim under the authors' own protocol (scenarios/swap_authors.yaml's settings),
on MLPNet / the real MNIST split in ../shared/data/mnist (8k train, 2k test, as bench/replicate_mnist.py).

    python bench/replicate_authors.py [--repeats 5] [--quick] [--workers 1]

Pruners LR, SWAP (both with the authors' step, mask only, ε = 1 and λ = 0.01 absolute), magnitude
and WoodFisher (at its defaults) under the gradual protocol: 14 stages, the objective anchored at
the dense weights, a fresh calibration draw of n = 1000 per stage, regrowth, one epoch of SGD (lr
1e-3, momentum 0.5, batch 64) after each; MLPNet 784-40-20-10 without biases after two dense
epochs. Sources: clean and the paper's gaussian noise (STD 2 and 4 on PROP 0.25). Sparsities
0.9, 0.95, 0.98. Prints mean ± 95 % CI per cell and the paired difference SWAP − LR with its CI.
Resumable (results/bench/replicate_authors.sqlite). `--quick`: clean only, s = 0.9 and 0.95.

`--resnet20`: the same question at the paper's larger model, where it says SWAP's lead grows with
size and sparsity: ResNet20 (d = 268,048 prunable weights at one input channel) on the same MNIST
images zero-padded to 32×32, trained 3 dense epochs (Adam, lr 3e-3, batch 128) before the protocol,
the authors' ResNet20 fine-tuning (SGD, lr 1e-3, momentum 0.9, weight decay 1e-4, batch 64), LR and
SWAP only, clean and STD 2 on PROP 0.25, s = 0.9 and 0.95, `--repeats` 3. Replicates run in order
(replicate 0 of every cell first), so whatever finishes is a complete paired comparison.

    python bench/replicate_authors.py --resnet20 --repeats 3
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from replicate_mnist import make_npz  # noqa: E402  (the same MNIST split, md5-checked)

AUTHORS_STEP = ("stages: 1, iht_steps: 1, step_rule: always, update_weights: false, backsolve: false, "
                "lambda: 0.01, lambda_units: absolute")


def scenario_text(npz: Path, repeats: int, quick: bool) -> str:
    sources = "[clean]" if quick else "[clean, {name: gaussian, prop: 0.25, std: [2, 4]}]"
    sparsities = "[0.9, 0.95]" if quick else "[0.9, 0.95, 0.98]"
    return f"""
name: replicate_authors
seed: 0
repeats: {repeats}
data: {{name: npz, path: {npz}}}
model: {{arch: mlpnet, options: {{bias: false}}, train: {{epochs: 2, lr: 0.003, batch_size: 64}}}}
calibration: {{n: 1000}}
sources: {sources}
pruners:
  - {{name: swap, {AUTHORS_STEP}, direction: reference, epsilon: 1.0, epsilon_units: absolute}}
  - {{name: lr, {AUTHORS_STEP}}}
  - magnitude
  - woodfisher
sparsities: {sparsities}
protocol: {{name: gradual, stages: 14, epochs: 1, optimizer: sgd, lr: 0.001, momentum: 0.5, batch_size: 64,
           fresh_calibration: true, regrow: true, anchor: dense}}
conditions: [digital]
output: {{db: {ROOT / 'results/bench/replicate_authors.sqlite'}, cache_dir: {ROOT / 'results/cache'}}}
"""


def resnet20_text(npz: Path, repeats: int) -> str:
    return f"""
name: replicate_authors_resnet20
seed: 0
repeats: {repeats}
data: {{name: npz, path: {npz}}}
model: {{arch: resnet20, train: {{epochs: 3, lr: 0.003, batch_size: 128}}}}
calibration: {{n: 1000}}
sources: [clean, {{name: gaussian, prop: 0.25, std: 2}}]
pruners:
  - {{name: swap, {AUTHORS_STEP}, direction: reference, epsilon: 1.0, epsilon_units: absolute}}
  - {{name: lr, {AUTHORS_STEP}}}
sparsities: [0.9, 0.95]
protocol: {{name: gradual, stages: 14, epochs: 1, optimizer: sgd, lr: 0.001, momentum: 0.9, weight_decay: 0.0001,
           batch_size: 64, fresh_calibration: true, regrow: true, anchor: dense}}
conditions: [digital]
output: {{db: {ROOT / 'results/bench/replicate_authors.sqlite'}, cache_dir: {ROOT / 'results/cache'}}}
"""


def padded_npz(source: Path, out: Path) -> Path:
    """The MNIST split with every image zero-padded from 28×28 to 32×32 (ResNet20's input size)."""
    import numpy as np

    if out.is_file():
        return out
    with np.load(source) as z:
        arrays = {k: z[k] for k in z.files}
    for key in ("x_train", "x_test"):
        x = arrays[key].reshape(arrays[key].shape[0], 28, 28)
        arrays[key] = np.pad(x, ((0, 0), (2, 2), (2, 2)))[:, None, :, :]
    np.savez_compressed(out, **arrays)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="clean gradients only, s = 0.9 and 0.95")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--resnet20", action="store_true", help="ResNet20 on MNIST padded to 32×32 (see above)")
    ap.add_argument("--mnist", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    args = ap.parse_args()

    import torch

    from swap_hw.config import parse_scenario_text
    from swap_hw.results.compare import replicate_means
    from swap_hw.results.report import paired_difference, t_interval
    from swap_hw.results.store import Store
    from swap_hw.sweep.executors import make_executor
    from swap_hw.sweep.run import run_scenario

    torch.set_num_threads(1)
    npz = make_npz(Path(args.mnist), ROOT / "results" / "bench" / "mnist_test_split.npz")
    if args.resnet20:
        npz = padded_npz(npz, ROOT / "results" / "bench" / "mnist_test_split_32.npz")
        text = resnet20_text(npz, args.repeats)
    else:
        text = scenario_text(npz, args.repeats, args.quick)
    scenario = parse_scenario_text(text, "replicate_authors.yaml")
    start = time.perf_counter()
    with make_executor("local", args.workers) as executor:
        summary = run_scenario(scenario, executor=executor)
    print(f"{summary.computed} cells computed, {summary.skipped} reused, {time.perf_counter() - start:.0f} s "
          f"({platform.machine()}, {args.workers} worker(s), 1 torch thread each)")
    with Store(summary.db) as store:
        means = replicate_means(store.records(summary.run_id), "accuracy")
    label = {p.name: p.label for p in scenario.pruners}
    sources = [s.label for s in scenario.sources]
    dense = next(iter(means[("-", "dense", "0")].values()))
    print(f"dense {scenario.spec.model.arch}: {100 * sum(dense.values()) / len(dense):.2f} % over {len(dense)} replicates\n")
    for source in sources:
        print(f"gradients: {source}")
        print("| pruner | " + " | ".join(f"s = {s:g}" for s in scenario.spec.sparsities) + " |")
        print("|---|" + "---|" * len(scenario.spec.sparsities))
        for name in [n for n in ("swap", "lr", "magnitude", "woodfisher") if n in label]:
            cells = []
            for s in scenario.spec.sparsities:
                by_seed = next(iter(means.get((source, label[name], f"{s:g}"), {}).values()), {})
                values = list(by_seed.values())
                if not values:
                    cells.append("")
                    continue
                mean, half = t_interval(values)
                cells.append(f"{100 * mean:.2f} ± {100 * half:.2f}" if not math.isnan(half) else f"{100 * mean:.2f}")
            print(f"| {name} | " + " | ".join(cells) + " |")
        diffs = []
        for s in scenario.spec.sparsities:
            lr = next(iter(means.get((source, label["lr"], f"{s:g}"), {}).values()), {})
            sw = next(iter(means.get((source, label["swap"], f"{s:g}"), {}).values()), {})
            mean, half, n = paired_difference(lr, sw)
            diffs.append(f"{100 * mean:+.2f} ± {100 * half:.2f} (n = {n})" if n > 1 else "–")
        print("| SWAP − LR (paired) | " + " | ".join(diffs) + " |\n")


if __name__ == "__main__":
    main()

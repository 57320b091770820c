"""Your model and your data through the Python API: which pruner keeps the most accuracy of a small
residual CNN when the pruning gradients come from simulated PCM hardware instead of a clean run?

    python examples/custom_model.py            # about a minute on 2 cores
    python examples/custom_model.py --quick    # a smaller grid (what the test suite runs)

The model (examples/my_models.py) and the DataLoaders are ordinary PyTorch; swap_hw gets them as
they are. The same study as a scenario file: examples/custom_model.yaml.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))  # my_models.py sits beside this file

import swap_hw as sh  # noqa: E402
from my_models import ResidualCNN  # noqa: E402


def digits_loaders(batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    """scikit-learn's 8×8 digits as 1×8×8 images in [0, 1]: 1400 to train on, 397 to test."""
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    return (DataLoader(TensorDataset(x[train], y[train]), batch_size=batch_size, shuffle=True),
            DataLoader(TensorDataset(x[test], y[test]), batch_size=256))


def train(model: torch.nn.Module, loader: DataLoader, epochs: int) -> torch.nn.Module:
    """An ordinary training loop (yours would do here)."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def main(argv: list[str] | None = None) -> sh.Results:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 replicates, one sparsity, fewer epochs")
    ap.add_argument("--db", default=None, help="a SQLite file to keep the results in (default: temporary)")
    args = ap.parse_args(argv)

    train_loader, test_loader = digits_loaders()
    torch.manual_seed(0)
    net = train(ResidualCNN(channels=8), train_loader, epochs=10 if args.quick else 15)

    study = sh.Study(
        model=net, train=train_loader, test=test_loader,
        sources=["clean", sh.sources.Analog(noise_model="pcm", drift_time="1d")],
        pruners=["magnitude", "lr", "swap"],
        sparsities=[0.4] if args.quick else [0.3, 0.5],
        conditions=["digital"],
        repeats=2 if args.quick else 3, calibration=128 if args.quick else 256, seed=0, db=args.db,
    )
    results = study.run()
    results.table()
    # one cell's pruned model, masks applied, ready to use or save
    pruned = results.pruned_model("lr", 0.4 if args.quick else 0.5, seed=0, source="analog")
    zeros = sum(int((p == 0).sum()) for n, p in pruned.named_parameters() if n.endswith("weight"))
    print(f"lr's pruned model (seed 0, analog gradients): {zeros} weights are exactly zero")
    return results


if __name__ == "__main__":
    main()

"""Shared fixtures: small scenarios on the embedded digits data, written to temporary folders."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

# One thread: the models in tests are tiny, and thread hand-offs cost more than they save.
torch.set_num_threads(1)


@pytest.fixture
def write_scenario(tmp_path: Path):
    """Write a scenario YAML into tmp_path (with output paths inside tmp_path) and return its path."""

    def write(body: str, name: str = "scenario.yaml") -> Path:
        text = textwrap.dedent(body)
        if "output:" not in text:
            text += f"\noutput: {{db: {tmp_path / 'results.sqlite'}, cache_dir: {tmp_path / 'cache'}}}\n"
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="session")
def digits_model():
    """A small MLPNet trained on digits (about 90 % test accuracy), shared by the whole session."""
    from swap_hw.data import load_digits_splits
    from swap_hw.models import build_model, train_model

    splits = load_digits_splits(0.2, 0)
    model = build_model("mlpnet", splits.input_shape, splits.n_classes, seed=0)
    train_model(model, splits.x_train, splits.y_train, epochs=10, lr=3e-3, batch_size=64, seed=1)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, splits


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A database holding one finished TINY run (6 cells): (scenario path, database path, run id)."""
    import sqlite3

    from snippets import tiny_with_output
    from swap_hw.cli import main

    root = tmp_path_factory.mktemp("finished")
    scenario = root / "tiny.yaml"
    scenario.write_text(tiny_with_output(root / "results.sqlite", root / "cache"))
    assert main(["run", str(scenario), "--quiet"]) == 0
    with sqlite3.connect(root / "results.sqlite") as conn:
        run_id = conn.execute("SELECT run_id FROM runs").fetchone()[0]
    return scenario, root / "results.sqlite", run_id

"""Matrix-free gradients: the same Xv, Xᵀu, rows, noise and pruning result as the dense X."""

from __future__ import annotations

import pytest
import torch

from swap_hw.errors import SwapHwError
from swap_hw.gradients import GRADIENT_SOURCES, GradientSet, GradientSource
from swap_hw.gradients.chain import ChainedSource
from swap_hw.gradients.matrix_free import (
    MatrixFreeError,
    MatrixFreeGradientSet,
    PerSampleGradientOperator,
    SparseRowNoise,
    fits_budget,
    mask_gradient_columns,
)
from swap_hw.layout import Layout
from swap_hw.models import build_model, train_model
from swap_hw.pruners import PRUNERS
from swap_hw.models.zoo import prunable_names

MODELS = {"mlpnet": {}, "cnn": {"channels": [4, 8], "hidden": 16}, "resnet20": {"width": 0.25},
          "mobilenetv1": {"width": 0.125}}


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    return float((a - b).norm()) <= rtol * float(b.norm()) + 1e-7


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(20, 1, 8, 8, generator=gen), torch.randint(0, 10, (20,), generator=gen)


def trained(arch: str, batch) -> torch.nn.Module:
    """A model after a few training steps, so BatchNorm running statistics are not the identity."""
    x, y = batch
    model = build_model(arch, (1, 8, 8), 10, seed=0, **MODELS[arch])
    train_model(model, x, y, epochs=2, lr=1e-2, batch_size=10, seed=0)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def both(source: GradientSource, model, batch, seed: int = 5) -> tuple[GradientSet, MatrixFreeGradientSet]:
    layout = Layout.from_model(model, include=prunable_names(model))
    dense = source.collect(model, batch, seed, layout)
    free = source.collect(model, batch, seed, layout, memory_budget_mb=1e-6)
    assert type(dense) is GradientSet and isinstance(free, MatrixFreeGradientSet)
    return dense, free


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_products_and_rows_match_the_dense_matrix(arch, batch):
    model = trained(arch, batch)
    dense, free = both(GRADIENT_SOURCES.get("clean")(), model, batch)
    gen = torch.Generator().manual_seed(1)
    v, V = torch.randn(dense.d, generator=gen), torch.randn(dense.d, 3, generator=gen)
    u, U = torch.randn(dense.n, generator=gen), torch.randn(dense.n, 2, generator=gen)
    assert (free.n, free.d) == (dense.n, dense.d)
    assert close(free.xv(v), dense.X @ v) and close(free.xv(V), dense.X @ V)
    assert close(free.xtu(u), dense.X.T @ u) and close(free.xtu(U), dense.X.T @ U)
    assert close(free.rows(3, 11), dense.X[3:11])
    blocks = list(free.iter_rows(chunk=7))
    assert [(s, e) for s, e, _ in blocks] == [(0, 7), (7, 14), (14, 20)]
    assert close(torch.cat([b for _, _, b in blocks]), dense.X)
    assert torch.equal(free.w_bar, dense.w_bar)
    assert free.provenance["gradient_mode"] == "matrix_free"


def test_small_chunks_give_the_same_products(batch):
    model = trained("resnet20", batch)
    layout = Layout.from_model(model)
    one = PerSampleGradientOperator(model, *batch, layout, chunk_size=1)
    many = PerSampleGradientOperator(model, *batch, layout, chunk_size=64)
    v = torch.randn(layout.d, generator=torch.Generator().manual_seed(2))
    u = torch.randn(20, generator=torch.Generator().manual_seed(3))
    assert close(one.matvec(v), many.matvec(v)) and close(one.rmatvec(u), many.rmatvec(u))
    assert model.training is False and not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("arch", ["resnet20", "mobilenetv1"])
def test_products_agree_with_one_batched_backward_of_the_summed_loss(arch, batch):
    """The floor bench/prune_scale.py --products-vs-floor times computes the same quantity:
    Xᵀ1 = ∇_w Σ_i ℓ_i from one batched forward + backward, and Σ_i (Xv)_i = ⟨∇_w Σ_i ℓ_i, v⟩."""
    model = trained(arch, batch)
    x, y = batch
    layout = Layout.from_model(model, include=prunable_names(model))
    op = PerSampleGradientOperator(model, x, y, layout, chunk_size=7)  # 3 chunks, the last short
    pruned = [dict(model.named_parameters())[s.name] for s in layout.slices]
    for p in pruned:
        p.requires_grad_(True)
    try:
        loss = torch.nn.functional.cross_entropy(model(x), y, reduction="sum")
        g = layout.flatten({s.name: t for s, t in zip(layout.slices, torch.autograd.grad(loss, pruned))})
    finally:
        for p in pruned:
            p.requires_grad_(False)
    assert float(g.norm()) > 0
    assert close(op.rmatvec(torch.ones(x.shape[0])), g)
    v = torch.randn(layout.d, generator=torch.Generator().manual_seed(10))
    assert float(op.matvec(v).double().sum()) == pytest.approx(float(g.double() @ v.double()), rel=1e-4)


def test_bench_products_vs_floor_runs_and_checks():
    """bench/prune_scale.py's products-vs-floor child on ResNet20 at n = 6: the ratios are the
    products' times over the floor, and its two consistency checks hold."""
    import argparse
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "prune_scale.py"
    spec = importlib.util.spec_from_file_location("prune_scale_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        row = bench.products_child(argparse.Namespace(case="resnet20", n=6, threads=1, repeats=1))
    finally:
        torch.set_num_threads(threads)
    assert "error" not in row and (row["n"], row["d"]) == (6, 268_336)
    assert row["floor_seconds"] == min(row["floor_batch_seconds"], row["floor_chunked_seconds"]) > 0
    assert row["xv_ratio"] == pytest.approx(row["xv_seconds"] / row["floor_seconds"])
    assert row["xtu_ratio"] == pytest.approx(row["xtu_seconds"] / row["floor_seconds"])
    assert row["xv_check"] < 1e-4 and row["adjoint_check"] < 1e-4


def test_dense_matrix_is_refused_with_a_clear_error(batch):
    model = trained("mlpnet", batch)
    _, free = both(GRADIENT_SOURCES.get("clean")(), model, batch)
    for get in (lambda: free.dense(), lambda: free.X):
        with pytest.raises(MatrixFreeError, match="matrix-free.*memory_budget_mb"):
            get()
    assert isinstance(MatrixFreeError("x"), SwapHwError)


def test_budget_decides_the_mode():
    assert fits_budget(1000, 262_144, 1000.0)  # exactly 1000 MiB
    assert not fits_budget(1000, 262_145, 1000.0)
    assert fits_budget(10**6, 10**6, None)


@pytest.mark.parametrize("arch", ["mlpnet", "cnn"])
def test_gaussian_noise_is_identical_in_both_modes(arch, batch):
    model = trained(arch, batch)
    source = GRADIENT_SOURCES.get("gaussian")(std=2.0, prop=0.25)
    dense, free = both(source, model, batch)
    clean, _ = both(GRADIENT_SOURCES.get("clean")(), model, batch)
    assert not torch.equal(dense.X, clean.X)  # the noise is there
    assert close(free.rows(0, 20), dense.X, rtol=1e-5)
    v = torch.randn(dense.d, generator=torch.Generator().manual_seed(4))
    u = torch.randn(dense.n, generator=torch.Generator().manual_seed(5))
    assert close(free.xv(v), dense.X @ v) and close(free.xtu(u), dense.X.T @ u)
    # the scale of a relative ridge, mean(X²), streamed from rows in the matrix-free mode
    assert free.mean_square() == pytest.approx(float(dense.X.double().pow(2).mean()), rel=1e-5)
    assert dense.mean_square(block_mb=7 * dense.d * 4 / 2**20) == pytest.approx(float(dense.X.double().pow(2).mean()), rel=1e-12)
    for key in ("noisy_fraction", "noisy_per_row"):
        assert free.provenance[key] == dense.provenance[key]
    assert free.provenance["noise_to_signal"] == pytest.approx(dense.provenance["noise_to_signal"], rel=1e-4)
    # without the cache every product redraws the noise rows from their seeds: same numbers
    redraw = SparseRowNoise(free.operator.base, free.operator.draw, free.operator.per_row, cache_mb=0, chunk_rows=3)
    assert redraw._cache is None and free.operator._cache is not None
    assert torch.equal(redraw.matvec(v), redraw.matvec(v))
    assert close(redraw.matvec(v), free.xv(v), rtol=1e-6) and close(redraw.rmatvec(u), free.xtu(u), rtol=1e-6)


def test_a_chain_with_label_noise_and_gaussian_matches(batch):
    model = trained("cnn", batch)
    chain = ChainedSource([GRADIENT_SOURCES.get("label_noise")(rate=0.3),
                           GRADIENT_SOURCES.get("gaussian")(std=1.0, prop=0.5)])
    dense, free = both(chain, model, batch)
    v = torch.randn(dense.d, generator=torch.Generator().manual_seed(6))
    assert close(free.xv(v), dense.X @ v) and close(free.rows(0, 20), dense.X, rtol=1e-5)


def test_a_dense_only_perturbation_refuses_matrix_free_mode(batch):
    class Scaled(GradientSource):
        name = "scaled"

        def perturb(self, X, seed, provenance):
            return 2 * X

    model = trained("mlpnet", batch)
    with pytest.raises(SwapHwError, match="no matrix-free form"):
        Scaled().collect(model, batch, 0, memory_budget_mb=1e-6)
    assert type(Scaled().collect(model, batch, 0)) is GradientSet


def test_masked_columns_agree(batch):
    model = trained("cnn", batch)
    dense, free = both(GRADIENT_SOURCES.get("clean")(), model, batch)
    keep = torch.rand(dense.d, generator=torch.Generator().manual_seed(7)) > 0.5
    md, mf = mask_gradient_columns(dense, keep), mask_gradient_columns(free, keep)
    assert torch.equal(md.X[:, ~keep], torch.zeros(dense.n, int((~keep).sum())))
    assert torch.equal(md.X[:, keep], dense.X[:, keep]) and not torch.equal(md.X, dense.X)
    v = torch.randn(dense.d, generator=torch.Generator().manual_seed(8))
    u = torch.randn(dense.n, generator=torch.Generator().manual_seed(9))
    assert close(mf.xv(v), md.X @ v) and close(mf.xtu(u), md.X.T @ u) and close(mf.rows(0, 5), md.X[:5])
    assert mask_gradient_columns(dense, torch.ones(dense.d, dtype=torch.bool)) is dense


def iht_prune(grads: GradientSet, k: int, steps: int = 20, lam: float = 0.01) -> torch.Tensor:
    """A small LR-IHT using only grads.xv / grads.xtu (so it runs on either kind of set)."""
    from swap_hw.pruners import hard_threshold

    w_bar, n = grads.w_bar, grads.n
    y = grads.xv(w_bar)
    w = hard_threshold(w_bar, k)
    for _ in range(steps):
        g = grads.xtu(grads.xv(w) - y) + n * lam * (w - w_bar)
        tau = float(g @ g) / (float(grads.xv(g).pow(2).sum()) + n * lam * float(g @ g))
        w = hard_threshold(w - tau * g, k)
    return w


def test_pruning_from_products_gives_the_same_result(batch):
    model = trained("cnn", batch)
    dense, free = both(GRADIENT_SOURCES.get("gaussian")(std=1.0, prop=0.25), model, batch)
    k = dense.d // 5
    wd, wf = iht_prune(dense, k), iht_prune(free, k)
    assert torch.equal(wd != 0, wf != 0)
    assert close(wf, wd, rtol=1e-4)
    weights = dense.layout.unflatten(dense.w_bar)
    a = PRUNERS.get("magnitude")().prune(weights, dense, 0.8)
    b = PRUNERS.get("magnitude")().prune(weights, free, 0.8)
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)


@pytest.mark.parametrize("name,rtol", [("lr", 5e-3), ("swap", 2e-2)])
def test_regression_pruners_give_the_same_result(name, rtol, digits_model):
    """Same masks and objective; the same weights to the tolerance the re-fit's conditioning allows.
    With n = 64 ≪ d and a ridge relative to mean(diag F) the CG system is ill-conditioned, so
    product rounding (~1e-7) may move lr's re-fit weights by up to ~1e-3 relative. swap's Sinkhorn stops on
    a tolerance, so its barycentric targets and weights can shift by up to ~1e-2, same support."""
    if name not in PRUNERS:
        pytest.skip(f"pruner {name!r} is not registered yet")
    model, splits = digits_model
    dense, free = both(GRADIENT_SOURCES.get("clean")(), model, splits.calibration(64, 0))
    weights = dense.layout.unflatten(dense.w_bar)
    for sparsity in (0.5, 0.8):
        a = PRUNERS.get(name)().prune(weights, dense, sparsity)
        b = PRUNERS.get(name)().prune(weights, free, sparsity)
        assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
        assert close(dense.layout.flatten(b.weights), dense.layout.flatten(a.weights), rtol=rtol)
        assert b.log["objective"] == pytest.approx(a.log["objective"], rel=rtol)

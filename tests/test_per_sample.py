"""The per-sample engine: every zoo architecture gives torch.func's gradients through whichever path
runs (linear, batched convolutions, torch.func), chunks are sized in bytes and recorded, and a model
whose examples interact in the forward falls back to torch.func."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from swap_hw.gradients import GRADIENT_SOURCES
from swap_hw.gradients.per_sample import _torch_func_per_sample_gradients, per_sample_gradients
from swap_hw.layout import Layout
from swap_hw.models import build_model, prunable_names

CASES = [
    ("mlpnet", {}, (1, 8, 8), "linear"),
    ("cnn", {}, (1, 8, 8), "batched"),
    ("mobilenetv1", {"variant": "cifar", "width": 0.25}, (3, 32, 32), "torch.func"),  # unfolded inputs 2.0·d
    ("resnet20", {}, (3, 32, 32), "torch.func"),
]


@pytest.mark.parametrize("arch,options,shape,path", CASES)
def test_every_zoo_architecture_matches_torch_func(arch, options, shape, path):
    model = build_model(arch, shape, 10, seed=0, **options).eval()
    layout = Layout.from_model(model, include=prunable_names(model))
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(13, *shape, generator=gen), torch.randint(0, 10, (13,), generator=gen)
    info: dict = {}
    got = per_sample_gradients(model, x, y, layout, chunk_size=5, info=info)  # several chunks
    assert info == {"per_sample_path": path, "chunk_rows": 5}
    reference = _torch_func_per_sample_gradients(model, x, y, layout, 13)
    assert torch.allclose(got, reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))
    sized: dict = {}
    per_sample_gradients(model, x[:3], y[:3], layout, chunk_mb=1.0, info=sized)
    assert sized["per_sample_path"] == path and sized["chunk_rows"] >= 1  # chunk rows derived from bytes


class GroupedResidual(nn.Module):
    """Grouped and depthwise convolutions, eval-mode BatchNorm and a residual add: the batched path."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, stride=2, groups=8)
        self.head = nn.Linear(8 * 3 * 3, 64)  # wide enough that the unfolded inputs stay under 2·d

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.bn(self.grouped(h)))
        return self.head(self.depthwise(h).flatten(1))


def test_grouped_and_depthwise_convolutions_with_a_residual_take_the_batched_path():
    model = GroupedResidual().eval()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    layout = Layout.from_model(model)
    x, y = torch.rand(9, 2, 5, 5), torch.randint(0, 10, (9,))
    info: dict = {}
    got = per_sample_gradients(model, x, y, layout, chunk_size=4, info=info)
    assert info["per_sample_path"] == "batched"
    reference = _torch_func_per_sample_gradients(model, x, y, layout, 9)
    assert torch.allclose(got, reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))


class Interacting(nn.Module):
    """A model whose output for one example depends on the others (batch statistics)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.head = nn.Linear(2 * 36, 10)

    def forward(self, x):
        h = self.conv(x)
        return self.head((h - h.mean(dim=0, keepdim=True)).flatten(1))


def test_examples_that_interact_fall_back_to_torch_func():
    model = Interacting().eval()
    layout = Layout.from_model(model)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    info: dict = {}
    got = per_sample_gradients(model, x, y, layout, info=info)
    assert info["per_sample_path"] == "torch.func"
    assert torch.equal(got, _torch_func_per_sample_gradients(model, x, y, layout, info["chunk_rows"]))


def test_the_path_and_chunk_are_recorded_with_the_gradients(digits_model):
    model, splits = digits_model
    grads = GRADIENT_SOURCES.get("clean")().collect(model, splits.calibration(32, 0), seed=0)
    assert grads.provenance["per_sample_path"] == "linear" and grads.provenance["chunk_rows"] >= 32

"""The model zoo: shapes, parameter counts, default prunable layers, options, end-to-end pruning."""

from __future__ import annotations

import pytest
import torch

from swap_hw.errors import SwapHwError
from swap_hw.gradients import GRADIENT_SOURCES
from swap_hw.layout import Layout
from swap_hw.models import ARCHITECTURES, apply_weights, build_model
from swap_hw.pruners import PRUNERS, kept_count
from swap_hw.models.zoo import all_prunable, prunable_count, prunable_names

TINY = {"resnet20": {"width": 0.25}, "mobilenetv1": {"width": 0.125}, "cnn": {"channels": [4, 8], "hidden": 16},
        "mlpnet": {}}


def test_zoo_is_registered():
    assert {"resnet20", "mobilenetv1", "cnn", "mlpnet"} <= set(ARCHITECTURES)


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_every_model_maps_any_image_size_to_logits(arch, shape):
    model = build_model(arch, shape, 10, seed=0, **TINY[arch]).eval()
    out = model(torch.rand(3, *shape))
    assert out.shape == (3, 10) and torch.isfinite(out).all()


def test_paper_dimensions():
    """d as CHITA/SWAP report it: ResNet20 ≈ 2.7e5, MobileNetV1 ≈ 4.2e6 (first conv and fc included)."""
    resnet = build_model("resnet20", (3, 32, 32), 10, seed=0)
    assert prunable_count(resnet) == 268_336
    assert sum(p.numel() for p in resnet.parameters()) == 269_722  # the CIFAR ResNet20 (option A)
    names = prunable_names(resnet)
    assert names[0] == "conv1.weight" and names[-1] == "fc.weight" and len(names) == 20
    mobile = build_model("mobilenetv1", (3, 224, 224), 1000, seed=0, variant="imagenet")
    assert prunable_count(mobile) == 4_209_088
    assert sum(p.numel() for p in mobile.parameters()) == 4_231_976  # the standard MobileNetV1 1.0
    assert len(prunable_names(mobile)) == 28  # stem + 13 × (depthwise, pointwise) + classifier


def test_mobilenet_variants_differ_only_in_stem_stride():
    cifar = build_model("mobilenetv1", (3, 32, 32), 10, seed=0, width=0.25)
    imagenet = build_model("mobilenetv1", (3, 32, 32), 10, seed=0, width=0.25, variant="imagenet")
    assert [p.shape for p in cifar.parameters()] == [p.shape for p in imagenet.parameters()]
    assert cifar.features[0][0].stride == (1, 1) and imagenet.features[0][0].stride == (2, 2)
    # the ImageNet stem halves the resolution, so the last feature map is 4× smaller in area
    x = torch.rand(1, 3, 64, 64)
    assert cifar.features.eval()(x).shape[-1] == 2 * imagenet.features.eval()(x).shape[-1]


def test_width_multiplier_scales_channels():
    narrow = build_model("resnet20", (3, 32, 32), 10, seed=0, width=0.5)
    assert narrow.conv1.out_channels == 8 and narrow.fc.in_features == 32
    wide = build_model("mobilenetv1", (3, 32, 32), 10, seed=0, width=0.5)
    assert wide.fc.in_features == 512


def test_prune_layers_choices():
    model = build_model("resnet20", (3, 32, 32), 10, seed=0, width=0.25, shortcut="B")
    everything = all_prunable(model)
    default = prunable_names(model, "default")
    shortcuts = [n for n in everything if ".shortcut." in n]
    assert len(shortcuts) == 2  # the two stride-2 stage transitions
    assert default == [n for n in everything if n not in shortcuts]
    assert prunable_names(model, "all") == everything
    chosen = prunable_names(model, ["fc.weight", "layer3.*"])
    assert chosen[-1] == "fc.weight" and all(n.startswith("layer3.") or n == "fc.weight" for n in chosen)
    assert chosen == [n for n in everything if n in chosen]  # module order, no duplicates
    with pytest.raises(SwapHwError, match="matches no prunable weight"):
        prunable_names(model, ["layer9.*"])
    with pytest.raises(SwapHwError, match="empty list"):
        prunable_names(model, [])
    # a model without a default hook prunes everything
    mlp = build_model("mlpnet", (1, 8, 8), 10, seed=0)
    assert prunable_names(mlp) == all_prunable(mlp) == ["layers.1.weight", "layers.3.weight", "layers.5.weight"]


@pytest.mark.parametrize("arch,options,message", [
    ("resnet20", {"depth": 32}, "unknown option"),
    ("resnet20", {"width": 0}, "greater than 0"),
    ("mobilenetv1", {"variant": "tiny"}, "variant"),
    ("cnn", {"channels": [4, 0]}, "channels"),
])
def test_bad_options_name_the_option(arch, options, message):
    with pytest.raises(SwapHwError, match=message):
        build_model(arch, (1, 8, 8), 10, seed=0, **options)


def test_building_is_seeded():
    a = build_model("resnet20", (1, 8, 8), 10, seed=3, width=0.25)
    b = build_model("resnet20", (1, 8, 8), 10, seed=3, width=0.25)
    c = build_model("resnet20", (1, 8, 8), 10, seed=4, width=0.25)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.conv1.weight, c.conv1.weight)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_every_model_prunes_end_to_end(arch):
    """Freshly initialised (train.epochs: 0) → per-sample gradients → every one-shot pruner → model."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(12, 1, 8, 8, generator=gen), torch.randint(0, 10, (12,), generator=gen)
    model = build_model(arch, (1, 8, 8), 10, seed=0, **TINY[arch]).eval()
    layout = Layout.from_model(model, include=prunable_names(model))
    grads = GRADIENT_SOURCES.get("clean")().collect(model, (x, y), seed=0, layout=layout)
    assert grads.X.shape == (12, layout.d) and torch.isfinite(grads.X).all() and grads.X.abs().sum() > 0
    weights = layout.weights_of(model)
    one_shot = [n for n in PRUNERS.names() if not PRUNERS.get(n).needs_training]
    assert "magnitude" in one_shot
    for name in one_shot:
        result = PRUNERS.get(name)().prune(weights, grads, 0.7)
        kept = sum(int(m.sum()) for m in result.masks.values())
        assert kept == kept_count(layout.d, 0.7), name
        pruned = apply_weights(model, result.weights)
        w = layout.flatten(dict(pruned.named_parameters()))
        assert int((w != 0).sum()) <= kept
        assert torch.isfinite(pruned(x)).all()
        assert torch.equal(layout.flatten(weights), layout.flatten(layout.weights_of(model)))  # untouched


def test_runner_prunes_the_initialised_model_of_a_zoo_architecture(write_scenario):
    from swap_hw.config import load_scenario
    from swap_hw.sweep.run import prepare, run_scenario

    path = write_scenario("""
        repeats: 1
        data: {limit_train: 200, limit_test: 100}
        model: {arch: cnn, options: {channels: [4, 8], hidden: 16}, train: {epochs: 0},
                prune_layers: ["features.*"]}
        calibration: {n: 16}
        pruners: [magnitude]
        sparsities: [0.5]
    """)
    scenario = load_scenario(path)
    prep = prepare(scenario)
    assert prep.layout.names == ["features.0.weight", "features.3.weight"]
    fresh = build_model("cnn", prep.splits.input_shape, prep.splits.n_classes, prep.seeds.init,
                        channels=[4, 8], hidden=16)
    assert all(torch.equal(p, q) for p, q in zip(fresh.parameters(), prep.dense.parameters()))
    summary = run_scenario(scenario)
    assert summary.computed == summary.planned == 2


@pytest.mark.parametrize("options,message", [
    ("{width: -1}", "options.width: Input should be greater than 0"),
    ("{depth: 56}", "options.depth: unknown option"),
])
def test_architecture_options_are_checked_when_the_scenario_loads(write_scenario, options, message):
    from swap_hw.config import load_scenario
    from swap_hw.errors import ConfigError

    path = write_scenario(f"model: {{arch: resnet20, options: {options}}}\npruners: [magnitude]\nsparsities: [0.5]\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_scenario(path)
    assert info.value.field == "model"

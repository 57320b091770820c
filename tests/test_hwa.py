"""Hardware-aware (HWA) fine-tuning (swap_hw/noise/hwa.py) and the gradual protocol's `hwa` setting:
masks held at exactly zero, seeded noise, noise that is really injected (and none when σ = 0), the
log saying which fine-tuner ran, the HWA dense reference, a scenario run end to end, and one-line
errors for bad settings."""

from __future__ import annotations

import copy
import sqlite3
from types import SimpleNamespace

import pytest
import torch

from swap_hw.config import load_scenario, parse_scenario_text
from swap_hw.errors import ConfigError
from swap_hw.gradients import GRADIENT_SOURCES
from swap_hw.layout import Layout
from swap_hw.models import apply_weights, build_model, train_model
from swap_hw.noise.hwa import HWAConfig, hwa_train_model
from swap_hw.protocols import PROTOCOLS, PruneJob, prune_staged
from swap_hw.pruners import PRUNERS

OPTS = dict(epochs=1, lr=1e-3, batch_size=64, seed=5)


@pytest.fixture(scope="module")
def pruned(digits_model):
    """The digits MLPNet magnitude-pruned to 80 %: (model, masks, splits)."""
    model, splits = digits_model
    layout = Layout.from_model(model)
    result = PRUNERS.get("magnitude")().prune(layout.weights_of(model), None, 0.8)
    return apply_weights(model, result.weights), result.masks, splits


def digital(model, splits, masks, **kw):
    out = copy.deepcopy(model)
    for p in out.parameters():
        p.requires_grad_(True)
    return train_model(out, splits.x_train, splits.y_train, masks=masks, **{**OPTS, **kw})


def hwa(model, splits, masks, config, **kw):
    return hwa_train_model(model, splits.x_train, splits.y_train, config=config, masks=masks, **{**OPTS, **kw})


def same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def pruned_are_zero(model, masks) -> bool:
    params = dict(model.named_parameters())
    return all(bool(torch.all(params[n][~m] == 0)) for n, m in masks.items())


def test_pruned_weights_are_zero_after_every_step_and_in_the_result(pruned):
    """A forward pre-hook on every analog tile sees its weights before each minibatch (i.e. after
    the previous optimiser step): the pruned ones are exactly 0 every time."""
    from aihwkit.simulator.tiles.inference_torch import TorchInferenceTile

    model, masks, splits = pruned
    by_shape = {tuple(m.shape): m for m in masks.values()}  # MLPNet's three layers differ in shape
    assert len(by_shape) == len(masks)
    seen = []

    def check(module, args):
        if isinstance(module, TorchInferenceTile):
            weight = module.tile.weight.detach()
            seen.append(int((weight[~by_shape[tuple(weight.shape)]] != 0).sum()))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(check)
    try:
        tuned = hwa(model, splits, masks, HWAConfig(std_dev=0.1), epochs=2)
    finally:
        handle.remove()
    batches = -(-splits.x_train.shape[0] // OPTS["batch_size"])
    assert len(seen) == 2 * batches * len(masks) and set(seen) == {0}
    assert pruned_are_zero(tuned, masks)
    # the survivors and the biases did train, and the caller's model is untouched
    assert not same(tuned, model)
    assert pruned_are_zero(model, masks) and same(model, apply_weights(model, {}))
    # without masks the same training revives pruned weights (so the zeros above are enforced)
    free = hwa(model, splits, None, HWAConfig(std_dev=0.1), epochs=2)
    assert not pruned_are_zero(free, masks)


def test_split_tiles_keep_the_masks_and_match_digital_without_noise(pruned):
    """tile_size 16 splits every layer into several tiles, each with its slice of the mask; without
    noise the result is digital fine-tuning's up to float rounding (measured: 6e-8; the split
    layer sums its tiles' partial products in another order), so every slice sat in its place."""
    model, masks, splits = pruned
    tuned = hwa(model, splits, masks, HWAConfig(tile_size=16))
    assert pruned_are_zero(tuned, masks)
    exact = hwa(model, splits, masks, HWAConfig(tile_size=16, std_dev=0.0))
    assert pruned_are_zero(exact, masks)
    for key, value in digital(model, splits, masks).state_dict().items():
        assert torch.allclose(exact.state_dict()[key], value, rtol=0, atol=1e-6), key


def test_hwa_is_seeded(pruned):
    model, masks, splits = pruned
    config = HWAConfig(std_dev=0.1, out_noise=0.06)
    state = torch.random.get_rng_state()
    a = hwa(model, splits, masks, config)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's global RNG is left alone
    b = hwa(model, splits, masks, config)
    c = hwa(model, splits, masks, config, seed=6)
    assert same(a, b)
    assert not same(a, c)


def test_noise_is_injected_and_none_without_it(pruned):
    """Measured: σ = 0 (or noise_type none) with an ideal periphery gives digital fine-tuning's
    weights bit for bit (aihwkit's ideal forward is the same matmul); σ > 0, mult_normal noise and
    IO noise each give other weights than digital fine-tuning with the same seed."""
    model, masks, splits = pruned
    reference = digital(model, splits, masks)
    assert same(hwa(model, splits, masks, HWAConfig(std_dev=0.0)), reference)
    assert same(hwa(model, splits, masks, HWAConfig(noise_type="none")), reference)
    for config in (HWAConfig(), HWAConfig(noise_type="mult_normal"), HWAConfig(noise_type="none", out_noise=0.06)):
        tuned = hwa(model, splits, masks, config)
        assert not same(tuned, reference), config
        assert pruned_are_zero(tuned, masks)
    # SGD with momentum, weight decay: the same optimiser as the digital fine-tuner
    sgd = dict(optimizer="sgd", momentum=0.5, weight_decay=1e-4)
    assert same(hwa(model, splits, masks, HWAConfig(std_dev=0.0), **sgd), digital(model, splits, masks, **sgd))


def test_convolutions_are_mapped_and_read_back(digits_model):
    """A small CNN (conv kernels flattened onto tiles): without noise within float tolerance of
    digital fine-tuning, pruned conv weights exactly 0."""
    _, splits = digits_model
    model = build_model("cnn", splits.input_shape, splits.n_classes, seed=0, channels=(4,), hidden=16)
    layout = Layout.from_model(model)
    masks = PRUNERS.get("magnitude")().prune(layout.weights_of(model), None, 0.5).masks
    model = apply_weights(model, {n: w * masks[n] for n, w in layout.weights_of(model).items()})
    exact = hwa(model, splits, masks, HWAConfig(std_dev=0.0))
    ref = digital(model, splits, masks)
    for key, value in ref.state_dict().items():
        assert torch.allclose(exact.state_dict()[key], value, atol=1e-5), key
    noisy = hwa(model, splits, masks, HWAConfig(std_dev=0.1))
    assert pruned_are_zero(noisy, masks) and not same(noisy, ref)


def test_clipping_bounds_the_weights(pruned):
    """clip_sigma = 2: after every step each tile is clipped to ±2·std(W_tile), so the returned
    weights' max|w| / std(w) stays near 2 (the clip shrinks std a little); unclipped it is larger."""
    model, _, splits = pruned

    def ratios(tuned):
        return [float(w.abs().max() / w.std()) for w in Layout.from_model(tuned).weights_of(tuned).values()]

    clipped = ratios(hwa(model, splits, None, HWAConfig(clip_sigma=2.0)))
    free = ratios(hwa(model, splits, None, HWAConfig()))
    assert all(r <= 2.0 * 1.15 for r in clipped), clipped
    assert all(r > 2.0 * 1.15 for r in free), free


FINETUNE = dict(stages=2, epochs=1, lr=1e-3, batch_size=64, weight_decay=0.0)


def test_the_protocol_log_says_which_finetuner_ran(digits_model):
    model, splits = digits_model
    gradual = PROTOCOLS.get("gradual")
    args = (PRUNERS.get("magnitude")(), model, GRADIENT_SOURCES.get("clean")(), splits.calibration(64, 0), 0.8, 2)
    train = (splits.x_train, splits.y_train)
    _, plain = prune_staged(*args, seed=7, finetune=gradual.Params(**FINETUNE), train_split=train)
    log = plain.log["gradual"]["finetune"]
    assert log["finetuner"] == "digital" and "hwa" not in log and log["optimizer"] == "adam"
    settings = gradual.Params(**FINETUNE, hwa={"std_dev": 0.05, "clip_sigma": 3})
    tuned, result = prune_staged(*args, seed=7, finetune=settings, train_split=train)
    log = result.log["gradual"]["finetune"]
    assert log["finetuner"] == "hwa" and log["hwa"]["std_dev"] == 0.05 and log["hwa"]["clip_sigma"] == 3
    assert pruned_are_zero(tuned, result.masks)
    assert not same(tuned, apply_weights(model, plain.weights))


def test_the_hwa_dense_reference_is_magnitude_at_sparsity_zero(digits_model):
    model, splits = digits_model
    gradual = PROTOCOLS.get("gradual")
    train = (splits.x_train, splits.y_train)
    job = PruneJob(model=model, layout=Layout.from_model(model), seed=7, train_split=train)
    assert gradual(gradual.Params(**FINETUNE)).reference(job) is model  # digital: the dense model as trained
    protocol = gradual(gradual.Params(**FINETUNE, hwa={"std_dev": 0.05}))
    reference = protocol.reference(job)
    zero, _ = protocol.run(PRUNERS.get("magnitude")(), job, 0.0)
    assert same(reference, zero)
    assert not same(reference, model)
    # T stages × E epochs: one stage of 2 epochs is not the same training (per-stage seeds, fresh Adam)
    once = gradual(gradual.Params(**{**FINETUNE, "stages": 1, "epochs": 2}, hwa={"std_dev": 0.05})).reference(job)
    assert not same(reference, once)


def test_default_gradual_description_is_unchanged():
    """Cell keys of existing gradual runs derive from this: `hwa` at its default is left out."""
    gradual = PROTOCOLS.get("gradual")
    assert gradual().describe() == {"name": "gradual", "stages": 10, "epochs": 1, "lr": 0.001, "batch_size": 64,
                                    "weight_decay": 0.0}
    assert gradual(gradual.Params(hwa=None)).describe() == gradual().describe()
    described = gradual(gradual.Params(hwa={"std_dev": 0.05})).describe()
    assert described["hwa"]["std_dev"] == 0.05 and described["hwa"]["noise_type"] == "add_normal"


GRADUAL_HWA = """
repeats: 1
model: {train: {epochs: 3}}
calibration: {n: 64}
pruners: [magnitude]
sparsities: [0.8]
protocol: gradual
finetune: {stages: 2, epochs: 1, hwa: {std_dev: 0.05}}
conditions: [digital, {name: analog, draws: 1, drift_times: [1d]}]
"""


def test_prune_hwa_finetune_program_drift_is_one_scenario(write_scenario):
    from swap_hw.sweep.run import plan_cells, run_scenario

    scenario = load_scenario(write_scenario(GRADUAL_HWA))
    summary = run_scenario(scenario)
    assert summary.computed == summary.planned == 4
    with sqlite3.connect(scenario.spec.output.db) as conn:
        rows = conn.execute("SELECT pruner, condition, sparsity FROM cells").fetchall()
    assert {(p, c.split("(")[0]) for p, c, _ in rows} == {(p, c) for p in ("dense", "magnitude")
                                                            for c in ("digital", "analog")}
    assert [s for p, _, s in rows if p == "magnitude"][0] == pytest.approx(0.8, abs=1e-3)
    from swap_hw.results.store import Store

    with Store(summary.db) as store:
        logs = [c["prune_log_json"] for c in store.cell_logs(summary.run_id) if c["pruner"] == "magnitude"]
    assert logs and all(log["gradual"]["finetune"]["finetuner"] == "hwa" for log in logs)
    assert logs[0]["gradual"]["finetune"]["hwa"]["std_dev"] == 0.05
    # the older `finetune:` block and `protocol: {name: gradual, ...}` are the same cells;
    # digital fine-tuning is other cells
    keys = {c.key for c in plan_cells(scenario)}
    modern = GRADUAL_HWA.replace("protocol: gradual\nfinetune: {stages: 2, epochs: 1, hwa: {std_dev: 0.05}}",
                                 "protocol: {name: gradual, stages: 2, epochs: 1, hwa: {std_dev: 0.05}}")
    assert modern != GRADUAL_HWA
    assert {c.key for c in plan_cells(load_scenario(write_scenario(modern, "modern.yaml")))} == keys
    plain = GRADUAL_HWA.replace(", hwa: {std_dev: 0.05}", "")
    assert keys.isdisjoint({c.key for c in plan_cells(load_scenario(write_scenario(plain, "plain.yaml")))})


def test_the_sweeps_dense_row_is_the_hwa_reference(write_scenario):
    """The sweep's `dense` row of an HWA scenario is the HWA fine-tuned dense model: the same
    measurements as magnitude at sparsity 0 (which keeps every weight through the same fine-tuning);
    without HWA it is the dense model as trained, and the two rows differ."""
    from swap_hw.results.store import Store
    from swap_hw.sweep.run import run_scenario

    body = GRADUAL_HWA.replace("sparsities: [0.8]", "sparsities: [0.0]").replace(
        "conditions: [digital, {name: analog, draws: 1, drift_times: [1d]}]", "conditions: [digital]")

    def values(text, name):
        summary = run_scenario(load_scenario(write_scenario(text, name)))
        with Store(summary.db) as store:
            records = store.records(summary.run_id)
        return {r["pruner"]: (r["metric"], r["value"]) for r in records if r["metric"] == "loss"}

    hwa = values(body, "hwa.yaml")
    assert hwa["dense"] == hwa["magnitude"]
    plain = values(body.replace(", hwa: {std_dev: 0.05}", ""), "plain.yaml")
    assert plain["dense"] != hwa["dense"]


BASE = "pruners: [magnitude]\nsparsities: [0.5]\nprotocol: gradual\n"


@pytest.mark.parametrize("body,field,words", [
    ("finetune: {hwa: {std_dev: -1}}", "finetune.hwa.std_dev", "greater than or equal to 0"),
    ("finetune: {hwa: {std_dev: 2}}", "finetune.hwa.std_dev", "less than or equal to 1"),
    ("finetune: {hwa: {noise_type: pcm_noise}}", "finetune.hwa.noise_type", "torch tile"),
    ("finetune: {hwa: {noise_type: gauss}}", "finetune.hwa.noise_type", "allowed: 'add_normal'"),
    ("finetune: {hwa: {pdrop: 0.1}}", "finetune.hwa.pdrop", "drop-connect"),
    ("finetune: {hwa: {w_noise: 0.02}}", "finetune.hwa.w_noise", "torch tile"),
    ("finetune: {hwa: {enable_during_test: true}}", "finetune.hwa.enable_during_test", "eval mode"),
    ("finetune: {hwa: {colour: 1}}", "finetune.hwa.colour", "unknown key"),
    ("finetune: {hwa: 0.1}", "finetune.hwa", "mapping of HWA settings"),
    ("finetune: {hwa: {clip_sigma: 0}}", "finetune.hwa.clip_sigma", "greater than 0"),
    ("finetune: {hwa: {inp_res: 1}}", "finetune.hwa.inp_res", "less than 1"),
    ("multi_stage: {hwa: {}}", "multi_stage.hwa", "unknown key"),
])
def test_bad_hwa_settings_are_one_line_errors(body, field, words):
    with pytest.raises(ConfigError) as info:
        parse_scenario_text(BASE + body + "\n", "s.yaml")
    assert info.value.field == field
    message = str(info.value)
    assert words in message and "\n" not in message and message.startswith(f"s.yaml: {field}: ")


def test_hwa_true_means_the_defaults():
    on = parse_scenario_text(BASE + "finetune: {hwa: true}\n", "s.yaml").protocol
    assert on.params.hwa == HWAConfig()
    off = parse_scenario_text(BASE + "finetune: {hwa: false}\n", "s.yaml").protocol
    assert off.params.hwa is None and off.describe() == PROTOCOLS.get("gradual")().describe()


def test_staged_settings_without_hwa_still_finetune_digitally(digits_model):
    """prune_staged reads `hwa` only when its settings have it (a SimpleNamespace has not)."""
    model, splits = digits_model
    settings = SimpleNamespace(**FINETUNE)
    _, result = prune_staged(PRUNERS.get("magnitude")(), model, None, splits.calibration(64, 0), 0.5, 2, seed=3,
                             finetune=settings, train_split=(splits.x_train, splits.y_train))
    assert result.log["gradual"]["finetune"]["finetuner"] == "digital"

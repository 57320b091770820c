"""The `analog` deployment condition: programming draws × drift times on simulated hardware."""

from __future__ import annotations

import copy
from collections import defaultdict

import pytest
import torch

from swap_hw.errors import ParameterError
from swap_hw.deploy import CONDITIONS

TIMES = [1.0, 86400.0, 31536000.0]


def _by(measurements, metric):
    """{drift_time: [value per draw]} for one metric."""
    out = defaultdict(list)
    for m in measurements:
        if m.metric == metric:
            out[m.tags["drift_time"]].append(m.value)
    return out


def _mean(values):
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def test_subset(digits_model):
    _, splits = digits_model
    return splits.x_test[:200], splits.y_test[:200]


def test_measurements_grid_and_seeding(digits_model, test_subset):
    model, _ = digits_model
    cond = CONDITIONS.get("analog")(draws=2, drift_times=[3600.0, 1.0])
    measured = cond.evaluate(model, test_subset, seed=0)
    assert measured == cond.evaluate(model, test_subset, seed=0)
    # the drawn measurements (the untagged / layer-tagged tile accounting is tested in test_accounting.py)
    a = [m for m in measured if "draw" in m.tags]
    accounting = {m.metric: m.value for m in measured if not m.tags}
    assert accounting["tiles_freed"] == 0 and accounting["tiles"] == 3  # dense MLPNet, three layers, one tile each
    b = [m for m in cond.evaluate(model, test_subset, seed=1) if "draw" in m.tags]
    assert [m.value for m in a] != [m.value for m in b]
    # dense model: accuracy, loss, weight_error per (draw, time); no zero-retention figure
    assert {m.metric for m in a} == {"accuracy", "loss", "weight_error"}
    assert len(a) == 2 * 2 * 3
    assert {(m.tags["draw"], m.tags["drift_time"]) for m in a} == {(k, t) for k in (0, 1) for t in (1.0, 3600.0)}
    assert all(0.0 <= m.value <= 1.0 for m in a if m.metric == "accuracy")
    # a measurement at t does not depend on which other times are listed
    only = CONDITIONS.get("analog")(draws=2, drift_times=[3600.0]).evaluate(model, test_subset, seed=0)
    assert [m for m in a if m.tags["drift_time"] == 3600.0] == [m for m in only if "draw" in m.tags]


def test_uncompensated_drift_degrades_accuracy(digits_model, test_subset):
    model, _ = digits_model
    runs = {
        comp: CONDITIONS.get("analog")(drift_compensation=comp, draws=3, drift_times=TIMES).evaluate(
            model, test_subset, seed=0
        )
        for comp in (False, True)
    }
    acc, loss = _by(runs[False], "accuracy"), _by(runs[False], "loss")
    # without compensation, error and loss grow with drift time (on average over draws)
    assert _mean(acc[1.0]) > _mean(acc[31536000.0]) + 0.01
    assert _mean(loss[1.0]) < _mean(loss[86400.0]) < _mean(loss[31536000.0])
    err = _by(runs[False], "weight_error")
    assert _mean(err[1.0]) < _mean(err[86400.0]) < _mean(err[31536000.0])
    # global drift compensation recovers most of the year's loss
    comp_loss = _by(runs[True], "loss")
    assert _mean(comp_loss[31536000.0]) < 0.5 * _mean(loss[31536000.0])


def test_pruned_model_reports_zero_retention(digits_model, test_subset):
    model, _ = digits_model
    pruned = copy.deepcopy(model)
    w = pruned.layers[1].weight
    with torch.no_grad():
        w[w.abs() < w.abs().median()] = 0.0
    before = w.detach().clone()
    for keep, check in ((False, lambda v: v < 0.7), (True, lambda v: v == 1.0)):
        cond = CONDITIONS.get("analog")(keep_pruned_zero=keep, draws=1, drift_times=[1.0, 86400.0])
        zeros = [m for m in cond.evaluate(pruned, test_subset, seed=0) if m.metric == "pruned_zero_fraction"]
        assert len(zeros) == 2 and all(check(m.value) for m in zeros)
    assert torch.equal(pruned.layers[1].weight, before)  # the condition never edits the model


def test_params_validated():
    cls = CONDITIONS.get("analog")
    with pytest.raises(ParameterError, match="characterised only"):
        cls(noise_model="reram_wan2022")  # default times include 1 h and 1 year
    assert cls(noise_model="reram_wan2022", drift_times=[1, 86400, 172800]).params.draws == 5
    for bad in ({"draws": 0}, {"drift_times": []}, {"drift_times": [-1.0]}, {"drift_times": [1.0, 1.0]}):
        with pytest.raises(ParameterError):
            cls(**bad)
    assert cls().params.drift_times == [1.0, 3600.0, 86400.0, 31536000.0]

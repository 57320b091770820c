"""Scenario validation: every bad input names the file and the field and says what is allowed."""

from __future__ import annotations

import pytest

from swap_hw.config import load_scenario, parse_scenario_text
from swap_hw.errors import ConfigError

GOOD = """
pruners: [magnitude]
sparsities: [0.5, 0.9]
"""


def error_of(text: str, overrides=None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_scenario_text(text, "s.yaml", overrides)
    return info.value


def test_defaults_fill_in_and_resolved_config_lists_members():
    scenario = parse_scenario_text(GOOD, "s.yaml")
    resolved = scenario.resolved()
    assert resolved["data"]["name"] == "digits"
    assert resolved["pruners"] == [{"name": "magnitude"}]
    assert resolved["sources"] == [{"name": "clean"}]
    assert resolved["conditions"] == [{"name": "digital"}]
    assert scenario.name == "s"


@pytest.mark.parametrize(
    "text, field, words",
    [
        (GOOD + "colour: red\n", "colour", "unknown key"),
        ("pruners: [magnitude]\nsparsities: [0.5, 1.0]\n", "sparsities[1]", "outside [0, 1)"),
        ("pruners: [magnitude]\nsparsities: [-0.1]\n", "sparsities[0]", "outside [0, 1)"),
        ("pruners: [prune_it]\nsparsities: [0.5]\n", "pruners[0]", "valid: "),
        ("pruners: [{name: magnitude, strength: 2}]\nsparsities: [0.5]\n", "pruners[0].strength", "unknown key"),
        (GOOD + "sources: [nope]\n", "sources[0]", "unknown gradient source 'nope'; valid:"),
        (GOOD + "conditions: [{name: moon}]\n", "conditions[0].name", "unknown deployment condition"),
        (GOOD + "data: {name: imagenet}\n", "data.name", "allowed:"),
        (GOOD + "model: {arch: transformer}\n", "model.arch", "unknown architecture"),
        (GOOD + "calibration: {n: 0}\n", "calibration.n", "greater than 0"),
        (GOOD + "calibration: {over_budget: swap}\n", "calibration.over_budget", "'recompute' or 'disk'"),
        (GOOD + "calibration: {spill_dir: /no/such/folder}\n", "calibration.spill_dir", "not a directory"),
        ("sparsities: [0.5]\n", "pruners", "required"),
        (GOOD + "repeats: 0\n", "repeats", "greater than or equal to 1"),
        (GOOD + "pruners: [magnitude, magnitude]\n", "pruners", "listed twice"),
        # wrong types
        (GOOD + "repeats: three\n", "repeats", "valid integer"),
        (GOOD + "seed: [1, 2]\n", "seed", "valid integer"),
        (GOOD + "data: digits\n", "data", "valid dictionary"),
        ("pruners: magnitude\nsparsities: [0.5]\n", "pruners", "valid list"),
        # unknown keys at every level
        (GOOD + "data: {colour: red}\n", "data.colour", "unknown key"),
        (GOOD + "model: {train: {epochz: 3}}\n", "model.train.epochz", "unknown key"),
        (GOOD + "calibration: {size: 3}\n", "calibration.size", "unknown key"),
        (GOOD + "output: {folder: x}\n", "output.folder", "unknown key"),
        (GOOD + "conditions: [{name: analog, drift: 1}]\n", "conditions[0].drift", "unknown key"),
        (GOOD + "protocol: {name: gradual, warmup: 1}\n", "protocol.warmup", "unknown key"),
        # empty lists, out-of-range member parameters, unknown protocols, duplicates
        ("pruners: []\nsparsities: [0.5]\n", "pruners", "at least 1 item"),
        ("pruners: [magnitude]\nsparsities: []\n", "sparsities", "at least 1 item"),
        (GOOD + "sources: [clean, clean]\n", "sources", "listed twice"),
        ("pruners: [{name: swap, epsilon: -1}]\nsparsities: [0.5]\n", "pruners[0].epsilon", "epsilon"),
        (GOOD + "conditions: [{name: analog, drift_times: [1s, fortnight]}]\n", "conditions[0].drift_times[1]",
         "is not a time"),
        (GOOD + "protocol: gradualish\n", "protocol", "unknown protocol 'gradualish'"),
        (GOOD + "model: {train: {lr: 0}}\n", "model.train.lr", "greater than 0"),
    ],
)
def test_bad_fields_are_named(text, field, words):
    err = error_of(text)
    assert err.file == "s.yaml"
    assert err.field == field
    assert words in str(err)
    assert str(err).startswith(f"s.yaml: {field}: ")


def test_invalid_yaml_names_the_line():
    err = error_of("pruners: [magnitude\nsparsities: [0.5]\n")
    assert "invalid YAML" in str(err) and "line" in str(err)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_scenario(tmp_path / "nope.yaml")
    assert "file not found" in str(info.value) and "nope.yaml" in str(info.value)


def test_set_overrides_scalars_lists_and_component_parameters():
    s = parse_scenario_text(GOOD, "s.yaml", ["seed=7", "sparsities=[0.3]", "data.test_fraction=0.25"])
    assert s.spec.seed == 7 and s.spec.sparsities == [0.3] and s.spec.data.test_fraction == 0.25
    err = error_of(GOOD, ["pruners[0].nonsense=1"])
    assert err.field == "pruners[0].nonsense"
    err = error_of(GOOD, ["pruners[3]=magnitude"])
    assert "pruners[3]" in str(err)


def test_list_on_scalar_parameter_expands_and_chain_sources_compose():
    s = parse_scenario_text(GOOD + "sources: [clean, [clean, clean]]\n", "s.yaml")
    assert [x.label for x in s.sources] == ["clean", "clean+clean"]
    assert s.resolved()["sources"][1] == {"name": "chain", "members": [{"name": "clean"}, {"name": "clean"}]}


def test_same_scenario_same_hash_and_any_change_changes_it():
    a = parse_scenario_text(GOOD, "s.yaml")
    b = parse_scenario_text(GOOD, "other.yaml", ["name=s"])
    c = parse_scenario_text(GOOD, "s.yaml", ["seed=1"])
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != c.config_hash()

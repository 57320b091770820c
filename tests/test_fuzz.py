"""Fuzzing the two loaders a user feeds by hand: any YAML document or `--set` value gives a valid
scenario or one documented line (ConfigError), never a traceback; any arrays in an npz give data
splits or one line (SwapHwError)."""

from __future__ import annotations

import io

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from swap_hw.config import parse_scenario_text
from swap_hw.data import load_npz_splits
from swap_hw.errors import ConfigError, SwapHwError

FIELDS = ["seed", "repeats", "data", "model", "calibration", "sources", "pruners", "sparsities", "conditions",
          "protocol", "output", "name", "finetune", "multi_stage", "arch", "epsilon", "lambda", "n", "std",
          "drift_time", "drift_times", "eps", "stages", "path", "factory", "checkpoint", "zip"]
NAMES = ["magnitude", "lr", "swap", "woodfisher", "sap", "lottery", "clean", "gaussian", "analog", "label_noise",
         "adversarial", "digital", "one_shot", "gradual", "digits", "npz", "mlpnet", "auto", "inf"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from(NAMES), st.text(max_size=8))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.sampled_from(NAMES)), inner, max_size=5)),
    max_leaves=20)

BASE = {"pruners": ["magnitude"], "sparsities": [0.5]}
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parses_or_one_line(text: str, overrides: list[str] | None = None) -> None:
    try:
        parse_scenario_text(text, "fuzz.yaml", overrides)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("fuzz.yaml")


@FUZZ
@given(documents)
def test_any_yaml_document_is_a_scenario_or_one_line(doc):
    parses_or_one_line(yaml.safe_dump(doc))


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS), documents, max_size=6))
def test_any_mapping_over_a_valid_scenario_is_a_scenario_or_one_line(extra):
    parses_or_one_line(yaml.safe_dump({**BASE, **extra}))


@FUZZ
@given(st.text(max_size=80))
def test_any_text_is_a_scenario_or_one_line(text):
    parses_or_one_line(text)


@FUZZ
@given(st.lists(st.tuples(st.text(alphabet="abcdefgmnoprstuxyz_.[]0123456789", max_size=25), st.text(max_size=20)),
                max_size=3))
def test_any_set_override_is_a_scenario_or_one_line(pairs):
    parses_or_one_line(yaml.safe_dump(BASE), [f"{path}={value}" for path, value in pairs])


arrays = hnp.arrays(dtype=st.sampled_from([np.float32, np.float64, np.uint8, np.int64, np.bool_]),
                    shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
                    elements=None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["x_train", "y_train", "x_test", "y_test", "other"]), arrays, max_size=5))
def test_any_arrays_in_an_npz_load_or_give_one_line(tmp_path_factory, contents):
    path = tmp_path_factory.mktemp("npz") / "fuzz.npz"
    buffer = io.BytesIO()
    np.savez(buffer, **contents)
    path.write_bytes(buffer.getvalue())
    try:
        splits = load_npz_splits(str(path))
    except SwapHwError as exc:
        assert "\n" not in str(exc)
        return
    assert splits.x_train.shape[0] == splits.y_train.shape[0] > 0
    assert splits.x_test.shape[0] == splits.y_test.shape[0] > 0

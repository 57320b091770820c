"""The data and the dense model are checked before any training, each problem one line.

Every bad input is tried twice: through `load_scenario` + `prepare` (a ConfigError naming the
field, or a RunFault) and through `validate` on the command line (exit 2, one line on stderr), so
what `run` refuses before training, `validate` refuses too. Data files are small npz archives the
tests write (scikit-learn's digits, or a few hundred random values); nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from swap_hw.cli import main
from swap_hw.config import InlineInputs, load_scenario
from swap_hw.data import DataSplits, load_digits_splits
from swap_hw.errors import ConfigError, RunFault
from swap_hw.models import build_model
from swap_hw.results.store import Store
from swap_hw.sweep.prepare import check_inputs, prepare
from swap_hw.sweep.run import run_scenario

BODY = """
repeats: 1
model: {{train: {{epochs: 1}}}}
calibration: {{n: {n}}}
pruners: [magnitude]
sparsities: [0.5]
{extra}
"""


def digits_arrays(n_train: int = 300, n_test: int = 100) -> dict[str, np.ndarray]:
    s = load_digits_splits(0.2, 0)
    return {"x_train": s.x_train[:n_train].numpy(), "y_train": s.y_train[:n_train].numpy(),
            "x_test": s.x_test[:n_test].numpy(), "y_test": s.y_test[:n_test].numpy()}


def write_npz(path: Path, **changes) -> Path:
    """The digits arrays with `changes` applied (a value of None drops the array)."""
    arrays = {**digits_arrays(), **changes}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def npz_scenario(write_scenario, data: Path, n: int = 64, extra: str = "", name: str = "s.yaml") -> Path:
    return write_scenario(BODY.format(n=n, extra=f"data: {{name: npz, path: {data}}}\n{extra}"), name)


def cli_error(path: Path, capsys, code: int = 2, command: str = "validate") -> str:
    """The one line `command` prints to stderr, after checking its exit code."""
    args = [command, str(path)] + (["--quiet"] if command == "run" else [])
    assert main(args) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --- the npz file's contents ----------------------------------------------------------------------

def _bytes(data: bytes):
    def write(path: Path) -> Path:
        path.write_bytes(data)
        return path
    return write


def _truncated(path: Path) -> Path:
    full = write_npz(path.with_name("full.npz")).read_bytes()
    path.write_bytes(full[: len(full) // 2])
    return path


def _crc_damaged(path: Path) -> Path:
    write_npz(path)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("x_train.npy")
    data = bytearray(path.read_bytes())
    start = info.header_offset + info.compress_size // 2
    data[start:start + 16] = b"\x07" * 16  # array bytes, not a header: only the CRC can tell
    path.write_bytes(bytes(data))
    return path


def _npy(path: Path) -> Path:
    with open(path, "wb") as f:
        np.save(f, np.zeros((10, 64), np.float32))
    return path


def _arrays(**changes):
    return lambda path: write_npz(path, **changes)


_d = digits_arrays()
_nan = _d["x_train"].copy()
_nan[7, 0, 3, 3] = np.nan
_inf = _d["x_test"].copy()
_inf[2, 0, 0, 0] = np.inf
_y_test_12 = _d["y_test"].copy()
_y_test_12[5] = 12
_one_hot = np.eye(10, dtype=np.float32)[_d["y_train"]]
_negative = _d["y_train"].copy()
_negative[4] = -1

BAD_NPZ = [
    # (id, writer, words in the message)
    ("text_file", _bytes(b"x_train,y_train\n1,2\n"), "is not an npz archive (a zip of .npy arrays)"),
    ("empty_file", _bytes(b""), "is empty (0 bytes)"),
    ("single_npy", _npy, "holds a single .npy array, not an npz archive"),
    ("truncated", _truncated, "is truncated or corrupt (an incomplete zip archive)"),
    ("corrupt_bytes", _crc_damaged, "is truncated or corrupt (BadZipFile: Bad CRC-32"),
    ("missing_arrays", _arrays(y_test=None), "missing arrays ['y_test']"),
    ("object_array", _arrays(y_train=np.array(["a"] * 300, dtype=object)), "y_train is an object array"),
    ("x_y_lengths_differ", _arrays(y_train=_d["y_train"][:250]),
     "x_train has 300 examples but y_train has 250 labels"),
    ("empty_train", _arrays(x_train=_d["x_train"][:0], y_train=_d["y_train"][:0]), "the train split is empty"),
    ("empty_test", _arrays(x_test=_d["x_test"][:0], y_test=_d["y_test"][:0]), "the test split is empty"),
    ("fractional_labels", _arrays(y_train=_d["y_train"] + 0.5), "y_train holds labels that are not integers"),
    ("one_hot_labels", _arrays(y_train=_one_hot), "one-hot labels: give class indices (argmax)"),
    ("string_labels", _arrays(y_test=_d["y_test"].astype(str)), "labels must be integer class indices"),
    ("negative_labels", _arrays(y_train=_negative), "y_train has negative labels (e.g. -1 at index 4)"),
    ("test_class_not_in_train", _arrays(y_test=_y_test_12), "y_test has class 12 that y_train never has"),
    ("one_training_class", _arrays(y_train=np.full(300, 3)), "y_train holds a single class (3)"),
    ("nan_inputs", _arrays(x_train=_nan), "x_train holds NaN or infinite values (1 example, at index 7)"),
    ("inf_inputs", _arrays(x_test=_inf), "x_test holds NaN or infinite values"),
    ("one_dimensional_inputs", _arrays(x_train=np.zeros(300, np.float32)),
     "x_train has shape (300,); inputs must be (N, F), (N, H, W), (N, H, W, C) or (N, C, H, W)"),
    ("five_dimensional_inputs", _arrays(x_test=np.zeros((100, 1, 2, 8, 8), np.float32)), "x_test has shape (100, 1, 2, 8, 8)"),
    ("complex_inputs", _arrays(x_train=_d["x_train"].astype(np.complex64)), "inputs must be real numbers"),
    ("train_test_shapes_differ", _arrays(x_test=np.zeros((100, 1, 8, 7), np.float32)),
     "x_train and x_test differ in input shape: (1, 8, 8) vs (1, 8, 7)"),
]


@pytest.mark.parametrize("writer, words", [c[1:] for c in BAD_NPZ], ids=[c[0] for c in BAD_NPZ])
def test_a_bad_npz_is_refused_before_training_naming_data_path(write_scenario, tmp_path, capsys, writer, words):
    data = writer(tmp_path / "d.npz")
    path = npz_scenario(write_scenario, data)
    with pytest.raises(ConfigError) as info:
        prepare(load_scenario(path))
    assert info.value.field == "data.path" and words in info.value.reason and "\n" not in str(info.value)
    assert str(data) in info.value.reason
    line = cli_error(path, capsys)
    assert line.startswith(f"error: {path}: data.path: ") and words in line
    assert not (tmp_path / "cache").exists()  # nothing trained, nothing cached


def test_a_limit_that_leaves_one_training_class_names_limit_train(write_scenario, tmp_path, capsys):
    y = np.sort(digits_arrays()["y_train"])  # the first examples all of class 0
    data = write_npz(tmp_path / "d.npz", y_train=y)
    path = npz_scenario(write_scenario, data, extra="", name="s.yaml")
    path.write_text(path.read_text().replace("data: {name: npz,", "data: {limit_train: 10, name: npz,"))
    with pytest.raises(ConfigError) as info:
        prepare(load_scenario(path))
    assert info.value.field == "data.limit_train" and "all of class 0" in info.value.reason
    assert "data.limit_train: the first 10 training examples are all of class 0" in cli_error(path, capsys)


def test_a_good_npz_loads_with_integer_float_labels_and_column_labels(write_scenario, tmp_path, capsys):
    d = digits_arrays()
    data = write_npz(tmp_path / "d.npz", y_train=d["y_train"].astype(np.float32)[:, None],
                     x_train=(d["x_train"] * 255).astype(np.uint8), x_test=(d["x_test"] * 255).astype(np.uint8))
    path = npz_scenario(write_scenario, data)
    assert check_inputs(load_scenario(path)) == []
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr()
    assert "inputs checked: data npz, 300 train / 100 test examples, input 1×8×8, 10 classes" in out.out
    assert out.err == ""
    assert not (tmp_path / "cache").exists()  # validate trains nothing


# --- warnings: legal but suspicious ----------------------------------------------------------------

def test_calibration_n_above_the_training_split_is_a_warning_not_a_clamp(write_scenario, tmp_path, capsys):
    data = write_npz(tmp_path / "d.npz")
    path = npz_scenario(write_scenario, data, n=5000)
    prepared = prepare(load_scenario(path))
    expected = ("calibration.n: 5000 is more than the 300 training examples; every replicate calibrates on all "
                "300")
    assert len(prepared.warnings) == 1 and prepared.warnings[0].startswith(expected)
    assert prepared.describe()["warnings"] == prepared.warnings  # stored with the run (Store.set_run_info)
    x, _ = prepared.splits.calibration(5000, 0)
    assert x.shape[0] == 300  # still works, with every training example
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"warning: {path}: {prepared.warnings[0]}"]
    summary = run_scenario(load_scenario(path))  # the runner stores describe(), warnings included
    with Store(summary.db) as store:
        assert store.run_info(summary.run_id)["warnings"] == prepared.warnings


def test_no_warnings_are_stored_for_ordinary_inputs(write_scenario, tmp_path):
    prepared = prepare(load_scenario(npz_scenario(write_scenario, write_npz(tmp_path / "d.npz"))))
    assert prepared.warnings == [] and prepared.describe()["warnings"] == []


def test_inputs_outside_the_unit_range_under_an_attack(write_scenario, tmp_path, capsys):
    attacked = "conditions: [digital, {name: adversarial, eps: [0.05]}]\n"
    # an npz file outside [0, 1]: the config-time check refuses it (kept)
    d = digits_arrays()
    wide = write_npz(tmp_path / "wide.npz", x_train=d["x_train"] * 16, x_test=d["x_test"] * 16)
    path = npz_scenario(write_scenario, wide, extra=attacked)
    line = cli_error(path, capsys)
    assert line.startswith(f"error: {path}: conditions[1]: attacks keep inputs in [0, 1]")
    # data that reaches prepare() without that check (a Scenario assembled in code): a warning
    ok = load_scenario(npz_scenario(write_scenario, write_npz(tmp_path / "ok.npz"), extra=attacked, name="ok.yaml"))
    s = load_digits_splits(0.2, 0)
    splits = DataSplits("inline", s.x_train[:300] * 16, s.y_train[:300], s.x_test[:100] * 16, s.y_test[:100], 10)
    warnings = check_inputs(dataclasses.replace(ok, inline=InlineInputs.of(None, splits)))
    assert warnings == [("conditions[1]: attacks clip inputs to [0, 1] (eps is in those units), but the inputs span "
                         "[0, 16], so attacked inputs are clipped: rescale the inputs to [0, 1]")]
    assert check_inputs(ok) == []  # digits in [0, 1]: nothing to say


# --- the dense model: never NaN ---------------------------------------------------------------------

def test_training_that_diverges_is_a_run_fault_and_is_never_cached(write_scenario, tmp_path, capsys):
    path = write_scenario(BODY.format(n=64, extra="").replace("epochs: 1", "epochs: 1, lr: 1.0e+30"))
    with pytest.raises(RunFault, match=r"^the dense model has NaN/Inf weights after training \(layers\.\d\.weight"):
        prepare(load_scenario(path))
    assert not list((tmp_path / "cache").glob("*.pt"))
    line = cli_error(path, capsys, code=1, command="run")
    assert line.startswith("error: the dense model has NaN/Inf weights after training") and "lower model.train.lr" in line
    assert not list((tmp_path / "cache").glob("*.pt"))


def _cache_file(tmp_path: Path, path: Path) -> Path:
    prepare(load_scenario(path))  # trains and caches
    (cached,) = (tmp_path / "cache").glob("dense-*.pt")
    return cached


def test_a_cache_file_holding_nan_weights_is_a_run_fault(write_scenario, tmp_path, capsys):
    path = write_scenario(BODY.format(n=64, extra=""))
    cached = _cache_file(tmp_path, path)
    state = torch.load(cached, weights_only=True)
    name = next(iter(state))
    state[name].view(-1)[0] = float("nan")
    torch.save(state, cached)
    with pytest.raises(RunFault, match=f"dense-model cache file {cached} holds NaN/Inf weights \\({name}\\)"):
        prepare(load_scenario(path))
    line = cli_error(path, capsys, code=1, command="run")
    assert line == f"error: dense-model cache file {cached} holds NaN/Inf weights ({name}); delete it and run again to retrain"


def test_a_truncated_cache_file_is_a_run_fault_naming_it(write_scenario, tmp_path, capsys):
    path = write_scenario(BODY.format(n=64, extra=""))
    cached = _cache_file(tmp_path, path)
    cached.write_bytes(cached.read_bytes()[:100])
    with pytest.raises(RunFault, match=f"dense-model cache file {cached} is truncated or corrupt"):
        prepare(load_scenario(path))
    assert cli_error(path, capsys, code=1, command="run").startswith(f"error: dense-model cache file {cached} is")


def test_an_in_memory_model_holding_nan_is_refused(write_scenario, tmp_path):
    scenario = load_scenario(write_scenario(BODY.format(n=64, extra="")))
    model = build_model("mlpnet", (1, 8, 8), 10, seed=0)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(ConfigError, match="the in-memory model holds NaN/Inf weights") as info:
        prepare(dataclasses.replace(scenario, inline=InlineInputs.of(model, None)))
    assert info.value.field == "model"


# --- checkpoints --------------------------------------------------------------------------------

def _state(_: Path | None = None) -> dict[str, torch.Tensor]:
    return build_model("mlpnet", (1, 8, 8), 10, seed=0).state_dict()


def _ckpt_nan(path: Path) -> Path:
    state = _state(path.parent)
    state["layers.1.weight"][0, 0] = float("nan")
    torch.save(state, path)
    return path


def _ckpt_truncated(path: Path) -> Path:
    torch.save(_state(path.parent), path)
    path.write_bytes(path.read_bytes()[:-200])
    return path


def _ckpt_legacy_truncated(path: Path) -> Path:
    torch.save(_state(path.parent), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 300])
    return path


def _ckpt_corrupt(path: Path) -> Path:
    torch.save(_state(path.parent), path)
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.file_size > 1000)
    data = bytearray(path.read_bytes())
    start = info.header_offset + info.compress_size // 2
    data[start:start + 16] = b"\x07" * 16  # tensor bytes: torch.load would read them without a word
    path.write_bytes(bytes(data))
    return path


def _ckpt_bytes(data: bytes):
    def write(path: Path) -> Path:
        path.write_bytes(data)
        return path
    return write


def _ckpt_wrong_shape(path: Path) -> Path:
    torch.save(build_model("mlpnet", (1, 8, 8), 3, seed=0).state_dict(), path)
    return path


BAD_CHECKPOINTS = [
    ("nan_weights", _ckpt_nan, "holds NaN/Inf weights (layers.1.weight)"),
    ("truncated", _ckpt_truncated, "is truncated or corrupt (an incomplete zip archive)"),
    ("truncated_legacy_format", _ckpt_legacy_truncated, "is truncated or corrupt"),
    ("corrupt_bytes", _ckpt_corrupt, "fails its CRC check"),
    ("empty_file", _ckpt_bytes(b""), "is empty (0 bytes)"),
    ("not_a_torch_file", _ckpt_bytes(b"weights: 1, 2, 3\n"), "is not a torch.save file"),
    ("does_not_fit", _ckpt_wrong_shape, "does not fit the configured model"),
]


@pytest.mark.parametrize("writer, words", [c[1:] for c in BAD_CHECKPOINTS], ids=[c[0] for c in BAD_CHECKPOINTS])
def test_a_bad_checkpoint_is_one_line_naming_the_file(write_scenario, tmp_path, capsys, writer, words):
    ckpt = writer(tmp_path / "model.pt")
    path = write_scenario(BODY.format(n=64, extra=f"model: {{checkpoint: {ckpt}}}"))
    with pytest.raises(ConfigError) as info:
        prepare(load_scenario(path))
    assert info.value.field == "model.checkpoint" and words in info.value.reason
    line = cli_error(path, capsys)
    assert line.startswith(f"error: {path}: model.checkpoint: checkpoint {ckpt} ") and words in line


def test_validate_reads_a_good_checkpoint_without_training(write_scenario, tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    torch.save(_state(tmp_path), ckpt)
    path = write_scenario(BODY.format(n=64, extra=f"model: {{checkpoint: {ckpt}}}"))
    assert main(["validate", str(path)]) == 0
    assert f"checkpoint {ckpt} read" in capsys.readouterr().out
    prepared = prepare(load_scenario(path))
    assert prepared.dense_was_cached and torch.equal(prepared.dense.state_dict()["layers.1.weight"],
                                                      _state(tmp_path)["layers.1.weight"])

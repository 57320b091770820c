"""The Python API: a Study on a user's model object and DataLoaders, a Study from a scenario file
(the same records as the CLI), the YAML round trip, `prune`, members by name, and errors that are
the package's ParameterError naming the field."""

from __future__ import annotations

import csv
import io

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import swap_hw as sh
from swap_hw.cli import main
from swap_hw.errors import ParameterError
from swap_hw.pruners import kept_count
from swap_hw.results.store import Store
from swap_hw.sweep.plan import plan_cells

from snippets import TINY  # noqa: E402  (tests/ is on sys.path under pytest)


class SmallCNN(nn.Module):
    """A user model: conv + BatchNorm + residual add + linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 64, 10)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.head((h + x).flatten(1))


@pytest.fixture(scope="module")
def user(digits_model):
    """A trained user CNN and its data as DataLoaders (train) and tensors (test)."""
    _, splits = digits_model
    torch.manual_seed(0)
    net = SmallCNN()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(3):
        for i in range(0, splits.x_train.shape[0], 64):
            opt.zero_grad()
            nn.functional.cross_entropy(net(splits.x_train[i:i + 64]), splits.y_train[i:i + 64]).backward()
            opt.step()
    net.eval()
    loader = DataLoader(TensorDataset(splits.x_train, splits.y_train), batch_size=100)
    return net, loader, (splits.x_test, splits.y_test)


def test_a_study_on_a_user_model_and_loaders(user):
    net, loader, test = user
    before = {k: v.clone() for k, v in net.state_dict().items()}
    study = sh.Study(net, loader, test, sources=["clean", sh.sources.Gaussian(std=2.0)],
                     pruners=["magnitude", sh.pruners.LR()], sparsities=[0.5], repeats=2, calibration=64)
    results = study.run(progress=False)
    assert results.counts.computed == results.counts.planned == 2 * (1 + 2 * 2)
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in before)  # the user's model is untouched
    records = results.records
    dense = [r["value"] for r in records if r["pruner"] == "dense" and r["metric"] == "accuracy"]
    x_test, y_test = test
    assert dense[0] == pytest.approx(float((net(x_test).argmax(1) == y_test).float().mean()))  # as handed in
    rows = list(csv.DictReader(io.StringIO(results.to_csv())))
    assert len(rows) == len(records) and {r["source"] for r in rows} == {"-", "clean", "gaussian(std=2)"}
    frame = results.to_pandas()
    assert len(frame) == len(records) and set(frame["pruner"]) == {"dense", "magnitude", "lr"}
    summary = results.summary()
    assert ("gaussian(std=2)", "lr", "0.5") in summary.cells
    pruned = results.pruned_model("lr", 0.5, seed=1, source="gaussian(std=2)")
    weights = [p for n, p in pruned.named_parameters() if n.endswith("weight") and p.dim() > 1]
    d = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == d - kept_count(d, 0.5)  # exactly the pruned half
    assert type(pruned) is SmallCNN


def test_in_memory_inputs_are_known_by_content(user):
    net, loader, test = user
    kwargs = dict(pruners=["magnitude"], sparsities=[0.5], repeats=1)
    keys = {c.key for c in plan_cells(sh.Study(net, loader, test, **kwargs).scenario)}
    assert keys == {c.key for c in plan_cells(sh.Study(net, loader, (test[0].clone(), test[1].clone()), **kwargs).scenario)}
    changed_data = {c.key for c in plan_cells(sh.Study(net, loader, (test[0] * 0.5, test[1]), **kwargs).scenario)}
    other = SmallCNN()
    changed_model = {c.key for c in plan_cells(sh.Study(other, loader, test, **kwargs).scenario)}
    assert not keys & changed_data and not keys & changed_model


def test_a_study_from_a_scenario_file_gives_the_cli_records(write_scenario, tmp_path):
    path = write_scenario(TINY)
    assert main(["run", str(path), "--quiet", "--db", str(tmp_path / "cli.sqlite")]) == 0
    results = sh.Study.from_yaml(path, db=tmp_path / "api.sqlite").run(progress=False)
    with Store(tmp_path / "cli.sqlite") as store:
        run_id = store.resolve_run_id(None)
        cli_records = store.records(run_id)
    assert results.run_id == run_id
    assert [(r["cell_key"], r["metric"], r["value"]) for r in results.records] == \
        [(r["cell_key"], r["metric"], r["value"]) for r in cli_records]


def test_yaml_and_study_round_trip(write_scenario, tmp_path):
    study = sh.Study(model="mlpnet", sources=["clean", sh.sources.LabelNoise(rate=0.2)],
                     pruners=["magnitude", sh.pruners.Swap(epsilon=0.05)], sparsities=[0.5, "auto"],
                     conditions=["digital", sh.conditions.Analog(draws=2, drift_times=["1s", "1d"])],
                     protocol=sh.protocols.MultiStage(stages=3), repeats=2, calibration=64,
                     train_settings={"epochs": 2}, db=tmp_path / "x.sqlite")
    text = study.to_yaml(tmp_path / "study.yaml")
    assert "analog" in text and "multi_stage" in text
    again = sh.Study.from_yaml(tmp_path / "study.yaml", db=tmp_path / "x.sqlite")
    assert again.scenario.config_hash() == study.scenario.config_hash()
    assert [c.key for c in plan_cells(again.scenario)] == [c.key for c in plan_cells(study.scenario)]
    assert sh.Study.from_yaml(tmp_path / "study.yaml").to_yaml() == text
    in_memory = sh.Study(SmallCNN(), (torch.rand(20, 1, 8, 8), torch.arange(20) % 10),
                         (torch.rand(8, 1, 8, 8), torch.arange(8) % 10), pruners=["magnitude"], sparsities=[0.5])
    with pytest.raises(ParameterError, match="in-memory"):
        in_memory.to_yaml()


def test_prune_once_on_a_user_model(user):
    net, loader, _ = user
    before = {k: v.clone() for k, v in net.state_dict().items()}
    result = sh.prune(net, loader, "swap", 0.7, n=64, epsilon=0.05)
    assert abs(result.sparsity - 0.7) < 1e-3 and result.log["pruner"]["epsilon"] == 0.05
    pruned = result.apply(net)
    assert all(torch.equal(net.state_dict()[k], before[k]) for k in before)
    for name, mask in result.masks.items():
        assert bool((dict(pruned.named_parameters())[name][~mask] == 0).all())
    again = sh.prune(net, loader, sh.pruners.Swap(epsilon=0.05), 0.7, n=64)
    assert all(torch.equal(again.weights[k], result.weights[k]) for k in result.weights)  # seeded
    lottery = sh.prune(net, loader, "lottery", 0.5, n=64, iterations=5, epochs=1)  # rewinds and retrains
    assert abs(lottery.sparsity - 0.5) < 1e-3


@pytest.mark.parametrize("kwargs,field", [
    (dict(sparsities=[1.5]), "sparsities[0]"),
    (dict(pruners=["swp"]), "pruners[0]"),
    (dict(conditions=[{"name": "analog", "draws": 0}]), "conditions[0].draws"),
    (dict(repeats=0), "repeats"),
    (dict(protocol="gradualish"), "protocol"),
    (dict(calibration=-5), "calibration.n"),
])
def test_study_errors_name_the_field(user, kwargs, field):
    net, loader, test = user
    with pytest.raises(ParameterError) as info:
        sh.Study(net, loader, test, **{"pruners": ["magnitude"], "sparsities": [0.5], **kwargs})
    assert str(info.value).startswith(field + ":"), str(info.value)


def test_input_and_member_errors_are_parameter_errors(user):
    net, loader, test = user
    with pytest.raises(ParameterError, match="epsilon"):
        sh.pruners.Swap(epsilon=-1)
    with pytest.raises(ParameterError, match="drift_time"):
        sh.sources.Analog(drift_time="soon")
    with pytest.raises(ParameterError, match="train/test: give both"):
        sh.Study(net, loader, None)
    with pytest.raises(ParameterError, match="test: 3 inputs but 2 labels"):
        sh.Study(net, loader, (torch.rand(3, 1, 8, 8), torch.tensor([1, 2])))
    with pytest.raises(ParameterError, match="integer class indices"):
        sh.Study(net, loader, (torch.rand(3, 1, 8, 8), torch.tensor([0.5, 1.0, 2.0])))
    with pytest.raises(ParameterError, match="model: expected"):
        sh.Study(42, loader, test)
    with pytest.raises(AttributeError, match="no pruner 'Surgeon'"):
        sh.pruners.Surgeon()
    with pytest.raises(ParameterError, match="attacks keep inputs in"):
        sh.Study(net, loader, (test[0] * 4, test[1]), conditions=["adversarial"], pruners=["magnitude"], sparsities=[0.5])


def test_gradient_sources_take_a_dataloader_or_a_dataset(user):
    net, _, (x, y) = user
    as_tensors = sh.sources.Clean().collect(net, (x[:40], y[:40]), seed=0)
    loader = DataLoader(TensorDataset(x[:40], y[:40]), batch_size=16)
    assert torch.equal(sh.sources.Clean().collect(net, loader, seed=0).X, as_tensors.X)
    assert torch.equal(sh.sources.Clean().collect(net, TensorDataset(x[:40], y[:40]), seed=0).X, as_tensors.X)
    with pytest.raises(ParameterError, match="batch: expected"):
        sh.sources.Clean().collect(net, "not data", seed=0)

"""Paper A's Table 2 at CPU scale (chapter 6): the protocol (only the stage trains, the
zero-gradient control is weight decay alone), resumption and storage."""
import json
from dataclasses import replace

import pytest
import torch

from resode_tut import checkpoint as ckpt
from resode_tut.bottleneck_resnet import untie_stage
from resode_tut.experiments import ch06_table2, table2

TINY = table2.Table2Config("tiny", 80, 40, width=1, layers=(2, 2, 4, 2), depth=4,
                           pretrain_epochs=2, epochs=3, lr=0.05, lr_drop_epoch=2, batch=40,
                           gradient_batch=8)


@pytest.fixture(autouse=True)
def data_and_results(cifar_and_results):
    """The shared small CIFAR-10 folder and empty results folder; the data cache cleared."""
    table2._data.cache_clear()
    return cifar_and_results


def _run(tmp_path, config=TINY, name="run"):
    return table2.compute_table2(config, processes=1, folder=tmp_path / name, fingerprint="k")


def _model(config, folder, run):
    return table2._finetuned(config, folder, run, "k")


def test_only_the_stage_trains_and_the_start_is_the_tied_network(tmp_path):
    data = _run(tmp_path)
    folder = tmp_path / "run"
    tied = table2._tied(TINY)
    tied.load_state_dict(ckpt.load(folder / "pretrain.pt", "k/pretrain")["model"])
    tied.eval()
    start = untie_stage(tied, TINY.stage, TINY.depth).eval()
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(start(x), tied(x), rtol=1e-5, atol=1e-6)   # untying keeps it
    assert data["start_accuracy"] == pytest.approx(
        table2.accuracy(tied, table2._data(None, False, TINY.test_images, TINY.seed)))
    for run in table2.RUNS:
        tuned = dict(_model(TINY, folder, run).named_parameters())
        for name, p in start.named_parameters():
            if name.startswith(f"stages.{TINY.stage}."):
                continue
            assert torch.equal(tuned[name], p), f"{run} changed {name}"
    assert data["runs"]["backprop"]["stage_travel"] > 0


def test_the_control_is_weight_decay_alone(tmp_path):
    """With its gradient zeroed, SGD (momentum 0.9, weight decay) scales every weight of the
    stage by one factor, the product of the recurrence v' = 0.9 v + wd p, p' = p - lr v'."""
    data = _run(tmp_path)
    folder = tmp_path / "run"
    tied = table2._tied(TINY)
    tied.load_state_dict(ckpt.load(folder / "pretrain.pt", "k/pretrain")["model"])
    start = untie_stage(tied, TINY.stage, TINY.depth)
    p, v = 1.0, 0.0
    steps = -(-TINY.train_images // TINY.batch)
    for epoch in range(TINY.epochs):
        lr = TINY.lr / (10 if epoch >= TINY.lr_drop_epoch else 1)
        for _ in range(steps):
            v = 0.9 * v + TINY.weight_decay * p
            p = p - lr * v
    decayed = table2._stage_vector(_model(TINY, folder, "decay"), TINY.stage)
    torch.testing.assert_close(decayed, p * table2._stage_vector(start, TINY.stage),
                               rtol=1e-6, atol=1e-9)
    assert data["runs"]["decay"]["gradient_travel"] == 0
    # the gradient moves the others away from it, and the adjoint along backprop's path
    bp = data["runs"]["backprop"]["gradient_travel"]
    assert bp > 0 and data["stage_gap"] < 0.5 * bp
    assert data["runs"]["adjoint"]["gradient_travel"] > 0.5 * bp


def test_the_adjoint_run_uses_the_adjoint_and_checks_itself(tmp_path):
    data = _run(tmp_path)
    checks = data["runs"]["adjoint"]["self_check"]
    assert len(checks) == TINY.epochs and all(c > 0 for c in checks)
    assert data["runs"]["backprop"]["self_check"] == []
    assert 0 < data["start_gradient_error"] < 1


def test_a_stopped_run_resumes_and_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    whole = _run(tmp_path, name="whole")
    calls = {"n": 0}
    real = table2.accuracy

    def dies_in_the_second_pretraining_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(table2, "accuracy", dies_in_the_second_pretraining_epoch)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, name="stopped")
    assert ckpt.load(tmp_path / "stopped" / "pretrain.pt", "k/pretrain")["epoch"] == 1
    monkeypatch.setattr(table2, "accuracy", real)
    again = _run(tmp_path, name="stopped")
    for part in ("pretrain", "runs", "start_accuracy", "stage_gap"):
        if part == "runs":
            for run in table2.RUNS:
                for k in ("test_accuracy", "train_loss", "stage_travel", "gradient_travel"):
                    assert again[part][run][k] == whole[part][run][k], (run, k)
        elif part == "pretrain":
            assert again[part]["test_accuracy"] == whole[part]["test_accuracy"]
            assert again[part]["train_loss"] == whole[part]["train_loss"]
        else:
            assert again[part] == whole[part]


def test_a_checkpoint_of_another_configuration_is_refused(tmp_path):
    _run(tmp_path)
    with pytest.raises(ckpt.CheckpointMismatch):
        table2.compute_table2(TINY, processes=1, folder=tmp_path / "run", fingerprint="other")


def test_stored_loaded_and_described(tmp_path, capsys):
    data, stored = ch06_table2.table2(TINY, processes=1)
    assert stored is not None and stored.path.exists()
    assert not (stored.path.parent / ".partial").exists() or not any(
        (stored.path.parent / ".partial").iterdir())
    again, found = ch06_table2.table2(TINY, processes=1)
    assert found is not None and again == json.loads(json.dumps(data))
    rows = ch06_table2.rows(again)
    assert [r[0] for r in rows][0].startswith("tied") and len(rows) == 4
    ch06_table2.plot(again, "tiny")


def test_an_incomplete_result_is_named():
    data = {"pretrain": {"test_accuracy": [0.1, 0.2]},
            "runs": {r: {"test_accuracy": [0.1] * 3, "train_loss": [1.0] * 3,
                         "stage_travel": 1.0, "gradient_travel": 1.0, "self_check": [1.0] * 3}
                     for r in table2.RUNS}}
    ch06_table2.check(TINY, data)
    data["runs"]["adjoint"]["test_accuracy"] = [0.1] * 2
    with pytest.raises(ValueError, match="no complete adjoint"):
        ch06_table2.check(TINY, data)
    data["runs"]["adjoint"]["test_accuracy"] = [0.1] * 3
    data["runs"]["decay"]["train_loss"] = [float("nan")] * 3
    with pytest.raises(ValueError, match="decay fine-tuning has a non-finite"):
        ch06_table2.check(TINY, data)


def test_unknown_names_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="choose one of"):
        ch06_table2.TABLE2.name("nope")
    with pytest.raises(ValueError, match="unknown fine-tuning run"):
        table2.finetune_one(["frozen", {}, "cpu"], folder="x")


def test_the_configurations_are_the_papers_protocol():
    gpu, cpu = table2.CONFIGS["gpu-full"], table2.CONFIGS["cpu"]
    assert (gpu.width, gpu.layers, gpu.stage, gpu.depth) == (64, (4, 4, 32, 4), 2, 32)
    assert (gpu.train_images, gpu.epochs, gpu.lr, gpu.lr_drop_epoch, gpu.batch) == \
        (0, 50, 1e-3, 40, 128)
    # the CPU run: narrower and shorter, the same shape (drop at 80% of the epochs)
    assert (cpu.layers, cpu.stage, cpu.depth, cpu.lr, cpu.batch, cpu.weight_decay) == \
        (gpu.layers, gpu.stage, gpu.depth, gpu.lr, gpu.batch, gpu.weight_decay)
    assert cpu.lr_drop_epoch / cpu.epochs == gpu.lr_drop_epoch / gpu.epochs


def test_the_cli_runs_and_stores(capsys, monkeypatch):
    monkeypatch.setitem(table2.CONFIGS, "tiny", TINY)
    monkeypatch.setitem(ch06_table2.CONFIGS, "tiny", TINY)
    assert ch06_table2.main(["--config", "tiny", "--processes", "1"]) == 0
    out = capsys.readouterr().out
    assert "fine-tuned, adjoint" in out and "tied, before fine-tuning" in out
    with pytest.raises(SystemExit):
        ch06_table2.main(["--config", "nope"])
    assert "invalid choice" in capsys.readouterr().err


def test_the_page_shows_the_current_cpu_result_else_a_smoke_run(monkeypatch):
    monkeypatch.setitem(ch06_table2.CONFIGS, "smoke", TINY)
    monkeypatch.setitem(ch06_table2.CONFIGS, "cpu", replace(TINY, name="cpu"))
    monkeypatch.setattr(table2, "default_processes", lambda: 1)
    data, cfg, result = ch06_table2.for_page(quick=True)
    assert result is None and cfg is TINY and len(data["runs"]["adjoint"]["test_accuracy"]) == 3
    assert not (ch06_table2.shipped.results_dir() / ".partial").exists()   # nothing left
    ch06_table2.table2("cpu", processes=1)
    data, cfg, result = ch06_table2.for_page(quick=True)
    assert cfg.name == "cpu" and result is not None and result.name == "ch06-table2-cpu"


def test_a_device_this_machine_lacks_is_an_argparse_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit):
        ch06_table2.main(["--config", "smoke", "--device", "cuda"])
    assert "cuda" in capsys.readouterr().err
    assert ch06_table2.command("gpu-full", "cuda").endswith(
        "--config gpu-full --device cuda --download")
    assert ch06_table2.command("cpu") == "python -m resode_tut.experiments.ch06_table2 --config cpu"

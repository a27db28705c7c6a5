"""Chapter 6's CIFAR measurements, training and result cache."""
import copy
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_batches

from resode_tut import CifarResNet, untie
from resode_tut.datasets import cifar as cifar_data
from resode_tut.datasets.cifar import cifar10
from resode_tut.experiments import ch06 as finetune
from resode_tut.experiments import finetune as compute
from resode_tut.experiments.cifar_training import (
    gradient_agreement,
    stage_saved_bytes,
    train,
)

TINY = finetune.FinetuneConfig("tiny", train_images=120, test_images=40, channels=4,
                               pretrain_depth=2, pretrain_epochs=1, depth=8, epochs=1,
                               batch=40, eval_depths=(2, 8), memory_depths=(2, 8),
                               memory_batch=8, gradient_depths=(2, 8), gradient_batch=8)


@pytest.fixture(autouse=True)
def default_data(tmp_path_factory, monkeypatch):
    """A small CIFAR-10 folder as the default data copy (``RESODE_DATA``)."""
    root = tmp_path_factory.getbasetemp() / "default-cifar"
    if not (root / "cifar-10-batches-py").is_dir():
        write_batches(root, 40)
    monkeypatch.setenv("RESODE_DATA", str(root))
    return root


def _fake_result(config, device="cpu", data_id=None):
    """A complete result of ``config`` with made-up numbers (for cache tests only)."""
    from resode_tut.experiments.finetune_result import (
        Agreement,
        FineTuning,
        Gradients,
        Memory,
        Pretraining,
    )
    methods = finetune.METHODS
    agree = lambda: Agreement([0.1], 0.1, 0.1, 0.3)
    data_id = cifar_data.data_identity() if data_id is None else data_id
    return finetune.FinetuneResult(
        config=config, key=finetune.cache_key(config, device, data_id),
        code=finetune.code_version(), device="cpu", torch=torch.__version__,
        data_source="test", data_id=data_id, train_images=1,
        test_images=1,
        pretrain=Pretraining(config.pretrain_depth, [0.5], [1.0], [1.0], {2: 0.45}, 0.4),
        depth=config.depth,
        finetune={m: FineTuning([0.5] * (config.epochs + 1), [1.0] * config.epochs,
                                [1.0] * config.epochs, 1.0, 0.0 if m == "decay" else 1.0)
                  for m in (*methods, "decay")},
        stage_gap=0.01,
        memory=Memory(list(config.memory_depths), 1,
                      {m: [1] * len(config.memory_depths) for m in methods},
                      {m: [] for m in methods}),
        gradients=Gradients(list(config.gradient_depths), 1,
                            [agree() for _ in config.gradient_depths],
                            {m: agree() for m in methods}, [0.1] * config.epochs),
        seconds=1.0, load_average=[0.25, 0.5])


_WRITER = """
import sys
sys.path.insert(0, {root!r})
from resode_tut.experiments import ch06 as finetune
import test_ch06
tiny = test_ch06.TINY
result = test_ch06._fake_result(tiny)
result.pretrain.train_loss = [1.0] * 100_000       # a large file: a torn write would be seen
finetune.run = lambda *a, **k: result
for _ in range(15):
    finetune.train_or_load(tiny, "cpu", {out!r}, force=True)
"""


def test_adjoint_keeps_one_state_whatever_the_depth():
    x = torch.randn(6, 3, 32, 32)
    state = 6 * 16 * 10 * 10 * 4  # bytes of one float32 stage state
    for depth in (4, 16):
        model = CifarResNet(depth, zero_init=False)
        assert stage_saved_bytes(model, x, "adjoint") == 2 * state  # x_0 and x_N
        backprop = stage_saved_bytes(model, x, "backprop")
        assert 3 * depth * state <= backprop <= 5 * depth * state


def test_gradient_agreement_is_exact_when_the_residuals_vanish():
    # zero-initialised functions are f = 0: the Euler reversal is exact
    model = CifarResNet(8, zero_init=True)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    out = gradient_agreement(model, x, y)
    assert out.total < 1e-5 and out.max < 1e-8


@pytest.mark.slow
def test_gradient_agreement_improves_with_depth():
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    errors = [gradient_agreement(CifarResNet(n, zero_init=False, seed=0), x, y).median
              for n in (4, 16, 64)]
    assert errors[0] > 3 * errors[1] > 9 * errors[2], errors
    with pytest.raises(ValueError, match="gradient method"):
        stage_saved_bytes(CifarResNet(2), x, "checkpoint")


@pytest.mark.slow
def test_training_is_seeded_and_the_adjoint_follows_backprop(tmp_path):
    write_batches(tmp_path, 32)
    tr, te = cifar10(tmp_path, True), cifar10(tmp_path, False)
    runs = {}
    for name, method in (("a", "backprop"), ("b", "backprop"), ("c", "adjoint")):
        model = untie(CifarResNet(2, channels=4, tied=True, zero_init=False, seed=0), 16)
        runs[name] = train(model, tr, te, epochs=2, lr=0.05, method=method, batch=32, seed=5)
        assert model.stage.adjoint is False
    assert runs["a"].train_loss == runs["b"].train_loss
    assert np.allclose(runs["a"].train_loss, runs["c"].train_loss, rtol=2e-2)
    assert runs["a"].train_loss[-1] < runs["a"].train_loss[0]  # it learns


def _finetune_runs(tmp_path, monkeypatch=None, zero_adjoint=False):
    """Chapter 6's three fine-tunings (``compute._finetune``) of a small untied network."""
    write_batches(tmp_path, 32)
    tr, te = cifar10(tmp_path, True), cifar10(tmp_path, False)
    config = dataclasses.replace(TINY, epochs=2, lr=0.05)
    start = untie(CifarResNet(2, channels=4, tied=True, zero_init=False, seed=0), 8)
    if zero_adjoint:   # sabotage: an adjoint that returns zeros for the stage
        real = compute.train

        def broken(model, *args, method="backprop", **kwargs):
            hooks = [p.register_hook(torch.zeros_like) for p in model.stage.parameters()
                     ] if method == "adjoint" else []
            try:
                return real(model, *args, method=method, **kwargs)
            finally:
                for h in hooks:
                    h.remove()

        monkeypatch.setattr(compute, "train", broken)

    def fit(phase):
        return dict(device=torch.device("cpu"), batch=32)

    curves, models, _ = compute._finetune(start, config, tr, te, torch.device("cpu"), fit,
                                          None)
    gap = float((compute._stage_vector(models["adjoint"])
                 - compute._stage_vector(models["backprop"])).norm())
    return start, config, curves, models, gap


def test_fine_tuning_trains_the_stage_alone_and_the_control_is_weight_decay(tmp_path):
    start, config, curves, models, gap = _finetune_runs(tmp_path)
    for m in ("backprop", "adjoint"):
        tuned = dict(models[m].named_parameters())
        for name, p in start.named_parameters():
            if not name.startswith("stage."):
                assert torch.equal(tuned[name], p), f"{m} changed {name}"
        assert all(p.requires_grad for p in models[m].parameters())   # restored
    # the control: SGD (momentum 0.9) on weight decay alone scales the stage by one factor
    p, v = 1.0, 0.0
    for _ in range(config.epochs * -(-len(cifar10(tmp_path, True)) // 32)):
        v = 0.9 * v + 5e-4 * p
        p = p - config.lr * v
    assert curves["decay"].stage_travel == pytest.approx(
        (1 - p) * float(compute._stage_vector(start).norm()), rel=1e-3)   # float32 steps
    assert curves["decay"].gradient_travel == 0
    # what the chapter asserts: the adjoint moved the stage where backprop moved it
    moved = curves["backprop"].gradient_travel
    assert moved > 0 and gap < 0.5 * moved


def test_a_zeroed_adjoint_gradient_fails_the_chapters_checks(tmp_path, monkeypatch):
    _, _, curves, _, gap = _finetune_runs(tmp_path, monkeypatch, zero_adjoint=True)
    assert curves["adjoint"].gradient_travel == pytest.approx(0, abs=1e-12)
    assert gap > 0.9 * curves["backprop"].gradient_travel
    assert curves["adjoint"].train_loss == curves["decay"].train_loss


def test_the_cache_key_follows_configuration_device_code_and_data(monkeypatch):
    key = finetune.cache_key(TINY, "cpu", "other:1")
    assert key == finetune.cache_key(TINY, "cpu", "other:1")
    assert key != finetune.cache_key(finetune.FinetuneConfig(**{**TINY.__dict__, "lr": 0.02}),
                                     "cpu", "other:1")
    assert key != finetune.cache_key(TINY, "cuda", "other:1")
    assert key != finetune.cache_key(TINY, "cpu", "official:1")
    monkeypatch.setattr(compute, "code_version", lambda: "something else")
    assert key != finetune.cache_key(TINY, "cpu", "other:1")


def test_a_result_from_one_data_copy_is_never_served_for_another(tmp_path, monkeypatch):
    mirror, official = tmp_path / "mirror", tmp_path / "official"
    write_batches(mirror, 10)
    folder = write_batches(official, 10, names=".png", seed=1)
    sums = {p.name: cifar_data._md5(p) for p in folder.iterdir()}
    monkeypatch.setattr(cifar_data, "_TRAIN", tuple((n, sums[n]) for n, _ in cifar_data._TRAIN))
    monkeypatch.setattr(cifar_data, "_TEST", (("test_batch", sums["test_batch"]),))
    ids = {root: cifar_data.data_identity(root) for root in (mirror, official)}
    assert ids[official].startswith("official:") and ids[mirror].startswith("other:")
    runs = []
    monkeypatch.setattr(finetune, "run", lambda config, device, root, *options: runs.append(
        root) or _fake_result(TINY, data_id=cifar_data.data_identity(root)))
    out = tmp_path / "results"
    from_mirror = finetune.train_or_load(TINY, "cpu", out, data_root=mirror)
    assert finetune.train_or_load(TINY, "cpu", out, data_root=mirror).cached
    assert finetune.load(TINY, "cpu", out, data_root=official) is None
    from_official = finetune.train_or_load(TINY, "cpu", out, data_root=official)
    assert not from_official.cached and runs == [mirror, official]
    assert from_official.data_id == ids[official] and from_mirror.data_id == ids[mirror]
    # one stored result per configuration and device: the official one replaced the
    # mirror's, which is no longer served for the mirror
    assert finetune.load(TINY, "cpu", out, data_root=official) == from_official
    assert finetune.load(TINY, "cpu", out, data_root=mirror) is None
    # showing a result made elsewhere (a shipped one): whatever its copy, which it names
    assert finetune.load(TINY, "cpu", out, any_data=True).data_id == ids[official]
    assert finetune.train_or_load(TINY, "cpu", out, data_root=mirror, any_data=True).cached
    assert runs == [mirror, official]
    assert finetune.stale_results(TINY, out) == []
    # one changed byte makes another copy
    batch = official / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:-1] + b"\x00")
    assert cifar_data.data_identity(official) != ids[official]
    assert finetune.load(TINY, "cpu", out, data_root=official) is None


def test_bad_configuration_or_device_is_named():
    with pytest.raises(ValueError, match="unknown configuration 'huge'"):
        finetune.run("huge")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        finetune.run(TINY, device="gpu0")


def test_command_line_runs_writes_and_serves_only_current_results(tmp_path, monkeypatch, capsys):
    write_batches(tmp_path / "data", 40)
    monkeypatch.setitem(finetune.CONFIGS, "tiny", TINY)
    out = tmp_path / "results"
    argv = ["--config", "tiny", "--device", "cpu", "--data", str(tmp_path / "data"),
            "--out", str(out)]
    assert finetune.main(argv) == 0
    printed = capsys.readouterr().out
    assert cifar_data.JPEG_MIRROR in printed
    [path] = out.glob("ch06-tiny-*.json")
    assert path.name == "ch06-tiny-cpu.json" and path.with_suffix(".png").is_file()
    stored = json.loads(path.read_text())
    assert stored["provenance"]["command"].startswith("python -m resode_tut.experiments.ch06")
    assert stored["provenance"]["torch"] == torch.__version__
    result = finetune.FinetuneResult.from_json(json.dumps(stored["data"]),
                                               finetune.FinetuneConfig)
    assert result.data_source == cifar_data.JPEG_MIRROR and result.train_images == 120
    assert len(result.finetune["adjoint"].test_accuracy) == 2  # start + 1 epoch
    assert result.config == TINY and result.pretrain.accuracy_at_depth.keys() == {2, 8}
    data = tmp_path / "data"
    loaded = finetune.load(TINY, "cpu", out, data_root=data)
    assert loaded == result and loaded.cached and loaded.path == str(path)
    assert result.data_id == cifar_data.data_identity(data)
    # a change of code makes the stored result stale: never served
    monkeypatch.setattr(compute, "code_version", lambda: "changed")
    assert finetune.load(TINY, "cpu", out, data_root=data) is None
    assert finetune.stale_results(TINY, out) == [path]
    # and a result file whose content has another key is not served either
    monkeypatch.undo()
    monkeypatch.setitem(finetune.CONFIGS, "tiny", TINY)
    assert finetune.stale_results(TINY, out) == []
    stored["data"]["key"] = "old"
    path.write_text(json.dumps(stored))
    assert finetune.load(TINY, "cpu", out, data_root=data) is None
    # RESODE_RECOMPUTE=1: never loaded
    stored["data"]["key"] = stored["key"]
    path.write_text(json.dumps(stored))
    assert finetune.load(TINY, "cpu", out, data_root=data) == result
    monkeypatch.setenv("RESODE_RECOMPUTE", "1")
    assert finetune.load(TINY, "cpu", out, data_root=data) is None


def test_the_result_round_trips_through_json_and_malformed_files_are_named():
    good = _fake_result(TINY)
    back = finetune.FinetuneResult.from_json(good.to_json(), finetune.FinetuneConfig)
    assert back == good and isinstance(back.config, finetune.FinetuneConfig)
    data = json.loads(good.to_json())
    for broken, message in ((good.to_json()[:100], "not JSON"),
                            (json.dumps({k: v for k, v in data.items() if k != "memory"}),
                             "missing \\['memory'\\]"),
                            (json.dumps({**data, "extra": 1}), "unexpected \\['extra'\\]"),
                            (json.dumps({**data, "memory": None}), "Memory: expected an object"),
                            ("[]", "malformed")):
        with pytest.raises(finetune.MalformedResult, match=message):
            finetune.FinetuneResult.from_json(broken, finetune.FinetuneConfig)


def test_validate_names_what_is_incomplete_or_not_finite():
    good = _fake_result(TINY)
    assert finetune.validate(good, TINY) is None
    no_load = dataclasses.replace(good, load_average=[float("nan"), float("nan")])
    assert finetune.validate(no_load, TINY) is None      # an OS without load averages
    short = copy.deepcopy(good)
    short.finetune["adjoint"].test_accuracy.pop()
    assert "adjoint: 0 of 1 epochs" in finetune.validate(short, TINY)
    nan = copy.deepcopy(good)
    nan.gradients.pretrained[0].median = float("nan")
    assert "1 non-finite" in finetune.validate(nan, TINY)
    assert "another configuration" in finetune.validate(good, finetune.CONFIGS["quick"])
    no_control = copy.deepcopy(good)
    del no_control.finetune["decay"]
    assert finetune.validate(no_control, TINY) == "no complete weight-decay-only run"


def test_damaged_or_incomplete_cache_files_are_recomputed_with_a_warning(tmp_path, monkeypatch):
    runs = []
    monkeypatch.setattr(finetune, "run", lambda *a, **k: runs.append(1) or _fake_result(TINY))
    first = finetune.train_or_load(TINY, "cpu", tmp_path)
    assert runs == [1] and not first.cached
    path = Path(first.path)
    assert finetune.train_or_load(TINY, "cpu", tmp_path).cached and runs == [1]
    short = _fake_result(TINY)
    short.finetune["backprop"].test_accuracy.pop()
    wrapped = json.loads(path.read_text())
    wrapped["data"] = json.loads(short.to_json())
    old_format = json.loads(path.read_text())    # another version's fields: whole JSON
    del old_format["data"]["finetune"]["decay"]["gradient_travel"]
    for damage in (path.read_text()[:200], "", short.to_json(), "[1, 2]", "null",
                   json.dumps(wrapped), json.dumps(old_format)):
        path.write_text(damage)
        with pytest.warns(UserWarning,
                          match="ignoring the (damaged|unreadable|incomplete) result file"):
            assert finetune.load(TINY, "cpu", tmp_path) is None
        with pytest.warns(UserWarning):
            assert not finetune.train_or_load(TINY, "cpu", tmp_path).cached
        assert finetune.load(TINY, "cpu", tmp_path) == _fake_result(TINY)   # repaired
    assert len(runs) == 8


def test_an_incomplete_run_is_never_cached(tmp_path, monkeypatch):
    broken = _fake_result(TINY)
    broken.finetune["backprop"].test_accuracy = [float("nan")] * (TINY.epochs + 1)
    monkeypatch.setattr(finetune, "run", lambda *a, **k: broken)
    with pytest.raises(RuntimeError, match="non-finite.*not cached"):
        finetune.train_or_load(TINY, "cpu", tmp_path)
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.slow
def test_two_writers_and_a_reader_never_see_half_a_file(tmp_path):
    import subprocess
    import sys

    code = _WRITER.format(root=str(Path(__file__).parent), out=str(tmp_path))
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])}
    writers = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    seen = 0
    while any(w.poll() is None for w in writers):
        for path in tmp_path.glob("ch06-*.json"):
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            json.loads(text)        # never a JSONDecodeError: the file is whole
            seen += 1
    assert [w.wait() for w in writers] == [0, 0]
    assert seen > 0 and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_of_the_adjoint_is_below_backprop():
    from resode_tut.experiments.cifar_training import cuda_step_peak_mib

    model = CifarResNet(32, zero_init=False).cuda()
    x, y = torch.randn(64, 3, 32, 32, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    assert cuda_step_peak_mib(model, x, y, "adjoint") < cuda_step_peak_mib(model, x, y,
                                                                            "backprop") / 4


def test_command_line_names_an_unknown_device_before_any_work(capsys, monkeypatch):
    monkeypatch.setattr(finetune, "train_or_load", lambda *a, **k: pytest.fail("ran"))
    with pytest.raises(SystemExit) as stop:
        finetune.main(["--config", "quick", "--device", "gpu0"])
    assert stop.value.code == 2 and "--device: unknown device 'gpu0'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            finetune.main(["--config", "quick", "--device", "cuda"])
        assert "torch sees no GPU" in capsys.readouterr().err


def test_the_configuration_prints_within_the_column():
    for name in finetune.CONFIGS:
        text = finetune.describe_config(name, width=80)
        assert max(len(line) for line in text.split("\n")) <= 80
        for f in dataclasses.fields(finetune.FinetuneConfig)[1:]:
            assert f"{f.name}=" in text


def test_the_command_line_names_missing_data_without_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit):
        finetune.main(["--config", "smoke", "--device", "cpu", "--data", str(tmp_path / "no"),
                       "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "--data: CIFAR-10 not found" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()

"""CIFAR-10 loading and augmentation, the CIFAR ResNet, untying, and the chapter 6
measurements, checked against independent computations."""
import hashlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from resode_tut import cifar_data, data, finetune
from resode_tut.cifar_data import augment, cifar10, normalise
from resode_tut.cifar_resnet import CifarResNet, untie
from resode_tut.cifar_training import (accuracy, gradient_agreement, recalibrate_batchnorm,
                                       stage_saved_bytes, train)

SHARED_ROOT = os.environ.get("RESODE_DATA", "")


def _write_batches(root: Path, n_per_batch: int = 40, names: str = ".jpg", seed: int = 0):
    """A fake ``cifar-10-batches-py`` folder: class-coloured noise, learnable."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, n_per_batch)
        images = rng.integers(0, 256, (n_per_batch, 3, 32, 32)).astype(np.float64)
        images[:, 0] = 0.5 * images[:, 0] + 12 * labels[:, None, None]  # the class is visible
        batch = {b"data": images.clip(0, 255).astype(np.uint8).reshape(n_per_batch, -1),
                 b"labels": labels.tolist(),
                 b"filenames": [f"img_{i}{names}".encode() for i in range(n_per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


# -- data ------------------------------------------------------------------------
def test_data_module_exposes_the_loader():
    assert data.cifar10 is cifar10


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        cifar10(tmp_path, train=True)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert "download=True" in msg and "make_cifar10.py" in msg


def test_reads_the_python_batch_layout_and_names_the_copy(tmp_path):
    _write_batches(tmp_path, 40)
    train_split, test_split = cifar10(tmp_path, True), cifar10(tmp_path, False)
    assert train_split.images.shape == (200, 3, 32, 32) and train_split.images.dtype == torch.uint8
    assert test_split.labels.shape == (40,) and test_split.labels.dtype == torch.int64
    assert train_split.source == cifar_data.JPEG_MIRROR
    # pixel (c, i, j) of image k is byte c*1024 + i*32 + j of row k (CHW order)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        row = pickle.load(f)[b"data"][3]
    assert train_split.images[43, 2, 5, 7] == row[2 * 1024 + 5 * 32 + 7]
    other = tmp_path / "other"
    _write_batches(other, 10, names=".png")
    assert cifar10(other, False).source == cifar_data.UNKNOWN


def test_official_batches_are_recognised_by_md5(tmp_path, monkeypatch):
    folder = _write_batches(tmp_path, 10, names=".png")
    md5 = hashlib.md5((folder / "test_batch").read_bytes()).hexdigest()
    monkeypatch.setattr(cifar_data, "_TEST", (("test_batch", md5),))
    assert cifar10(tmp_path, False).source == cifar_data.OFFICIAL


def _archive(tmp_path) -> Path:
    src = tmp_path / "src"
    _write_batches(src, 10)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def test_download_checks_the_md5_and_unpacks(tmp_path, monkeypatch):
    archive = _archive(tmp_path)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(cifar_data, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(cifar_data, "CIFAR10_MD5", md5)
    split = cifar10(tmp_path / "root", train=False, download=True)
    assert len(split) == 10


def test_download_with_a_wrong_md5_fails_clearly(tmp_path, monkeypatch):
    archive = _archive(tmp_path)
    monkeypatch.setattr(cifar_data, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(cifar_data, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(RuntimeError, match="MD5"):
        cifar10(tmp_path / "root", train=False, download=True)


def test_failed_download_names_the_url_and_the_offline_route(tmp_path, monkeypatch):
    url = (tmp_path / "nowhere.tar.gz").as_uri()
    monkeypatch.setattr(cifar_data, "CIFAR10_URL", url)
    with pytest.raises(RuntimeError) as err:
        cifar10(tmp_path / "root", train=False, download=True)
    assert url in str(err.value) and "make_cifar10.py" in str(err.value)


@pytest.mark.skipif(not (Path(SHARED_ROOT) / "cifar-10-batches-py").is_dir(),
                    reason="set RESODE_DATA to a folder made by ../shared/data/make_cifar10.py")
def test_the_real_data_set():
    train_split, test_split = cifar10(SHARED_ROOT, True), cifar10(SHARED_ROOT, False)
    assert len(train_split) == 50000 and len(test_split) == 10000
    assert torch.bincount(train_split.labels).tolist() == [5000] * 10
    assert train_split.source in (cifar_data.JPEG_MIRROR, cifar_data.OFFICIAL)
    # the published per-channel means of the training images, to JPEG precision
    mean = train_split.images[:10000].double().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(cifar_data.MEAN, dtype=torch.float64), atol=5e-3)


def test_normalise_matches_the_formula_and_rejects_bad_shapes():
    x = torch.rand(2, 3, 4, 4)
    out = normalise(x)
    assert torch.allclose(out[1, 2], (x[1, 2] - cifar_data.MEAN[2]) / cifar_data.STD[2])
    with pytest.raises(ValueError, match="shape"):
        normalise(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="float"):
        normalise(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_augment_returns_a_window_of_the_padded_image_possibly_mirrored():
    x = torch.rand(16, 3, 8, 8)
    out = augment(x, torch.Generator().manual_seed(0), padding=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for k in range(len(x)):  # brute force over every offset and flip
        found = []
        for i in range(5):
            for j in range(5):
                window = padded[k, :, i:i + 8, j:j + 8]
                found += [f for f, v in ((False, window), (True, window.flip(-1)))
                          if torch.equal(out[k], v)]
        assert found, f"image {k} is not a crop of its padded image"
        flips += all(found)
    assert 0 < flips < len(x)  # both flipped and unflipped images occur
    again = augment(x, torch.Generator().manual_seed(0), padding=2)
    assert torch.equal(out, again)


# -- model and untying -------------------------------------------------------------
def test_untie_a_tied_network_computes_the_same_function():
    tied = CifarResNet(8, tied=True, zero_init=False, seed=1)
    untied = untie(tied, 8)
    assert len({id(p) for p in untied.stage.parameters()}) == 8 * 6
    x = torch.randn(5, 3, 32, 32)
    for mode in ("eval", "train"):
        getattr(tied, mode)(), getattr(untied, mode)()
        assert torch.allclose(tied(x), untied(x), atol=1e-6)
    # the copies are independent: changing one leaves the others
    with torch.no_grad():
        untied.stage.functions[0].conv1.weight.add_(1.0)
    assert not torch.equal(untied.stage.functions[0].conv1.weight,
                           untied.stage.functions[1].conv1.weight)


def test_untie_samples_the_old_stage_at_the_new_times():
    old = CifarResNet(4, zero_init=False, seed=2)
    new = untie(old, 8)
    for n, f in enumerate(new.stage.functions):  # t = n/8 lies in [k/4, (k+1)/4), k = n // 2
        assert torch.equal(f.conv2.weight, old.stage.functions[n // 2].conv2.weight)


def test_a_tied_network_at_growing_depth_converges_like_euler():
    tied = CifarResNet(4, tied=True, zero_init=False, seed=3).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        ref = untie(tied, 512)(x)
        errors = [(untie(tied, n)(x) - ref).norm().item() for n in (8, 16, 32, 64)]
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 1.6) & (ratios < 2.6)), ratios  # first order: halves with h


def test_cifar_resnet_rejects_wrong_inputs():
    with pytest.raises(ValueError, match="depth"):
        CifarResNet(0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        CifarResNet(2)(torch.randn(2, 1, 32, 32))


def test_recalibration_sets_running_statistics_to_the_data_average(tmp_path):
    _write_batches(tmp_path, 16)
    tr = cifar10(tmp_path, True)
    model = untie(CifarResNet(2, channels=4, tied=True, zero_init=False, seed=0), 4).eval()
    before = [p.clone() for p in model.parameters()]
    recalibrate_batchnorm(model, tr, batches=2, batch=16, seed=3)
    assert not model.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # the stem's BatchNorm sees conv(x) whatever the batch: its running mean must be the
    # mean of conv(x) over the 32 images used (same seeded order)
    idx = torch.randperm(len(tr), generator=torch.Generator().manual_seed(3))[:32]
    with torch.no_grad():
        z = model.stem[0](normalise(tr.images[idx].float() / 255))
    assert torch.allclose(model.stem[1].running_mean, z.mean(dim=(0, 2, 3)), atol=1e-5)
    assert model.stem[1].momentum == 0.1  # restored
    # every copy of the untied stage now has statistics of its own step
    means = [f.bn1.running_mean for f in model.stage.functions]
    assert not torch.allclose(means[0], means[-1])


# -- measurements --------------------------------------------------------------------
def test_adjoint_keeps_one_state_whatever_the_depth():
    x = torch.randn(6, 3, 32, 32)
    state = 6 * 16 * 10 * 10 * 4  # bytes of one float32 stage state
    for depth in (4, 16):
        model = CifarResNet(depth, zero_init=False)
        assert stage_saved_bytes(model, x, "adjoint") == state
        backprop = stage_saved_bytes(model, x, "backprop")
        assert 3 * depth * state <= backprop <= 5 * depth * state


def test_gradient_agreement_is_exact_when_the_residuals_vanish():
    # zero-initialised functions are f = 0: the Euler reversal is exact
    model = CifarResNet(8, zero_init=True)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    out = gradient_agreement(model, x, y)
    assert out["total"] < 1e-5 and out["max"] < 1e-8


def test_gradient_agreement_improves_with_depth():
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    errors = [gradient_agreement(CifarResNet(n, zero_init=False, seed=0), x, y)["median"]
              for n in (4, 16, 64)]
    assert errors[0] > 3 * errors[1] > 9 * errors[2], errors
    with pytest.raises(ValueError, match="gradient method"):
        stage_saved_bytes(CifarResNet(2), x, "checkpoint")


def test_training_is_seeded_and_the_adjoint_follows_backprop(tmp_path):
    _write_batches(tmp_path, 32)
    tr, te = cifar10(tmp_path, True), cifar10(tmp_path, False)
    runs = {}
    for name, method in (("a", "backprop"), ("b", "backprop"), ("c", "adjoint")):
        model = untie(CifarResNet(2, channels=4, tied=True, zero_init=False, seed=0), 16)
        runs[name] = train(model, tr, te, epochs=2, lr=0.05, method=method, batch=32, seed=5)
        assert model.stage.adjoint is False
    assert runs["a"].train_loss == runs["b"].train_loss
    assert np.allclose(runs["a"].train_loss, runs["c"].train_loss, rtol=2e-2)
    assert runs["a"].train_loss[-1] < runs["a"].train_loss[0]  # it learns


# -- the experiment, its cache and its command line ---------------------------------------
TINY = finetune.FinetuneConfig("tiny", train_images=120, test_images=40, channels=4,
                               pretrain_depth=2, pretrain_epochs=1, depth=8, epochs=1,
                               batch=40, eval_depths=(2, 8), memory_depths=(2, 8),
                               memory_batch=8, gradient_depths=(2, 8), gradient_batch=8)


def test_the_cache_key_follows_configuration_device_and_code(monkeypatch):
    key = finetune.cache_key(TINY, "cpu")
    assert key == finetune.cache_key(TINY, "cpu")
    assert key != finetune.cache_key(finetune.FinetuneConfig(**{**TINY.__dict__, "lr": 0.02}),
                                     "cpu")
    assert key != finetune.cache_key(TINY, "cuda")
    monkeypatch.setattr(finetune, "code_version", lambda: "something else")
    assert key != finetune.cache_key(TINY, "cpu")


def test_bad_configuration_or_device_is_named():
    with pytest.raises(ValueError, match="unknown configuration 'huge'"):
        finetune.run("huge")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        finetune.run(TINY, device="gpu0")


def test_command_line_runs_writes_and_serves_only_current_results(tmp_path, monkeypatch, capsys):
    _write_batches(tmp_path / "data", 40)
    monkeypatch.setitem(finetune.CONFIGS, "tiny", TINY)
    out = tmp_path / "results"
    argv = ["--config", "tiny", "--device", "cpu", "--data", str(tmp_path / "data"),
            "--out", str(out)]
    assert finetune.main(argv) == 0
    printed = capsys.readouterr().out
    assert cifar_data.JPEG_MIRROR in printed
    [path] = out.glob("finetune-tiny-*.json")
    assert path.with_suffix(".png").is_file()
    result = json.loads(path.read_text())
    assert result["data_source"] == cifar_data.JPEG_MIRROR and result["train_images"] == 120
    assert len(result["finetune"]["adjoint"]["test_accuracy"]) == 2  # start + 1 epoch
    assert finetune.load(TINY, "cpu", out) == result
    # a change of code makes the stored result stale: never served
    monkeypatch.setattr(finetune, "code_version", lambda: "changed")
    assert finetune.load(TINY, "cpu", out) is None
    # and a result file whose content has another key is not served either
    monkeypatch.undo()
    monkeypatch.setitem(finetune.CONFIGS, "tiny", TINY)
    path.write_text(json.dumps({**result, "key": "old"}))
    assert finetune.load(TINY, "cpu", out) is None


def _fake_result(config, device="cpu"):
    """A complete result of ``config`` with made-up numbers (for cache tests only)."""
    methods = finetune.METHODS
    return {"config": json.loads(json.dumps(finetune.asdict(config))),
            "key": finetune.cache_key(config, device), "code": finetune.code_version(),
            "device": "cpu", "data_source": "test", "train_images": 1, "test_images": 1,
            "pretrain": {"depth": config.pretrain_depth, "test_accuracy": [0.5],
                         "train_loss": [1.0], "seconds": [1.0], "accuracy_at_depth": {},
                         "accuracy_shared_statistics": 0.4},
            "finetune": {"depth": config.depth,
                         **{m: {"test_accuracy": [0.5] * (config.epochs + 1),
                                "train_loss": [1.0] * config.epochs,
                                "seconds": [1.0] * config.epochs} for m in methods}},
            "memory": {"depths": list(config.memory_depths), "batch": 1,
                       "saved_bytes": {m: [1] * len(config.memory_depths) for m in methods},
                       "cuda_peak_mib": {m: [] for m in methods}},
            "gradients": {"depths": list(config.gradient_depths), "batch": 1,
                          "pretrained": [{"median": 0.1}] * len(config.gradient_depths),
                          "finetuned": {m: {"median": 0.1} for m in methods}},
            "seconds": 1.0, "load_average": [float("nan"), 0.5]}


def test_validate_names_what_is_missing_or_not_finite():
    good = _fake_result(TINY)
    assert finetune.validate(good, TINY) is None
    assert "missing ['memory']" in finetune.validate(
        {k: v for k, v in good.items() if k != "memory"}, TINY)
    short = json.loads(json.dumps(good))
    short["finetune"]["adjoint"]["test_accuracy"].pop()
    assert "adjoint: 0 of 1 epochs" in finetune.validate(short, TINY)
    nan = json.loads(json.dumps(good))
    nan["gradients"]["pretrained"][0] = {"median": float("nan")}
    assert "1 non-finite" in finetune.validate(nan, TINY)
    assert "another configuration" in finetune.validate(good, finetune.CONFIGS["quick"])


def test_damaged_or_incomplete_cache_files_are_recomputed_with_a_warning(tmp_path, monkeypatch):
    runs = []
    monkeypatch.setattr(finetune, "run", lambda *a, **k: runs.append(1) or _fake_result(TINY))
    first = finetune.train_or_load(TINY, "cpu", tmp_path)
    assert runs == [1] and not first["cached"]
    path = Path(first["path"])
    assert finetune.train_or_load(TINY, "cpu", tmp_path)["cached"] and runs == [1]
    for damage in (path.read_text()[:200], "", json.dumps({**_fake_result(TINY),
                                                            "memory": None})):
        path.write_text(damage)
        with pytest.warns(UserWarning, match=f"ignoring the (damaged|incomplete) result file"):
            assert finetune.load(TINY, "cpu", tmp_path) is None
        with pytest.warns(UserWarning):
            assert not finetune.train_or_load(TINY, "cpu", tmp_path)["cached"]
        assert finetune.validate(json.loads(path.read_text()), TINY) is None  # repaired
    assert len(runs) == 4


def test_an_incomplete_run_is_never_cached(tmp_path, monkeypatch):
    broken = _fake_result(TINY)
    broken["finetune"]["backprop"]["test_accuracy"] = [float("nan")] * (TINY.epochs + 1)
    monkeypatch.setattr(finetune, "run", lambda *a, **k: broken)
    with pytest.raises(RuntimeError, match="non-finite.*not cached"):
        finetune.train_or_load(TINY, "cpu", tmp_path)
    assert not list(tmp_path.glob("*.json"))


_WRITER = """
import sys, json
from pathlib import Path
sys.path.insert(0, {root!r})
from resode_tut import finetune
import test_cifar
tiny = test_cifar.TINY
result = test_cifar._fake_result(tiny)
result["pad"] = "x" * 2_000_000          # a large file: a torn write would be seen
finetune.run = lambda *a, **k: result
for _ in range(15):
    finetune.train_or_load(tiny, "cpu", {out!r}, force=True)
"""


def test_two_writers_and_a_reader_never_see_half_a_file(tmp_path):
    import subprocess
    import sys

    code = _WRITER.format(root=str(Path(__file__).parent), out=str(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    writers = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(2)]
    seen = 0
    while any(w.poll() is None for w in writers):
        for path in tmp_path.glob("finetune-*.json"):
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
    from resode_tut.cifar_training import cuda_step_peak_mib

    model = CifarResNet(32, zero_init=False).cuda()
    x, y = torch.randn(64, 3, 32, 32, device="cuda"), torch.randint(0, 10, (64,), device="cuda")
    assert cuda_step_peak_mib(model, x, y, "adjoint") < cuda_step_peak_mib(model, x, y,
                                                                            "backprop") / 4

"""Past one device (the "Scaling up" page): DDP over gloo, checkpoints and resuming,
mixed precision, and chapter 6's command line under torchrun with a worker killed."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import write_batches

from resode_tut import checkpoint as ckpt
from resode_tut import distributed
from resode_tut.datasets.cifar import cifar10
from resode_tut.experiments import ch07 as scaling
from resode_tut.experiments.cifar_training import train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """Enough fake CIFAR-10 for the "smoke" configuration (512 train, 256 test images)."""
    root = tmp_path_factory.mktemp("scaling-cifar")
    write_batches(root, 256)
    return root


# -- DistributedDataParallel --------------------------------------------------------------

@pytest.mark.parametrize("method", ["backprop", "adjoint"])
def test_two_processes_take_the_step_one_process_takes_on_the_whole_batch(method):
    """gloo, 2 processes, each half the batch (float64, BatchNorm in eval mode): the
    parameters after one SGD step equal one process's on the concatenated batch, so the
    adjoint's stage gradients reached DDP's all-reduce."""
    check = scaling.ddp_step_check(method)
    assert check.moved > 1e-3
    assert check.vs_one_process < 1e-12 * 1e3 * check.moved, check
    assert check.between_ranks == 0.0


def test_without_ddp_the_step_check_fails():
    """Each process stepping on its own half's gradient: the check sees it."""
    check = scaling.ddp_step_check("adjoint", use_ddp=False)
    assert check.vs_one_process > 0.1 * check.moved, check


def test_shard_splits_a_batch_into_contiguous_parts_in_rank_order():
    for n, k in ((8, 2), (7, 3), (3, 3), (130, 4)):
        parts = [distributed.shard(n, distributed.Distributed(r, k)) for r in range(k)]
        assert sum((list(range(n))[p] for p in parts), []) == list(range(n))
        sizes = [p.stop - p.start for p in parts]
        assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="at least 3"):
        distributed.shard(2, distributed.Distributed(0, 3))


def test_shard_weights_make_the_average_of_slice_means_the_global_mean():
    """DDP averages the K processes' gradients; each slice's mean loss times its weight
    must average to the global mean (independently: plain arithmetic on the losses)."""
    losses = torch.arange(1.0, 12.0, dtype=torch.float64)             # 11 per-sample terms
    for k in (1, 2, 3, 4):
        dists = [distributed.Distributed(r, k) for r in range(k)]
        parts = [distributed.shard(len(losses), d) for d in dists]
        weighted = [losses[p].mean() * distributed.shard_weight(len(losses[p]), len(losses), d)
                    for p, d in zip(parts, dists)]
        assert torch.allclose(torch.stack(weighted).mean(), losses.mean())
        if k == 3:   # unweighted slice means would not: the slices differ in size
            assert not torch.allclose(torch.stack([losses[p].mean() for p in parts]).mean(),
                                      losses.mean())


def test_per_slice_batchnorm_statistics_are_not_one_processs_step():
    """The equation is exact for per-sample losses only: in train mode BatchNorm
    normalises each slice by its own statistics."""
    check = scaling.ddp_step_check("backprop", batchnorm="train")
    assert check.between_ranks == 0.0 and check.vs_one_process > 1e-6, check


def test_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dist, device = distributed.setup("cpu")
    assert dist == distributed.Distributed() and not dist.enabled and dist.is_main
    assert device == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        distributed.setup("cpu")


# -- checkpoints and resuming -------------------------------------------------------------

@pytest.mark.parametrize("method, amp", [("backprop", None), ("adjoint", None),
                                         ("adjoint", "fp16")])
def test_an_interrupted_training_resumed_from_its_checkpoint_ends_bit_for_bit(method, amp,
                                                                             data_root):
    tr = cifar10(data_root, train=True).subset(256, 0)
    te = cifar10(data_root, train=False).subset(128, 0)
    check = scaling.resume_check(tr, te, method=method, amp=amp)
    assert check.parameter_difference == 0.0 and check.same_history, check


def test_resuming_without_the_generator_state_is_caught(data_root, monkeypatch):
    """The resume check can fail: a checkpoint whose batch-order state is not restored
    gives other weights."""
    real = ckpt.load

    def load_losing_the_order(*args, **kwargs):
        state = real(*args, **kwargs)
        state["generator"] = torch.Generator().manual_seed(99).get_state()
        return state

    monkeypatch.setattr(ckpt, "load", load_losing_the_order)
    tr = cifar10(data_root, train=True).subset(256, 0)
    te = cifar10(data_root, train=False).subset(128, 0)
    check = scaling.resume_check(tr, te, method="adjoint")
    assert check.parameter_difference > 1e-3 and not check.same_history


def test_a_finished_checkpoint_returns_at_once_and_a_foreign_one_is_refused(data_root,
                                                                           tmp_path):
    from resode_tut import CifarResNet
    tr = cifar10(data_root, train=True).subset(128, 0)
    te = cifar10(data_root, train=False).subset(64, 0)
    path = tmp_path / "run.pt"
    model = CifarResNet(2, 4, seed=0)
    hist = train(model, tr, te, 1, 0.05, batch=64, checkpoint=path, fingerprint="a")
    again = CifarResNet(2, 4, seed=1)      # other weights: replaced by the checkpoint's
    t0 = time.perf_counter()
    hist2 = train(again, tr, te, 1, 0.05, batch=64, checkpoint=path, fingerprint="a",
                  resume=True)
    assert time.perf_counter() - t0 < 5 and hist2 == hist
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 again.state_dict().values()))
    with pytest.raises(ckpt.CheckpointMismatch, match="another configuration"):
        train(CifarResNet(2, 4), tr, te, 1, 0.05, batch=64, checkpoint=path,
              fingerprint="b", resume=True)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize("damage", ["truncated", "code", "not-a-checkpoint"])
def test_a_damaged_or_unsafe_checkpoint_is_refused_by_name(tmp_path, damage):
    path = tmp_path / "c.pt"
    ckpt.save(path, {"epoch": 1, "model": {"w": torch.ones(3)}}, "f")
    assert ckpt.load(path, "f")["epoch"] == 1
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "code":
        torch.save({"format": ckpt.FORMAT, "fingerprint": "f", "x": _Payload()}, path)
    else:
        torch.save([1, 2], path)
    with pytest.raises(ValueError, match="c.pt"):
        ckpt.load(path, "f")
    assert not list(tmp_path.glob(".*tmp"))


# -- mixed precision ----------------------------------------------------------------------

def test_bf16_autocast_changes_the_adjoints_gradients_as_much_as_backprops():
    r = scaling.amp_check(depth=16)
    assert r["amp_backprop"] > 1e-3                        # autocast really rounds
    assert r["amp_adjoint"] < 1.5 * r["amp_backprop"], r
    assert r["adjoint_amp"] < r["adjoint_float32"] + r["amp_backprop"], r


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_training_runs_under_each_mixed_precision(amp, data_root):
    from resode_tut import CifarResNet
    tr = cifar10(data_root, train=True).subset(128, 0)
    te = cifar10(data_root, train=False).subset(64, 0)
    model = CifarResNet(4, 4, seed=0)
    hist = train(model, tr, te, 1, 0.05, method="adjoint", batch=64, amp=amp)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(hist.train_loss) == 1
    with pytest.raises(ValueError, match="mixed precision"):
        train(model, tr, te, 1, 0.05, amp="fp8")


# -- the command line under torchrun, a worker killed --------------------------------------

def _workers(pid):
    """Chapter 6 processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if parent == pid and b"resode_tut.experiments.ch06" in (
                        d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ch06(args, data_root, out):
    env = {**os.environ, "RESODE_DATA": str(data_root), "TQDM_DISABLE": "1",
           "OMP_NUM_THREADS": "1", "RESODE_CHECKPOINTS": str(Path(out) / "checkpoints")}
    # the c10d rendezvous (as for several nodes): each restart gets a fresh round
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "--rdzv-id=test",
           "-m", "resode_tut.experiments.ch06", "--config", "smoke", "--device", "cpu",
           "--out", str(out), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _result(out):
    (path,) = Path(out).glob("ch06-smoke-*.json")
    data = json.loads(path.read_text())["data"]
    for timing in ("seconds", "load_average"):
        data.pop(timing)
    for phase in data["finetune"].values():
        phase.pop("seconds")
    data["pretrain"].pop("seconds")
    return data


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds workers in /proc")
def test_torchrun_with_a_worker_killed_then_resumed_ends_as_an_uninterrupted_run(data_root,
                                                                                 tmp_path):
    """chapter 6's command line under torchrun (2 processes, gloo, local addresses): one
    worker SIGKILLed during the backprop fine-tuning ends the run; the same command with
    --resume continues from the last epoch's checkpoints (the finished pre-training is not
    run again) and the result and every phase's final weights equal an uninterrupted run's.
    """
    straight = _ch06([], data_root, tmp_path / "straight")
    log = straight.communicate(timeout=300)[0]
    assert straight.returncode == 0, log
    killed = _ch06([], data_root, tmp_path / "killed")
    marker = next((tmp_path / "straight" / "checkpoints").iterdir()).name
    watch = tmp_path / "killed" / "checkpoints" / marker / "finetune-backprop.pt"
    deadline = time.monotonic() + 240
    while not watch.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = _workers(killed.pid)
    assert watch.exists() and workers, "the run ended or stalled before the kill"
    killed_at = time.time()
    os.kill(max(workers), signal.SIGKILL)
    log = killed.communicate(timeout=300)[0]
    assert killed.returncode != 0 and "exitcode: -9" in log, log
    assert not list((tmp_path / "killed").glob("ch06-smoke-*.json"))
    resumed = _ch06(["--resume"], data_root, tmp_path / "killed")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log
    assert (watch.parent / "pretrain.pt").stat().st_mtime < killed_at   # not run again
    assert _result(tmp_path / "killed") == _result(tmp_path / "straight")
    for phase in ("pretrain", "finetune-backprop", "finetune-adjoint", "finetune-decay"):
        a = torch.load(tmp_path / "straight" / "checkpoints" / marker / f"{phase}.pt",
                       weights_only=True)["model"]
        b = torch.load(tmp_path / "killed" / "checkpoints" / marker / f"{phase}.pt",
                       weights_only=True)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), phase


def test_an_elastic_restart_resumes_by_itself(monkeypatch, tmp_path, data_root):
    """torchrun --max-restarts restarts workers with TORCHELASTIC_RESTART_COUNT > 0: the
    command line then resumes without --resume."""
    from resode_tut.experiments import ch06
    seen = []
    monkeypatch.setattr(ch06, "train_or_load", lambda *a: seen.append(a[-1]) or 1 / 0)
    for count, expected in (("0", False), ("1", True)):
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", count)
        with pytest.raises(ZeroDivisionError):
            ch06.main(["--config", "smoke", "--device", "cpu", "--out", str(tmp_path),
                       "--checkpoints", str(tmp_path / "c"), "--data", str(data_root)])
        assert seen[-1] is expected

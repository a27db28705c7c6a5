"""Data sets: spheres and digits; CIFAR-10 loading, download and augmentation, checked
against hand-made files."""
import hashlib
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_batches

from resode_tut import datasets
from resode_tut.datasets import cifar as cifar_data
from resode_tut.datasets import concentric_spheres, digits, xor
from resode_tut.datasets.cifar import augment, cifar10, normalise

SHARED_ROOT = os.environ.get("RESODE_DATA", "")


def _archive(tmp_path) -> Path:
    src = tmp_path / "src"
    write_batches(src, 10)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive


def test_data_module_exposes_the_loader():
    assert datasets.cifar10 is cifar10 and datasets.cifar.cifar10 is cifar10


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        cifar10(tmp_path, train=True)
    msg = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py") in msg
    assert "download=True" in msg and "make_cifar10.py" in msg


def test_reads_the_python_batch_layout_and_names_the_copy(tmp_path):
    write_batches(tmp_path, 40)
    train_split, test_split = cifar10(tmp_path, True), cifar10(tmp_path, False)
    assert train_split.images.shape == (200, 3, 32, 32) and train_split.images.dtype == torch.uint8
    assert test_split.labels.shape == (40,) and test_split.labels.dtype == torch.int64
    assert train_split.source == cifar_data.JPEG_MIRROR
    # pixel (c, i, j) of image k is byte c*1024 + i*32 + j of row k (CHW order)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_2", "rb") as f:
        row = pickle.load(f)[b"data"][3]
    assert train_split.images[43, 2, 5, 7] == row[2 * 1024 + 5 * 32 + 7]
    other = tmp_path / "other"
    write_batches(other, 10, names=".png")
    assert cifar10(other, False).source == cifar_data.UNKNOWN


def test_official_batches_are_recognised_by_md5(tmp_path, monkeypatch):
    folder = write_batches(tmp_path, 10, names=".png")
    md5 = hashlib.md5((folder / "test_batch").read_bytes()).hexdigest()
    monkeypatch.setattr(cifar_data, "_TEST", (("test_batch", md5),))
    assert cifar10(tmp_path, False).source == cifar_data.OFFICIAL


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


def test_digits_split_is_standardised_and_seeded():
    x_tr, y_tr, x_te, y_te = digits(test_fraction=0.25, seed=0)
    assert x_tr.shape[1] == 64 and len(x_tr) + len(x_te) == 1797
    assert len(x_te) == round(0.25 * 1797) and set(y_tr.tolist()) == set(range(10))
    assert x_tr.mean(0).abs().max() < 1e-4
    torch.testing.assert_close(digits(seed=0)[2], x_te)
    assert not torch.equal(digits(seed=1)[2], x_te)
    with pytest.raises(ValueError, match="test_fraction"):
        digits(test_fraction=1.5)


def test_spheres_shells_counts_and_seed():
    x, y = concentric_spheres(400, dim=3, seed=1)
    r = x.double().norm(dim=1)
    assert x.shape == (400, 3) and (y == 1).sum() == 200
    inner, middle = (r >= 0.10) & (r <= 0.15 + 1e-6), (r >= 0.25) & (r <= 0.30 + 1e-6)
    outer = (r >= 0.40) & (r <= 0.45 + 1e-6)
    assert (inner | middle | outer).all() and (y[middle] == 1).all() and (y[~middle] == 0).all()
    assert torch.equal(concentric_spheres(400, 3, seed=1)[0], x)
    with pytest.raises(ValueError, match="n must be an integer >= 4"):
        concentric_spheres(2)
    assert xor()[1].tolist() == [0, 1, 1, 0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(n=10.5), "n must be an integer >= 4"),
    (dict(n=float("nan")), "n must be an integer >= 4"),
    (dict(n=3), "n must be an integer >= 4"),
    (dict(n=100, dim=0), "dim must be an integer >= 1"),
    (dict(n=100, dtype=torch.int64), "floating-point torch.dtype"),
])
def test_bad_sphere_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        concentric_spheres(**kwargs)
    assert len(concentric_spheres(np.int64(8))[0]) == 8     # NumPy integers are integers


# -- untrusted and damaged files (issue 14, items 11 and 12) -----------------------------

class _Exploit:
    """Unpickling this calls a function of the attacker's choosing (here: write a file)."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "pwned"))


def _hand_loader(path):
    """An independent reader of a sound batch: plain pickle (trusted test data)."""
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    return np.asarray(batch[b"data"]).reshape(-1, 3, 32, 32), batch[b"labels"]


def test_the_restricted_loader_reads_what_a_plain_pickle_load_reads(tmp_path):
    folder = write_batches(tmp_path, 12)
    split = cifar10(tmp_path, train=False)
    images, labels = _hand_loader(folder / "test_batch")
    assert np.array_equal(split.images.numpy(), images) and split.labels.tolist() == labels
    for protocol in (2, 3, 4, 5):          # every pickle protocol NumPy arrays come in
        with open(folder / "test_batch", "wb") as f:
            pickle.dump({b"data": images.reshape(12, -1), b"labels": labels}, f,
                        protocol=protocol)
        assert np.array_equal(cifar10(tmp_path, train=False).images.numpy(), images)


@pytest.mark.parametrize("where", ["top", "inside"])
def test_a_malicious_pickle_is_refused_and_runs_nothing(tmp_path, where):
    folder = write_batches(tmp_path, 4)
    target = tmp_path / "created_by_the_data_file"
    payload = _Exploit(target)
    batch = payload if where == "top" else {b"data": np.zeros((4, 3072), np.uint8),
                                            b"labels": [0, 1, 2, payload]}
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(cifar_data.UnsafeFileError, match=r"test_batch.*write_text"):
        cifar10(tmp_path, train=False)
    assert not target.exists()                       # the loader ran nothing ...
    # ... where plain pickle.load runs it: the file really is an exploit
    with open(folder / "test_batch", "rb") as f:
        pickle.load(f)
    assert target.read_text() == "pwned"


def _write(folder, name, obj=None, raw=None):
    with open(folder / name, "wb") as f:
        f.write(raw if raw is not None else pickle.dumps(obj))


@pytest.mark.parametrize("case, message", [
    ("truncated", "damaged or not a CIFAR-10 python batch"),
    ("empty", "damaged or not a CIFAR-10 python batch"),
    ("garbage", "damaged or not a CIFAR-10 python batch"),
    ("not a dict", r"not a CIFAR-10 python batch \(a dict"),
    ("wrong shape", r"shape \(n, 3072\), got \(4, 100\)"),
    ("labels outside 0..9", r"labels outside 0\.\.9 \(min 0, max 10\)"),
    ("pixels outside 0..255", r"pixels outside 0\.\.255 \(min 0, max 300\)"),
    ("float pixels", "pixels must be integers"),
    ("float labels", r"list of int, got \['float'\]"),
    ("count mismatch", "4 images but 3 labels"),
    ("no images", "holds no images"),
    ("filenames not a list", r"b'filenames' must be a list of bytes, one per image; found int"),
    ("filenames too few", r"found 2 names for 4 images"),
])
def test_damaged_files_are_value_errors_naming_the_file_and_the_fault(tmp_path, case, message):
    folder = write_batches(tmp_path, 4)
    good = (folder / "test_batch").read_bytes()
    data, labels = np.zeros((4, 3072), np.uint8), [0, 1, 2, 3]
    if case == "truncated":
        _write(folder, "test_batch", raw=good[: len(good) // 2])
    elif case == "empty":
        _write(folder, "test_batch", raw=b"")
    elif case == "garbage":
        _write(folder, "test_batch", raw=np.random.default_rng(0).bytes(5000))
    elif case == "not a dict":
        _write(folder, "test_batch", [data, labels])
    elif case == "wrong shape":
        _write(folder, "test_batch", {b"data": np.zeros((4, 100), np.uint8), b"labels": labels})
    elif case == "labels outside 0..9":
        _write(folder, "test_batch", {b"data": data, b"labels": [0, 1, 2, 10]})
    elif case == "pixels outside 0..255":
        bad = data.astype(np.int64)
        bad[0, 0] = 300                      # would wrap around to 44 as uint8
        _write(folder, "test_batch", {b"data": bad, b"labels": labels})
    elif case == "float pixels":
        _write(folder, "test_batch", {b"data": data.astype(np.float32), b"labels": labels})
    elif case == "float labels":
        _write(folder, "test_batch", {b"data": data, b"labels": [0.0, 1.0, 2.0, 3.0]})
    elif case == "count mismatch":
        _write(folder, "test_batch", {b"data": data, b"labels": [0, 1, 2]})
    elif case == "no images":
        _write(folder, "test_batch", {b"data": data[:0], b"labels": []})
    elif case == "filenames not a list":
        _write(folder, "test_batch", {b"data": data, b"labels": labels, b"filenames": 5})
    elif case == "filenames too few":
        _write(folder, "test_batch", {b"data": data, b"labels": labels,
                                      b"filenames": [b"a.png", b"b.png"]})
    with pytest.raises(ValueError, match=message) as err:
        cifar10(tmp_path, train=False)
    assert str(folder / "test_batch") in str(err.value)
    assert "download=True" in str(err.value)


def test_download_repairs_a_damaged_copy(tmp_path, monkeypatch):
    archive = _archive(tmp_path)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(cifar_data, "CIFAR10_URL", archive.as_uri())
    monkeypatch.setattr(cifar_data, "CIFAR10_MD5", md5)
    root = tmp_path / "root"
    sound = cifar10(root, train=False, download=True)
    batch = root / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(batch.read_bytes()[:100])                   # cut short
    with pytest.raises(ValueError, match="damaged"):
        cifar10(root, train=False)                                 # no download: an error
    (root / "cifar-10-python.tar.gz").write_bytes(b"not the archive")  # and the archive too
    with pytest.warns(UserWarning, match="downloading the official archive again"):
        repaired = cifar10(root, train=False, download=True)
    assert torch.equal(repaired.images, sound.images)
    assert torch.equal(repaired.labels, sound.labels)


@pytest.mark.parametrize("make", [lambda: digits(dtype=torch.int64),
                                  lambda: xor(dtype=torch.int32)])
def test_integer_dtypes_are_refused_not_truncated(make):
    """digits(dtype=int64) used to truncate the standardised features to 26 values."""
    with pytest.raises(ValueError, match="floating-point"):
        make()


class _HugeView:
    """Pickles as numpy.ndarray(shape, uint8, buffer, 0, strides=(0, 1)): a million images
    declared over one image's bytes (3 GB if copied)."""

    def __reduce__(self):
        return (np.ndarray, ((1_000_000, 3072), np.dtype("u1"), b"\x00" * 3072, 0, (0, 1)))


def test_an_array_declared_over_too_few_bytes_is_refused_before_allocating(tmp_path):
    folder = write_batches(tmp_path, 4)
    _write(folder, "test_batch", {b"data": _HugeView(), b"labels": [0] * 1_000_000})
    assert (folder / "test_batch").stat().st_size < 3_000_000
    with pytest.raises(cifar_data.UnsafeFileError, match=r"test_batch.*numpy\.ndarray"):
        cifar10(tmp_path, train=False)


def test_a_contiguous_array_larger_than_its_file_is_refused(tmp_path, monkeypatch):
    """Any array the file cannot hold is refused by size as well (here the reconstructor
    is fooled into building a zero-stride view)."""
    write_batches(tmp_path, 4)
    real = np.lib.stride_tricks.as_strided(np.zeros(3072, np.uint8), (1000, 3072), (0, 1))
    monkeypatch.setattr(cifar_data, "_BatchUnpickler", _returning({b"data": real,
                                                                   b"labels": [0] * 1000}))
    with pytest.raises(ValueError, match=r"declares 1,000 images .* cannot hold"):
        cifar10(tmp_path, train=False)


def _returning(batch):
    class Fake:
        def __init__(self, *args, **kwargs):
            pass

        def load(self):
            return batch
    return Fake

"""CIFAR-10 from the official python-batch layout, with torch-only augmentation.

:func:`cifar10` reads ``root/cifar-10-batches-py/`` (the layout of the official
archive ``cifar-10-python.tar.gz``).  With ``download=True`` it fetches that
archive when the folder is missing and checks its MD5; otherwise a missing
data set is an error that says where it looked and how to get it.

Every loaded split names the copy it came from (:attr:`Cifar10.source`): the
official batches are recognised by their published MD5 sums; the JPEG mirror
made by ``../shared/data/make_cifar10.py`` (offline machines, CI) by its file
names.  JPEG re-encoding changes pixels slightly, so numbers measured on the
mirror are CIFAR-10-image numbers, not official CIFAR-10 results.

Augmentation is the usual one for CIFAR ResNets, written in torch (no
torchvision): a random 32 x 32 crop of the image padded by 4 pixels of zeros,
and a horizontal flip with probability 1/2.
"""
from __future__ import annotations

import _codecs
import hashlib
import os
import pickle
import tarfile
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["cifar10", "Cifar10", "UnsafeFileError", "data_identity", "default_root",
           "normalise", "augment", "prepare", "CLASSES", "CIFAR10_URL", "CIFAR10_MD5", "MEAN",
           "STD"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
# MD5 sums of the official batches (as published with the archive; torchvision uses them too)
_TRAIN = (("data_batch_1", "c99cafc152244af753f735de768cd75f"),
          ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
          ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
          ("data_batch_4", "634d18415352ddfa80567beed471001a"),
          ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"))
_TEST = (("test_batch", "40351d587109b95175f43aff81a1287e"),)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
# per-channel mean and standard deviation of the official training images' pixels.  Paper
# A's code (michaelsdr/resnet_nodes, as much CIFAR-10 code) divides by (0.2023, 0.1994,
# 0.2010) instead: the mean over images of each image's own standard deviation, not the
# pixels' standard deviation; its inputs come out about 1.2 times larger than ours.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)

OFFICIAL = "official CIFAR-10 archive (MD5-checked)"
JPEG_MIRROR = "CIFAR-10 JPEG mirror (../shared/data; lossy re-encoding, not official)"
UNKNOWN = "unverified copy of CIFAR-10 (not the official batches)"
SHORT_NAMES = {OFFICIAL: "official archive", JPEG_MIRROR: "JPEG mirror", UNKNOWN: "unverified copy"}


def default_root() -> Path:
    """Where chapter 6 looks for CIFAR-10: ``$RESODE_DATA``, else ``~/.cache/resode_tut``."""
    env = os.environ.get("RESODE_DATA", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "resode_tut"


@dataclass
class Cifar10:
    """One split of CIFAR-10, in memory.

    Attributes
    ----------
    images : torch.Tensor, shape (n, 3, 32, 32), uint8
    labels : torch.Tensor, shape (n,), int64, values 0..9 (see :data:`CLASSES`)
    source : str
        Which copy the images came from (official archive, JPEG mirror, unverified).
    path : pathlib.Path
        The ``cifar-10-batches-py`` folder read.
    train : bool
    """

    images: torch.Tensor
    labels: torch.Tensor
    source: str
    path: Path
    train: bool

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int, seed: int = 0) -> "Cifar10":
        """``n`` images drawn without replacement with a seeded permutation."""
        if not 0 < n <= len(self):
            raise ValueError(f"subset size must be in 1..{len(self)}, got {n}")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n]
        return Cifar10(self.images[idx], self.labels[idx], self.source, self.path, self.train)

    def float(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """The images as floats in [0, 1], shape (n, 3, 32, 32)."""
        return self.images.to(device).float() / 255


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _numpy_globals() -> dict:
    try:   # NumPy 2
        from numpy._core import multiarray, numeric
    except ImportError:   # NumPy 1
        from numpy.core import multiarray, numeric
    def reconstruct(cls, *args):
        # the one use of numpy.ndarray a batch makes: the class of an array to unpickle
        if cls is not _ARRAY_CLASS:
            raise UnsafeFileError(f"it asks to reconstruct an array of class {cls!r}")
        return multiarray._reconstruct(np.ndarray, *args)

    allowed = {("numpy", "ndarray"): _ARRAY_CLASS, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _codecs.encode}
    for package in ("numpy.core", "numpy._core"):   # names in files from NumPy 1 and 2
        allowed[package + ".multiarray", "_reconstruct"] = reconstruct
        if hasattr(numeric, "_frombuffer"):
            allowed[package + ".numeric", "_frombuffer"] = numeric._frombuffer
    return allowed


class _ArrayClass:
    """Stands for ``numpy.ndarray`` in a batch being unpickled: passed to the array
    reconstructor, never called (``ndarray(shape, buffer=..., strides=(0, 1))`` would
    declare a huge array over a few bytes).
    """

    def __call__(self, *args, **kwargs):
        raise UnsafeFileError("it calls numpy.ndarray(...) to build an array over a buffer")


_ARRAY_CLASS = _ArrayClass()


class UnsafeFileError(ValueError):
    """A data file asked the unpickler for something a CIFAR-10 batch never holds."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what the official python batches contain: dicts, lists,
    str/bytes, ints and NumPy arrays.  Any other global (a function to call, a
    class to build) is refused, so a crafted file cannot run code.
    """

    _allowed = None

    def find_class(self, module: str, name: str):
        if _BatchUnpickler._allowed is None:
            _BatchUnpickler._allowed = _numpy_globals()
        try:
            return self._allowed[module, name]
        except KeyError:
            raise UnsafeFileError(f"it asks to load {module}.{name}") from None


_FIX = ("delete the folder and re-create it from the official archive "
        "(cifar10(root, download=True) does that)")


def _load_batch(path: Path):
    """Read and check one python batch: images (n, 3, 32, 32) uint8, labels, file names.

    Raises ValueError (naming ``path`` and what is wrong) for anything that is not
    a CIFAR-10 batch: an unsafe pickle, a damaged file, wrong shapes or values.
    """
    batch = _unpickle(path)
    data = _checked_pixels(path, batch)
    labels = _checked_labels(path, batch[b"labels"], len(data))
    names = batch.get(b"filenames", [])
    if not isinstance(names, list) or not all(isinstance(n, bytes) for n in names) or \
            len(names) not in (0, len(data)):
        found = (f"{len(names)} names for {len(data)} images" if isinstance(names, list)
                 else type(names).__name__)
        raise ValueError(f"{path}: b'filenames' must be a list of bytes, one per image; "
                         f"found {found}; {_FIX}")
    return data.astype(np.uint8, copy=False).reshape(-1, 3, 32, 32), labels, names


def _unpickle(path: Path) -> dict:
    """The batch's dict, read with :class:`_BatchUnpickler` (nothing but arrays, lists,
    ints and bytes), with ``b'data'`` and ``b'labels'``.
    """
    fix = _FIX
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except UnsafeFileError as err:
        raise UnsafeFileError(
            f"{path} is not a CIFAR-10 batch and was not loaded: {err}, which a CIFAR-10 "
            f"batch never contains (a crafted file could run code this way); {fix}") from None
    except Exception as err:   # truncated, empty or garbage: every unpickling failure
        raise ValueError(f"{path} is damaged or not a CIFAR-10 python batch "
                         f"({type(err).__name__}: {err}); {fix}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(f"{path} is not a CIFAR-10 python batch (a dict with b'data' and "
                         f"b'labels'); found {keys}; {fix}")
    return batch


def _checked_pixels(path: Path, batch: dict) -> np.ndarray:
    """``b'data'``, checked: (n, 3072) integers 0..255, n >= 1, held by the file."""
    fix, data = _FIX, batch[b"data"]
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = data.shape if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: b'data' must be an array of shape (n, 3072), got {shape}; "
                         f"{fix}")
    if len(data) == 0:
        raise ValueError(f"{path}: the batch holds no images; {fix}")
    size = path.stat().st_size
    if not data.flags.c_contiguous or data.nbytes > size:
        # checked before any copy: a declared array the file cannot hold is refused, not
        # allocated (a view with zero strides can declare gigabytes over a few bytes)
        raise ValueError(f"{path}: b'data' declares {len(data):,} images ({data.nbytes:,} "
                         f"bytes of pixels, strides {data.strides}) that a file of {size:,} "
                         f"bytes cannot hold; {fix}")
    if data.dtype != np.uint8:
        if not np.issubdtype(data.dtype, np.integer):
            raise ValueError(f"{path}: pixels must be integers 0..255, got dtype {data.dtype}; "
                             f"{fix}")
        if len(data) and (data.min() < 0 or data.max() > 255):
            raise ValueError(f"{path}: pixels outside 0..255 (min {data.min()}, max "
                             f"{data.max()}); {fix}")
    return data


def _checked_labels(path: Path, labels, n: int) -> list:
    """``b'labels'``, checked: ``n`` ints 0..9."""
    fix = _FIX
    if not isinstance(labels, list) or not all(type(y) is int for y in labels):
        kinds = sorted({type(y).__name__ for y in labels}) if isinstance(labels, list) \
            else type(labels).__name__
        raise ValueError(f"{path}: b'labels' must be a list of int, got {kinds}; {fix}")
    if len(labels) != n:
        raise ValueError(f"{path}: {n} images but {len(labels)} labels; {fix}")
    if labels and (min(labels) < 0 or max(labels) > 9):
        raise ValueError(f"{path}: labels outside 0..9 (min {min(labels)}, max {max(labels)}); "
                         f"{fix}")
    return labels


def _missing_message(folder: Path, names) -> str:
    return (
        f"CIFAR-10 not found: looked for {', '.join(names)} in {folder}. "
        f"Get it with cifar10(root, download=True) (downloads {CIFAR10_URL}, 163 MB, and "
        f"checks its MD5), or unpack the official archive so that {folder} exists, or, "
        "offline, make the JPEG mirror: python ../shared/data/make_cifar10.py ROOT "
        "and pass root=ROOT (or set RESODE_DATA=ROOT).")


def _download(root: Path) -> None:
    """Fetch the archive (unless an MD5-checked copy is there), check it and unpack it
    over whatever the folder holds.
    """
    url, md5 = CIFAR10_URL, CIFAR10_MD5
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "cifar-10-python.tar.gz"
    if not archive.exists() or _md5(archive) != md5:
        try:
            urllib.request.urlretrieve(url, archive)
        except OSError as err:
            archive.unlink(missing_ok=True)
            raise RuntimeError(
                f"could not download CIFAR-10 from {url} ({err}). Offline, make the JPEG "
                f"mirror instead: python ../shared/data/make_cifar10.py {root}") from err
    got = _md5(archive)
    if got != md5:
        raise RuntimeError(
            f"{archive} has MD5 {got}, expected {md5}: the download is corrupt or not the "
            "official archive; delete it and download again")
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(root, filter="data")


def cifar10(root: str | os.PathLike | None = None, train: bool = True,
            download: bool = False) -> Cifar10:
    """Load the training (50,000) or test (10,000) split of CIFAR-10.

    Parameters
    ----------
    root : path, optional
        The folder that holds ``cifar-10-batches-py/``; default :func:`default_root`.
    train : bool
        The five training batches, or the test batch.
    download : bool
        If the batches are missing, download the official archive into ``root``,
        check its MD5 and unpack it.  If they are there but damaged (see Raises),
        download and unpack it again (with a warning).  Never downloads when
        the batches are there and sound.

    Returns
    -------
    Cifar10
        ``images`` (n, 3, 32, 32) uint8, ``labels`` (n,) int64, and ``source``.

    Raises
    ------
    FileNotFoundError
        The batches are missing and ``download`` is false; the message says where
        it looked and how to get the data.
    ValueError
        A batch is damaged or not a CIFAR-10 batch (truncated, empty, garbage,
        wrong shapes, labels outside 0..9, pixels outside 0..255, non-integer
        labels), named with what is wrong; :class:`UnsafeFileError` (a
        ``ValueError``) when it holds anything but dicts, lists, strings, ints
        and NumPy arrays: batches are read with a restricted unpickler, so a
        crafted file cannot run code.
    RuntimeError
        The download failed or its MD5 is wrong.
    """
    root = default_root() if root is None else Path(root).expanduser()
    folder = root / FOLDER
    files = _TRAIN if train else _TEST
    missing = [name for name, _ in files if not (folder / name).is_file()]
    if missing and download:
        _download(root)
        missing = [name for name, _ in files if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(_missing_message(folder, [n for n, _ in files]))
    try:
        return _load_split(folder, files, train)
    except ValueError as err:
        if not download:
            raise
        warnings.warn(f"{err}: downloading the official archive again", stacklevel=2)
        _download(root)
        return _load_split(folder, files, train)


def _load_split(folder: Path, files, train: bool) -> Cifar10:
    images, labels, names = [], [], []
    official = True
    for name, md5 in files:
        path = folder / name
        official = official and _md5(path) == md5
        x, y, n = _load_batch(path)
        images.append(x)
        labels.extend(y)
        names.extend(n)
    if official:
        source = OFFICIAL
    elif names and all(isinstance(n, bytes) and n.endswith(b".jpg") for n in names[:100]):
        source = JPEG_MIRROR
    else:
        source = UNKNOWN
    x = torch.from_numpy(np.concatenate(images))
    y = torch.tensor(labels, dtype=torch.int64)
    return Cifar10(x, y, source, folder, train)


def data_identity(root: str | os.PathLike | None = None) -> str:
    """Which copy of CIFAR-10 ``root`` holds: ``"official:<digest>"`` when all six
    batches have the official MD5 sums, else ``"other:<digest>"``; the digest
    (16 hex digits) hashes the six files' MD5 sums, so two copies that differ in
    any byte have different identities.

    Parameters
    ----------
    root : path, optional
        The folder that holds ``cifar-10-batches-py/``; default :func:`default_root`.

    Raises
    ------
    FileNotFoundError
        A batch is missing (the message says how to get the data).
    """
    root = default_root() if root is None else Path(root).expanduser()
    folder = root / FOLDER
    files = _TRAIN + _TEST
    if not all((folder / name).is_file() for name, _ in files):
        raise FileNotFoundError(_missing_message(folder, [n for n, _ in files]))
    sums = [_md5(folder / name) for name, _ in files]
    official = all(got == md5 for got, (_, md5) in zip(sums, files))
    digest = hashlib.sha256(" ".join(sums).encode()).hexdigest()[:16]
    return f"{'official' if official else 'other'}:{digest}"


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Standardise images in [0, 1] per channel with :data:`MEAN` and :data:`STD`.

    :data:`STD` is the standard deviation of the training pixels, (0.2470, 0.2435,
    0.2616).  Paper A's code divides by (0.2023, 0.1994, 0.2010), a per-image average that
    many CIFAR-10 scripts copy; multiply the result by ``torch.tensor(STD) / torch.tensor(
    (0.2023, 0.1994, 0.2010))`` per channel to reproduce its inputs exactly.

    Parameters
    ----------
    x : torch.Tensor, shape (B, 3, H, W), floating point

    Returns
    -------
    torch.Tensor, same shape
    """
    if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"normalise expects float images of shape (B, 3, H, W), got "
                         f"{tuple(x.shape)} {x.dtype}: convert with Cifar10.float() first")
    mean = torch.tensor(MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded image and random horizontal flip, per image.

    Parameters
    ----------
    x : torch.Tensor, shape (B, C, H, W)
    generator : torch.Generator
        On the CPU; seeds the crop offsets and flips (same generator state, same batch).
    padding : int
        Pixels of zeros added on each side before cropping back to H x W.

    Returns
    -------
    torch.Tensor, shape (B, C, H, W)
    """
    if x.ndim != 4:
        raise ValueError(f"augment expects a batch of images (B, C, H, W), got {tuple(x.shape)}")
    B, C, H, W = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, B), generator=generator)
    flip = torch.rand(B, generator=generator) < 0.5
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    rows = (offsets[0][:, None] + torch.arange(H)).to(x.device)          # (B, H)
    cols = (offsets[1][:, None] + torch.arange(W)).to(x.device)          # (B, W)
    cols = torch.where(flip.to(x.device)[:, None], cols.flip(1), cols)  # flip = read right to left
    b = torch.arange(B, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def prepare(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Network inputs from uint8 images: scale to [0, 1], :func:`augment` when a
    ``generator`` is given (training), then :func:`normalise`.

    Parameters
    ----------
    images : torch.Tensor, shape (B, 3, H, W), uint8
    generator : torch.Generator, optional

    Returns
    -------
    torch.Tensor, shape (B, 3, H, W), float32
    """
    x = images.float() / 255
    return normalise(x if generator is None else augment(x, generator))

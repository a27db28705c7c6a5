"""The typed result of chapter 6's experiment, and its JSON form.

:class:`FinetuneResult` is what :func:`resode_tut.experiments.ch06.run` returns and
what the result cache stores: one dataclass per part of the experiment, written with
:meth:`FinetuneResult.to_json` and read back, checked, with
:meth:`FinetuneResult.from_json`.  Accuracies are fractions in [0, 1].
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from .agreement import Agreement

__all__ = ["Agreement", "Pretraining", "FineTuning", "Memory", "Gradients",
           "FinetuneResult", "MalformedResult"]


class MalformedResult(ValueError):
    """A result file that is not a complete :class:`FinetuneResult`."""


@dataclass
class Pretraining:
    """The tied network: its training and its accuracy at other depths.

    Attributes
    ----------
    depth : int
        Depth it was trained at.
    test_accuracy, train_loss, seconds : list of float
        Per epoch.
    accuracy_at_depth : dict of int to float
        Test accuracy of the same weights untied to each depth (per-step BatchNorm
        statistics).
    accuracy_shared_statistics : float
        Test accuracy with the tied network's own, shared, BatchNorm statistics.
    """

    depth: int
    test_accuracy: list
    train_loss: list
    seconds: list
    accuracy_at_depth: dict
    accuracy_shared_statistics: float


@dataclass
class FineTuning:
    """One fine-tuning run of the untied network.

    Attributes
    ----------
    test_accuracy : list of float
        The untied start, then one value per epoch (length ``epochs + 1``).
    train_loss, seconds : list of float
        Per epoch (length ``epochs``).
    stage_travel : float
        How far the stage's weights moved from the untied start (Euclidean norm
        over all of the stage's parameters).
    gradient_travel : float
        How far they ended from where weight decay alone took them (the ``"decay"``
        run's end, same norm): the part of the travel the stage's gradient caused
        (0 for the ``"decay"`` run itself).
    """

    test_accuracy: list
    train_loss: list
    seconds: list
    stage_travel: float
    gradient_travel: float


@dataclass
class Memory:
    """Bytes the stage keeps for backward (and CUDA peaks on a GPU) against depth.

    Attributes
    ----------
    depths : list of int
    batch : int
    saved_bytes : dict of str to list of int
        Per gradient method, one count per depth.
    cuda_peak_mib : dict of str to list of float
        Per method, one peak per depth; empty lists off a GPU.
    """

    depths: list
    batch: int
    saved_bytes: dict
    cuda_peak_mib: dict


@dataclass
class Gradients:
    """Gradient agreement against depth, and after fine-tuning.

    Attributes
    ----------
    depths : list of int
    batch : int
    pretrained : list of Agreement
        The pre-trained network untied to each depth.
    finetuned : dict of str to Agreement
        The network fine-tuned with each method, at the fine-tuning depth.
    during : list of float
        During the adjoint's fine-tuning, after each epoch: the median relative
        squared error of the adjoint's stage gradients against backprop's on the
        network as it is then (length ``epochs``).
    """

    depths: list
    batch: int
    pretrained: list
    finetuned: dict
    during: list


@dataclass
class FinetuneResult:
    """Everything one run of chapter 6's experiment measured.

    Attributes
    ----------
    config : FinetuneConfig
    key, code : str
        Cache key and code version it was computed with.
    device, torch, data_source : str
        Where, with which torch, and on which copy of CIFAR-10.
    data_id : str
        That copy's identity (:func:`resode_tut.datasets.cifar.data_identity`:
        official or not, and a checksum of its files), part of the cache key.
    train_images, test_images : int
    pretrain : Pretraining
    depth : int
        Depth ``N`` of the untied, fine-tuned stage.
    finetune : dict of str to FineTuning
        One run per gradient method, from the same start and seeds, the stage alone
        trained, and ``"decay"``: the same run with the stage's gradient zeroed, weight
        decay alone moving it (what a broken adjoint returning zeros would give).
    stage_gap : float
        Distance between the stage weights fine-tuned by the adjoint and by
        backprop (compare with their ``stage_travel``).
    memory : Memory
    gradients : Gradients
    seconds : float
        Wall time of the whole run.
    load_average : list of float
        1-minute load average at its start and end (NaN where the OS has none).
    scale : dict
        ``processes`` (torchrun's world size), ``amp`` (``"off"``, ``"bf16"``,
        ``"fp16"``) and ``sync_batchnorm`` of the run.
    path : str or None
        The cache file it was read from or written to (not stored in the file).
    cached : bool
        True when it was loaded rather than computed (not stored in the file).
    shipped : ShippedResult or None
        The stored file with its provenance (:mod:`resode_tut.experiments.shipped`;
        not stored in the result itself).
    """

    config: object
    key: str
    code: str
    device: str
    torch: str
    data_source: str
    data_id: str
    train_images: int
    test_images: int
    pretrain: Pretraining
    depth: int
    finetune: dict
    stage_gap: float
    memory: Memory
    gradients: Gradients
    seconds: float
    load_average: list
    scale: dict = field(default_factory=lambda: {"processes": 1, "amp": "off",
                                                 "sync_batchnorm": False})
    path: str | None = field(default=None, compare=False)
    cached: bool = field(default=False, compare=False)
    shipped: object = field(default=None, compare=False)

    _TRANSIENT = ("path", "cached", "shipped")

    def to_json(self) -> str:
        """The result as JSON text (``path``, ``cached`` and ``shipped`` left out)."""
        data = dataclasses.asdict(dataclasses.replace(self, shipped=None))
        for name in self._TRANSIENT:
            data.pop(name)
        data["pretrain"]["accuracy_at_depth"] = {
            str(d): a for d, a in self.pretrain.accuracy_at_depth.items()}
        return json.dumps(data, indent=1)

    @classmethod
    def from_json(cls, text: str, config_type) -> FinetuneResult:
        """Read :meth:`to_json`'s text back.

        Parameters
        ----------
        text : str
        config_type : type
            The configuration dataclass (``FinetuneConfig``).

        Raises
        ------
        MalformedResult
            Not JSON, or a part missing, extra or of the wrong kind.
        """
        try:
            data = json.loads(text)
            return cls(
                **_fields(cls, data, skip=cls._TRANSIENT,
                          config=lambda c: _build(config_type, c, tuples=True),
                          pretrain=lambda p: _build(Pretraining, p, accuracy_at_depth=lambda a: {
                              int(d): float(v) for d, v in a.items()}),
                          finetune=lambda f: {m: _build(FineTuning, r) for m, r in f.items()},
                          memory=lambda m: _build(Memory, m),
                          gradients=lambda g: _build(
                              Gradients, g, pretrained=lambda rs: [_build(Agreement, r)
                                                                   for r in rs],
                              finetuned=lambda fs: {m: _build(Agreement, r)
                                                    for m, r in fs.items()})))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise MalformedResult(f"not JSON ({err})") from None
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise MalformedResult(f"malformed ({type(err).__name__}: {err})") from None

    def problems(self, methods) -> str | None:
        """What makes this result incomplete, or None.

        Complete: one accuracy per epoch (plus the start) for every method in
        ``methods``, one measurement per configured depth, and only finite numbers
        (a load average may be NaN).
        """
        c = self.config
        decay = self.finetune.get("decay")
        if decay is None or len(decay.test_accuracy) != c.epochs + 1:
            return "no complete weight-decay-only run"
        for m in methods:
            if m not in self.finetune:
                return f"no {m} fine-tuning"
            if len(self.finetune[m].test_accuracy) != c.epochs + 1:
                return f"{m}: {len(self.finetune[m].test_accuracy) - 1} of {c.epochs} epochs"
            if len(self.memory.saved_bytes.get(m, [])) != len(c.memory_depths):
                return f"{m}: memory measured at too few depths"
            if m not in self.gradients.finetuned:
                return f"{m}: no gradient agreement after fine-tuning"
        if len(self.gradients.pretrained) != len(c.gradient_depths):
            return "gradients measured at too few depths"
        if len(self.gradients.during) != c.epochs:
            return "gradient agreement missing for some fine-tuning epochs"
        data = dataclasses.asdict(self)
        data.pop("load_average")
        bad = [v for v in _numbers(data) if not math.isfinite(v)]
        return f"{len(bad)} non-finite numbers" if bad else None


def _fields(cls, data: dict, skip=(), **convert) -> dict:
    """``data``'s values for the fields of ``cls`` (all required but ``skip``), converted."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    missing, extra = set(names) - set(data), set(data) - set(names)
    if missing or extra:
        raise KeyError(f"{cls.__name__}: missing {sorted(missing)}, unexpected {sorted(extra)}")
    return {n: convert[n](data[n]) if n in convert else data[n] for n in names}


def _build(cls, data: dict, tuples: bool = False, **convert):
    values = _fields(cls, data, **convert)
    if tuples:   # JSON has no tuples: the configuration's sequences come back as lists
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, float):
        yield obj

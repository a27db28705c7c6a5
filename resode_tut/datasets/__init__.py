"""Data sets: each returns tensors ready for the package's models.

* :func:`concentric_spheres` -- Ott et al. (2021)'s three shells in ``R^d``, two classes;
* :func:`xor` -- the four XOR points;
* :func:`digits` -- scikit-learn's 8x8 digits (shipped with scikit-learn, no download);
* :func:`cifar10` -- CIFAR-10 from the official python-batch layout, downloaded and
  MD5-checked on request (:mod:`resode_tut.datasets.cifar` also holds its
  augmentation and normalisation).
"""
from . import cifar
from .cifar import Cifar10, cifar10
from .small import SHELLS, concentric_spheres, digits, xor

__all__ = ["concentric_spheres", "SHELLS", "xor", "digits", "cifar10", "Cifar10", "cifar"]

"""What a cached experiment result depends on: the source of every module it imports.

A result computed by an experiment module is a function of its configuration and of
the code it runs.  :func:`code_modules` finds that code by following the experiment's
imports (``import``/``from`` statements, read with :mod:`ast`, at any depth of the
file) through the ``resode_tut`` package, so the list is derived, never kept by hand;
:func:`code_version` hashes their sources.  Used by chapter 6's result cache.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
from pathlib import Path

__all__ = ["code_modules", "code_version"]

_PACKAGE = "resode_tut"


def _imports(name: str, path: Path) -> set[str]:
    """Fully qualified ``resode_tut`` modules imported by the module ``name`` at ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)   # `from . import x`
    return {n for n in found if n == _PACKAGE or n.startswith(_PACKAGE + ".")}


def code_modules(module: str) -> dict[str, Path]:
    """Every ``resode_tut`` module that ``module`` imports, directly or not.

    Parameters
    ----------
    module : str
        A fully qualified module name, e.g. ``"resode_tut.experiments.ch06"``.

    Returns
    -------
    dict
        Module name -> source file, sorted by name; includes ``module`` itself and the
        ``__init__`` of every package on the way.
    """
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except (ModuleNotFoundError, ValueError):
            spec = None
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            continue          # a name imported from a module, not a module
        seen[name] = Path(spec.origin)
        parents = [name.rsplit(".", k)[0] for k in range(1, name.count(".") + 1)]
        todo.extend(parents)
        todo.extend(_imports(name, seen[name]))
    return dict(sorted(seen.items()))


def code_version(module: str) -> str:
    """SHA-256 (16 hex digits) of the sources of :func:`code_modules` of ``module``."""
    digest = hashlib.sha256()
    for name, path in code_modules(module).items():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]

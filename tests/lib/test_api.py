"""The package's shape: a library API with nothing chapter-specific, experiments apart,
and every public parameter documented on its own."""
import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import resode_tut as rt

PACKAGE = Path(rt.__file__).parent
LIBRARY = sorted(p for p in PACKAGE.rglob("*.py") if "experiments" not in p.parts)
EXPERIMENTS = sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE / "experiments")]))


def test_public_api_is_the_library():
    for name in ("ResidualStack", "NeuralODE", "Solver", "ode_regime", "solve_limit_ode",
                 "StepSizeAdapter", "ToleranceAdapter", "CifarResNet", "untie", "setup",
                 "SavedTensorsCounter", "CudaPeak", "loglog_slope", "train_node"):
        assert name in rt.__all__ and hasattr(rt, name), name
    assert rt.datasets.cifar10 is rt.datasets.cifar.cifar10
    assert callable(rt.datasets.concentric_spheres) and callable(rt.datasets.digits)
    for name in rt.__all__:
        obj = getattr(rt, name)
        where = getattr(obj, "__module__", None) or getattr(obj, "__name__", "")
        assert "experiments" not in where, f"rt.{name} comes from {where}"
    chapter_words = re.compile(r"sweep|plot|depth_axis|chapter|finetune|bench|linear_",
                               re.IGNORECASE)
    assert not [n for n in rt.__all__ if chapter_words.search(n)]
    assert not hasattr(rt, "__getattr__"), "no lazy module attributes: import what you export"


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_library_never_imports_the_experiments(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [("." * node.level) + (node.module or "")]
            names += [f"{names[0]}.{a.name}" for a in node.names]
        assert not [n for n in names if "experiments" in n], (
            f"{path.name} imports {names}: the library must not depend on the chapters")


def test_importing_the_library_loads_no_experiment_module():
    import subprocess
    import sys

    code = ("import sys, resode_tut; "
            "print(sorted(m for m in sys.modules if 'experiments' in m))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_module_says_which_chapter_uses_it(name):
    module = importlib.import_module(f"resode_tut.experiments.{name}")
    assert re.search(r"[Cc]hapters? \d", module.__doc__ or ""), name


# -- docstrings -------------------------------------------------------------------------------

def _parameter_entries(doc: str) -> dict:
    """``name -> has a type or a description`` for each entry of a NumPy "Parameters"
    section; a grouped entry ("a, b : int") is returned under the key ``"a, b"``."""
    lines = inspect.cleandoc(doc).splitlines()
    try:
        start = next(i for i, line in enumerate(lines[:-1])
                     if line.strip() == "Parameters" and set(lines[i + 1].strip()) == {"-"})
    except StopIteration:
        return {}
    entries, i = {}, start + 2
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            if i + 1 < len(lines) and lines[i + 1].strip() and \
                    set(lines[i + 2].strip() if i + 2 < len(lines) else "") == {"-"}:
                break  # next section
            i += 1
            continue
        if line[:1].isspace():
            i += 1
            continue
        if i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}:
            break
        if not re.fullmatch(r"\*{0,2}\w+(, \*{0,2}\w+)*( : .+)?", line.rstrip()):
            break  # prose after the last entry ("Shapes: ...")
        name, _, kind = line.partition(" : ")
        described = i + 1 < len(lines) and lines[i + 1][:1].isspace() and lines[i + 1].strip()
        entries[name.strip()] = bool(kind.strip() or described)
        i += 1
    return entries


def _public_callables():
    modules = [rt] + [importlib.import_module(f"resode_tut.experiments.{m}")
                      for m in EXPERIMENTS]
    seen = set()
    for module in modules:
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or id(obj) in seen:
                continue
            seen.add(id(obj))
            yield f"{obj.__module__}.{obj.__qualname__}", obj
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if inspect.isfunction(member) and not attr.startswith("_"):
                        yield (f"{obj.__module__}.{obj.__qualname__}.{attr}",
                               _documented_by(obj, attr, member))


def _documented_by(cls, attr, member):
    """An override whose docstring is a one-line summary is documented by the base
    method it overrides, when that one documents the same parameters."""
    if _parameter_entries(inspect.getdoc(member) or ""):
        return member
    names = list(inspect.signature(member).parameters)
    for base in cls.__mro__[1:]:
        inherited = vars(base).get(attr)
        if inspect.isfunction(inherited) and list(
                inspect.signature(inherited).parameters) == names and _parameter_entries(
                inspect.getdoc(inherited) or ""):
            return inherited
    return member


@pytest.mark.parametrize("name, obj", list(_public_callables()), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_every_public_parameter_is_documented_on_its_own(name, obj):
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    if inspect.isclass(obj):
        if obj.__init__ is object.__init__ or "__init__" not in vars(obj) and \
                not hasattr(obj, "__dataclass_fields__"):
            return
        target = obj.__init__
        if hasattr(obj, "__dataclass_fields__"):
            return   # a dataclass documents its fields as Attributes
    else:
        target = obj
    params = [p for p in inspect.signature(target).parameters.values()
              if p.name not in ("self", "cls")]
    if not params:
        return
    entries = _parameter_entries(doc)
    if not entries and len(params) == 1 and re.search(
            rf"``[^`]*\b{params[0].name}\b[^`]*``|\bshape\b", doc):
        return   # a one-argument callable whose summary names it (e.g. forward(x): shapes)
    grouped = [e for e in entries if "," in e and not e.startswith("*")]
    assert not grouped, f"{name}: grouped parameter entries {grouped}: one entry each"
    for p in params:
        key = {p.VAR_POSITIONAL: f"*{p.name}", p.VAR_KEYWORD: f"**{p.name}"}.get(p.kind, p.name)
        assert key in entries, f"{name}: parameter {key!r} is not in its Parameters section"
        assert entries[key], f"{name}: parameter {key!r} has neither a type nor a description"

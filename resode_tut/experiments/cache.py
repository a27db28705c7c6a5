"""What a stored experiment result depends on (chapters 5 and 6's shipped results): the
code of every module it imports.

A result computed by an experiment module is a function of its configuration and of
the code it runs.  :func:`code_modules` finds that code by following the experiment's
imports (``import``/``from`` statements, read with :mod:`ast`, at any depth of the
file) through the ``resode_tut`` package, so the list is derived, never kept by hand;
:func:`code_version` hashes their sources byte for byte; :func:`code_key` hashes their
tokens without comments, docstrings and layout (:func:`code_tokens`), which is what
:mod:`.shipped` results are keyed on.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import tokenize
from pathlib import Path

__all__ = ["code_modules", "code_version", "code_tokens", "code_key"]

_PACKAGE = "resode_tut"


def _is_module(name: str) -> bool:
    try:
        spec = importlib.util.find_spec(name)
    except (ModuleNotFoundError, ValueError):
        return False
    return spec is not None and spec.origin is not None and spec.origin.endswith(".py")


def _imports(name: str, path: Path) -> set[str]:
    """Fully qualified ``resode_tut`` modules imported by the module ``name`` at ``path``.

    ``from package import submodule`` names the submodule, not the package; ``from
    package import name`` (a class, a function) names the package, whose ``__init__``
    then counts with what it imports.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return _imports_of(package, ast.parse(path.read_text(), str(path)))


def _imports_of(package: str, tree: ast.AST) -> set[str]:
    """The ``resode_tut`` modules that the statements of ``tree`` import, relative
    imports read from ``package``.
    """
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[:len(parts) - node.level + 1])
                base = f"{parent}.{base}" if base else parent
            subs = [f"{base}.{a.name}" for a in node.names]
            found.update(sub for sub in subs if _is_module(sub))
            if not all(_is_module(sub) for sub in subs):
                found.add(base)
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
        ``__init__`` of every package on the way (whose own imports count only where a
        module imports a name from that package).
    """
    return _walk(module)[0]


def _walk(module: str) -> tuple[dict[str, Path], set[str]]:
    """:func:`code_modules`, and the modules whose imports were followed."""
    seen: dict[str, Path] = {}
    followed: set[str] = set()
    todo = [(module, True)]
    while todo:
        name, follow = todo.pop()
        if name in followed or (name in seen and not follow):
            continue
        if name not in seen:
            spec = importlib.util.find_spec(name) if _is_module(name) else None
            if spec is None:
                continue          # a name imported from a module, not a module
            seen[name] = Path(spec.origin)
            # a parent package's __init__ runs first, so its own code counts; what it
            # imports for its users (resode_tut/__init__ imports the whole library) counts
            # only where a module imports a name from it
            todo.extend((name.rsplit(".", k)[0], False) for k in range(1, name.count(".") + 1))
        if follow:
            followed.add(name)
            todo.extend((m, True) for m in _imports(name, seen[name]))
    return dict(sorted(seen.items())), followed


def code_version(module: str) -> str:
    """SHA-256 (16 hex digits) of the sources of :func:`code_modules` of ``module``."""
    digest = hashlib.sha256()
    for name, path in code_modules(module).items():
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _docstring_positions(source: str) -> set[tuple[int, int]]:
    """(line, column) where each docstring of a module, class or function starts."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                found.add((body[0].lineno, body[0].col_offset))
    return found


def code_tokens(source: str) -> str:
    """The tokens of a Python source, without comments, docstrings and layout.

    Two sources give the same text exactly when they differ only in comments,
    docstrings, blank lines, indentation width or line wrapping: what the interpreter
    runs.  Tokens are joined by one space, each logical line ends in a newline.

    Parameters
    ----------
    source : str
        Python source code.

    Returns
    -------
    str
    """
    docstrings = _docstring_positions(source)
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
    out, depth = [], 0
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for i, tok in enumerate(tokens):
        if tok.type in skip:
            continue
        if tok.type == tokenize.STRING and tok.start in docstrings:
            # the docstring's own NEWLINE follows: drop it too
            if i + 1 < len(tokens) and tokens[i + 1].type == tokenize.NEWLINE:
                tokens[i + 1] = tokens[i + 1]._replace(type=tokenize.NL)
            continue
        if tok.type == tokenize.INDENT:
            depth += 1
            continue
        if tok.type == tokenize.DEDENT:
            depth -= 1
            continue
        if tok.type == tokenize.NEWLINE:
            out.append("\n")
            continue
        if not out or out[-1] == "\n":
            out.append(" " * depth)       # block structure matters, its width does not
        else:
            out.append(" ")
        out.append(tok.string)
    return "".join(out)


def code_key(module: str) -> str:
    """SHA-256 (16 hex digits) of :func:`code_tokens` of every ``resode_tut`` module that
    ``module`` imports, directly or not, ``module`` included.

    Parameters
    ----------
    module : str
        The fully qualified name of the module that computes a result.
    """
    digest = hashlib.sha256()
    modules, followed = _walk(module)
    for name, path in modules.items():
        source = path.read_text()
        if path.name == "__init__.py" and name not in followed:
            source = _own_code(name, source)
        digest.update(name.encode() + b"\0" + code_tokens(source).encode() + b"\0")
    return digest.hexdigest()[:16]


def _own_code(package: str, source: str) -> str:
    """A package ``__init__``'s source as it counts for a module that only runs it (imports
    nothing from it): its own statements, and which modules it imports, but not which
    names it re-exports (``from .a import f, g`` counts as ``import package.a``; ``__all__``
    not at all). A module that imports a name from the package follows its imports and
    counts its whole source, so a name moved from one module to another still counts.
    """
    lines = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom):
            stub = ast.Module(body=[node], type_ignores=[])
            lines += [f"import {m}" for m in sorted(_imports_of(package, stub))]
        elif (isinstance(node, ast.Assign) and len(node.targets) == 1
              and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "__all__"):
            continue
        else:
            lines.append(ast.get_source_segment(source, node, padded=True) or ast.unparse(node))
    return "\n".join(lines) + "\n"

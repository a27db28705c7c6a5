"""Shipped results: the key follows what can change the numbers, files are whole JSON, and
every committed result is current for the code."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resode_tut.experiments import cache, ch04, ch05_runs, ch06, ch06_table2, ch08, shipped, table1

ROOT = Path(__file__).resolve().parents[2]

SOURCE = '''"""Module docstring."""
import math  # a comment


def f(x, y=2):
    """Docstring."""
    # comment
    return math.sqrt(x) + y
'''


def test_tokens_ignore_comments_docstrings_and_layout_but_not_code():
    base = shipped.code_tokens(SOURCE)
    reworded = (SOURCE.replace("Docstring.", "Another docstring,\n    over two lines.")
                .replace("# a comment", "# other words").replace("    # comment\n", "")
                .replace("def f(x, y=2):", "def f(x,\n      y=2):"))
    assert shipped.code_tokens(reworded) == base
    assert shipped.code_tokens(SOURCE.replace("\n\n\n", "\n")) == base
    for change in (("y=2", "y=3"), ("+ y", "- y"), ("sqrt", "exp"),
                   ('"""Docstring."""', '"""Docstring."""\n    x = x * 1')):
        assert shipped.code_tokens(SOURCE.replace(*change)) != base, change
    # a string that is not a docstring is code
    assert shipped.code_tokens(SOURCE.replace("return", "s = 'a'\n    return")) != base
    # indentation is structure
    nested = "if a:\n    b = 1\nc = 2\n"
    assert shipped.code_tokens(nested) != shipped.code_tokens("if a:\n    b = 1\n    c = 2\n")


def test_the_key_covers_what_the_computing_module_imports():
    table = set(cache.code_modules(table1.COMPUTING_MODULE))
    assert {"resode_tut.node", "resode_tut.node_training", "resode_tut.ensemble",
            "resode_tut.datasets.small", "resode_tut.adaptation"} <= table
    # not the code that stores or shows it, nor what the package's __init__ re-exports
    assert not {"resode_tut.experiments.table1", "resode_tut.experiments.shipped",
                "resode_tut.experiments.ch05", "resode_tut.adjoint"} & table
    finetune = set(cache.code_modules("resode_tut.experiments.finetune"))
    assert {"resode_tut.adjoint", "resode_tut.stack", "resode_tut.cifar_resnet",
            "resode_tut.datasets.cifar", "resode_tut.experiments.cifar_training"} <= finetune
    assert not {"resode_tut.experiments.ch06", "resode_tut.experiments.shipped"} & finetune


INIT = '''"""A package."""
from . import checkpoint
from .adaptation import (
    PAPER_GAP_LIMIT,
    StepSizeAdapter,
)
__all__ = ["PAPER_GAP_LIMIT", "StepSizeAdapter"]
SETTING = 1
'''


def test_a_package_init_that_is_only_run_counts_its_code_and_modules_not_its_names():
    own = lambda src: shipped.code_tokens(cache._own_code("resode_tut", src))
    base = own(INIT)
    # another name re-exported from a module it imports already, another __all__: the same
    exported = INIT.replace("    StepSizeAdapter,\n", "    StepSizeAdapter,\n    batch_check,\n")
    assert own(exported.replace('"StepSizeAdapter"]', '"StepSizeAdapter", "batch_check"]')) == base
    # another module imported (its import-time code runs), or its own code changed: not
    assert own(INIT + "from .ensemble import euler_grid\n") != base
    assert own(INIT.replace("from . import checkpoint", "from . import checkpoint, memory")) != base
    assert own(INIT.replace("SETTING = 1", "SETTING = 2")) != base


def test_an_export_added_to_the_library_stales_only_results_that_import_from_it(monkeypatch):
    init = Path(cache.__file__).parents[1] / "__init__.py"
    ch05 = Path(cache.__file__).parent / "ch05.py"
    table, user = table1.COMPUTING_MODULE, "resode_tut.experiments.ch05"
    assert "resode_tut" in cache.code_modules(table)       # it runs the package's __init__
    real = Path.read_text
    texts = {ch05: real(ch05).replace("from __future__ import annotations\n",
                                      "from __future__ import annotations\n"
                                      "from .. import ResidualStack\n", 1)}
    monkeypatch.setattr(Path, "read_text",
                        lambda self, *a, **k: texts[self] if self in texts else real(self, *a, **k))
    assert "resode_tut.adjoint" in cache.code_modules(user)    # it follows rt's imports
    keys = {m: cache.code_key(m) for m in (table, user)}
    texts[init] = real(init).replace("from .memory import CudaPeak, SavedTensorsCounter",
                                     "from .memory import CudaPeak, SavedTensorsCounter, os")
    assert texts[init] != real(init)
    assert cache.code_key(table) == keys[table]      # Table 1 imports no name from rt
    assert cache.code_key(user) != keys[user]        # a module that does: stale


def test_the_key_changes_with_configuration_data_and_extras():
    key = shipped.result_key({"a": 1}, table1.COMPUTING_MODULE)
    assert key == shipped.result_key({"a": 1}, table1.COMPUTING_MODULE)
    assert key != shipped.result_key({"a": 2}, table1.COMPUTING_MODULE)
    assert key != shipped.result_key({"a": 1}, table1.COMPUTING_MODULE, data="x")
    assert key != shipped.result_key({"a": 1}, table1.COMPUTING_MODULE, device="cuda")
    assert key != shipped.result_key({"a": 1}, "resode_tut.experiments.finetune")


def _result(name="demo", key="k1", data=None):
    return shipped.ShippedResult(name, key, {"n": 1},
                                 shipped.provenance("python -m demo", 12.0), data or [1, 2])


def test_save_read_and_load_current(tmp_path, monkeypatch):
    path = shipped.save(_result(), tmp_path)
    assert path == tmp_path / "demo.json" and not list(tmp_path.glob(".*.tmp"))
    back = shipped.read("demo", tmp_path)
    assert back == _result() and back.provenance["torch"] == torch.__version__
    assert shipped.load_current("demo", "k1", tmp_path) == back
    assert shipped.load_current("demo", "k2", tmp_path) is None          # stale
    assert shipped.load_current("other", "k1", tmp_path) is None         # missing
    monkeypatch.setenv("RESODE_RECOMPUTE", "1")
    assert shipped.load_current("demo", "k1", tmp_path) is None
    monkeypatch.setenv("RESODE_RECOMPUTE", "maybe")
    with pytest.raises(ValueError, match="RESODE_RECOMPUTE='maybe'"):
        shipped.load_current("demo", "k1", tmp_path)


@pytest.mark.parametrize("text", ['{"format": 1, "name": "demo"', "", "[1, 2]", "null",
                                  '{"format": 7}', b"\xff\xfe".decode("latin-1"),
                                  '{"format": 1, "name": "other", "key": "k1", "config": {},'
                                  ' "provenance": {}, "data": 1}'])
def test_a_damaged_file_is_named_and_recomputed(tmp_path, text):
    (tmp_path / "demo.json").write_text(text)
    with pytest.raises(ValueError, match="demo.json is damaged"):
        shipped.read("demo", tmp_path)
    with pytest.warns(UserWarning, match="recomputing"):
        assert shipped.load_current("demo", "k1", tmp_path) is None


def test_bad_names_and_folders_are_named(tmp_path):
    for name in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="a result name"):
            shipped.read(name, tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file: name a folder"):
        shipped.check_writable(tmp_path / "file")
    with pytest.raises(ValueError, match="allow_nan|Out of range"):
        shipped.save(_result(data=[float("nan")]), tmp_path)


def test_describe_says_where_it_came_from_and_how_to_recompute():
    text = shipped.describe(_result())
    assert "results/demo.json" in text and "python -m demo" in text
    assert "RESODE_RECOMPUTE=1" in text and str(Path.home()) not in text
    other = _result()
    other.provenance["torch"] = "0.0.1"
    assert "computed with torch 0.0.1" in shipped.describe(other)


def test_results_dir_is_the_repository_folder_unless_set(monkeypatch, tmp_path):
    monkeypatch.delenv("RESODE_RESULTS", raising=False)
    assert shipped.results_dir() == ROOT / "results"
    monkeypatch.setenv("RESODE_RESULTS", str(tmp_path))
    assert shipped.results_dir() == tmp_path


def test_table1_command_refuses_a_file_as_out_before_any_work(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    with pytest.raises(SystemExit):
        table1.main(["--config", "smoke", "--out", str(tmp_path / "f")])
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        table1.main(["--config", "smoke", "--processes", "0"])


COMMITTED = sorted((ROOT / "results").glob("*.json"))


def test_the_shipped_results_are_there():
    names = {p.stem for p in COMMITTED}
    assert {"ch04-fig4-cpu", "ch05-table1-paper", "ch06-cpu-full-cpu", "ch06-table2-cpu",
            "ch08-benchmark-cpu", *ch05_runs.FULL_RUNS} <= names


@pytest.mark.parametrize("path", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_every_committed_result_is_current_for_this_code(path, monkeypatch):
    monkeypatch.delenv("RESODE_RECOMPUTE", raising=False)
    stored = shipped.read(path.stem, path.parent)
    for field in ("command", "seconds", "device", "date", "commit", "torch", "platform"):
        assert stored.provenance.get(field) is not None, f"{path.name}: no {field}"
    fix = (f"{path.name} is stale for the current code or configuration: rerun "
           f"`{stored.provenance['command']}` and commit the new file")
    if path.stem.startswith("ch05-table1-"):
        assert table1.load_table1(stored.config["name"], path.parent) is not None, fix
    elif path.stem in ch05_runs.FULL_RUNS:
        assert ch05_runs.is_current(path.stem, path.parent), fix
    elif path.stem.startswith("ch04-fig4-"):
        assert ch04.load_fig4(stored.config["name"], path.parent) is not None, fix
    elif path.stem.startswith("ch06-table2-"):
        assert ch06_table2.load(stored.config["name"], path.parent) is not None, fix
    elif path.stem.startswith("ch06-"):
        device = path.stem.split("-")[-1] if not stored.provenance.get("scale") or \
            stored.provenance["scale"] == ch06.DEFAULT_SCALE else stored.provenance["device"]
        found = ch06.load(stored.config["name"], device, path.parent, any_data=True,
                          scale=stored.provenance.get("scale"))
        assert found is not None, fix
    elif path.stem.startswith("ch08-benchmark-"):
        assert ch08.load_benchmark(stored.config["name"], path.parent) is not None, fix
    else:
        pytest.fail(f"{path.name}: no loader knows this result")


@pytest.mark.slow
def test_a_pip_installed_package_finds_the_shipped_results(tmp_path):
    """What Colab does: install the package (not editable) and load from another folder."""
    import shutil
    source, target = tmp_path / "source", tmp_path / "site"
    source.mkdir()       # a copy, so that the build leaves nothing in the checkout
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for name in ("resode_tut", "results"):
        shutil.copytree(ROOT / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.png"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(source)], check=True,
                   capture_output=True)
    assert sorted(p.name for p in (target / "resode_tut/experiments/results").glob("*.json")) \
        == [p.name for p in COMMITTED]
    code = ("import resode_tut, pathlib; from resode_tut.experiments import table1, ch06, shipped\n"
            "assert str(pathlib.Path(resode_tut.__file__)).startswith(%r), resode_tut.__file__\n"
            "assert shipped.results_dir().name == 'results'\n"
            "assert table1.load_table1('paper') is not None\n"
            "assert ch06.load('cpu-full', 'cpu', any_data=True) is not None\n"
            "from resode_tut.experiments import ch04, ch06_table2\n"
            "assert ch04.load_fig4('cpu') is not None and ch06_table2.load('cpu') is not None\n"
            "from resode_tut.experiments import ch05_runs\n"
            "assert all(ch05_runs.is_current(n) for n in ch05_runs.FULL_RUNS)\n"
            "print('ok')" % str(target))
    env = {k: v for k, v in os.environ.items() if k != "RESODE_RESULTS"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={**env, "PYTHONPATH": str(target)})
    assert out.stdout.strip() == "ok", out.stderr


def test_chapter_5_runs_round_trip_bitwise(tmp_path, monkeypatch):
    from resode_tut import Solver
    monkeypatch.setenv("RESODE_RESULTS", str(tmp_path))
    specs = [dict(task="spheres2d", solver=Solver("fehlberg2", tol=1e-3), adapt="tol", seed=0,
                  iterations=12, lr=1e-3),
             dict(task="digits", solver=Solver("euler", 1 / 2), adapt="step", iterations=12,
                  batch_size=32)]
    trained = ch05_runs.train_runs(specs, name="t-runs", processes=1)
    loaded = ch05_runs.train_runs(specs, name="t-runs", processes=1)
    for (m1, h1, l1), (m2, h2, l2) in zip(trained, loaded):
        assert m1.solver == m2.solver and h1 == h2 and l1 == l2
        for k, v in m1.state_dict().items():
            assert torch.equal(v, m2.state_dict()[k])
    grid, models = ch05_runs.seed_grid("spheres2d", [1 / 2], [0], 8, 1e-2, name="t-grid",
                                       processes=1)
    again, models2 = ch05_runs.seed_grid("spheres2d", [1 / 2], [0], 8, 1e-2, name="t-grid",
                                         processes=1)
    assert again.accuracy == grid.accuracy and again.shipped.name == "t-grid"
    for k, v in models[0.5][0].state_dict().items():
        assert torch.equal(v, models2[0.5][0].state_dict()[k])
    # another configuration is not served the file
    other, _ = ch05_runs.seed_grid("spheres2d", [1 / 2], [0], 9, 1e-2, name="t-grid",
                                   processes=1)
    assert not hasattr(other, "shipped") or other.shipped.config["iterations"] == 9


def test_an_empty_results_folder_never_hides_the_shipped_results(monkeypatch, tmp_path):
    """RESODE_RESULTS is where your own runs go and are looked for first; the shipped
    results are still found (a fresh clone with an empty RESODE_RESULTS recomputes
    nothing)."""
    monkeypatch.delenv("RESODE_RECOMPUTE", raising=False)
    monkeypatch.setenv("RESODE_RESULTS", str(tmp_path))
    assert shipped.results_dir() == tmp_path
    assert shipped.search_dirs() == [tmp_path, ROOT / "results"]
    assert table1.load_table1("paper") is not None
    assert ch06.load("cpu-full", "cpu", any_data=True) is not None
    assert all(ch05_runs.is_current(n) for n in ch05_runs.FULL_RUNS)
    # a current result of your own comes first; a stale one does not hide the shipped one
    shipped.save(shipped.ShippedResult("ch05-table1-paper", "stale", {}, {}, None), tmp_path)
    assert table1.load_table1("paper").shipped.path.parent == ROOT / "results"


def test_load_checked_serves_a_result_that_passes_its_check_and_names_one_that_fails(tmp_path):
    shipped.save(_result(data={"runs": [1, 2]}), tmp_path)
    sweep, found = shipped.load_checked("demo", "k1", lambda r: len(r.data["runs"]), tmp_path)
    assert sweep == 2 and found.data == {"runs": [1, 2]}
    assert shipped.load_checked("demo", "k2", lambda r: 0, tmp_path) is None        # stale
    with pytest.warns(UserWarning, match="demo.json .*'missing'.*recomputed"):
        assert shipped.load_checked("demo", "k1", lambda r: r.data["missing"], tmp_path) is None

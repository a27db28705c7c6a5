"""Chapter 5's Table 1 run: the adapted seeds, the table's rows, and its cache."""
import json
import os

import numpy as np
import pytest
import torch

from resode_tut.experiments import shipped
from resode_tut.experiments import solver_dependence as sd
from resode_tut.experiments import table1 as t1

TINY = sd.Table1Config("tiny", "spheres2d", (1 / 2, 1 / 4), (2, 3), 105, 1e-2,
                       batch_size=16, reference_step=1 / 16)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    return t1.table1(TINY, processes=2, out_dir=out), out


def test_a_computed_table_is_cached_and_read_back_unchanged(tiny):
    result, out = tiny
    assert not result.cached and os.path.isfile(result.path)
    again = t1.table1(TINY, out_dir=out)
    assert again.cached and again.path == result.path
    assert again.grid.accuracy == result.grid.accuracy
    assert again.adapted.accuracy == result.adapted.accuracy
    assert again.strict.accuracy == result.strict.accuracy
    assert again.strict.logs == result.strict.logs and again.strict.gap_limit == 3.0
    assert again.rows() == result.rows()
    assert again.shipped.provenance["command"] == t1.command(TINY)
    # the key names the configuration: another one is not served this file
    other = sd.Table1Config(**{**TINY.__dict__, "iterations": 21})
    assert t1.table1_key(other) != t1.table1_key(TINY)
    assert t1.load_table1(other, out) is None


def test_rows_are_computed_from_the_per_seed_numbers(tiny):
    result, _ = tiny
    rows = {r["method"]: r for r in result.rows(tol=100.0)}    # every step "keeps"
    h = max(TINY.steps)
    assert result.grid_choice(tol=100.0) == h
    grid = rows["grid search"]
    own = 100 * np.asarray(result.grid.accuracy[h][("own", 1)])
    assert grid["nfe"] == 1 / h and grid["accuracy"][0] == pytest.approx(own.mean())
    assert grid["accuracy"][1] == pytest.approx(own.std(ddof=1))
    adapt = rows["step adaptation"]
    assert adapt["nfe"] == pytest.approx(np.mean(result.adapted.nfe))
    assert adapt["gap"] == pytest.approx(np.mean(result.adapted.gaps()))
    strict = rows["step adaptation, strict"]
    assert strict["nfe"] == pytest.approx(np.mean(result.strict.nfe))
    assert (adapt["gap_limit"], strict["gap_limit"]) == (10.0, TINY.strict_gap_limit)
    assert result.grid_choice(tol=-1.0) is None      # nothing keeps a negative gap
    assert [r["method"] for r in result.rows(tol=-1.0)] == ["step adaptation",
                                                            "step adaptation, strict"]


@pytest.mark.parametrize("run", ["adapted", "strict"])
def test_the_adapted_seeds_are_those_train_node_gives(tiny, run):
    """Seed 3 (position 1) of each ensemble ends at the step a lone train_node run with
    the same adapter (the paper's check, or the strict one) and seed ends at."""
    from resode_tut import StepSizeAdapter, train_node
    result, _ = tiny
    runs = getattr(result, run)
    data = sd.load_task("spheres2d")
    model = sd.make_model("spheres2d", sd.Solver("euler", 1.0), seed=3)
    adapter = StepSizeAdapter(gap_limit=runs.gap_limit)
    hist = train_node(model, data, TINY.iterations, lr=TINY.lr, batch_size=TINY.batch_size,
                      seed=3, adapter=adapter, log_every=TINY.iterations)
    assert runs.step_sizes[1] == pytest.approx(adapter.step_size, rel=1e-9)
    assert runs.nfe[1] == pytest.approx(hist.nfe[0])
    assert runs.logs[1] == adapter.log


def test_a_damaged_or_cut_file_is_recomputed_with_a_warning(tiny, tmp_path):
    result, _ = tiny
    path = tmp_path / f"{t1.result_name(TINY)}.json"
    text = result.shipped.to_json()
    whole = json.loads(text)
    d = whole["data"]
    for bad in (text[: len(text) // 2], text.replace('"format": 1', '"format": 2'), "[1, 2]",
                "null", json.dumps({**whole, "data": [1, 2]}),
                json.dumps({**whole, "data": {**d, "grid": {"accuracy": {}, "seconds": 0}}}),
                json.dumps({**whole, "data": {**d, "strict": None}}),   # the config runs it
                json.dumps({**whole, "data": {**d, "strict": {**d["strict"],
                                                                "gap_limit": 10.0}}})):
        path.write_text(bad)
        with pytest.warns(UserWarning, match="damaged|not a Table 1 result"):
            assert t1.load_table1(TINY, tmp_path) is None
    path.write_text(text)
    assert t1.load_table1(TINY, tmp_path).rows() == result.rows()


def test_the_paper_configuration_is_the_papers():
    c = t1.TABLE1_CONFIGS["paper"]
    assert (c.lr, c.batch_size, c.iterations, len(c.seeds)) == (1e-4, 128, 10_000, 15)
    assert min(c.steps) == 1 / 128 and max(c.steps) == 1 / 2
    with pytest.raises(ValueError, match="unknown Table 1 configuration"):
        t1.table1("huge")


def test_the_papers_model_has_a_kaiming_head_with_zero_bias():
    m = sd.make_model("spheres2d", sd.Solver("euler", 1 / 2), seed=0)
    assert torch.all(m.head.bias == 0)
    w = torch.cat([sd.make_model("spheres10d", sd.Solver("euler", 1 / 2), seed=s).head.weight
                   .flatten() for s in range(200)])
    assert w.std().item() == pytest.approx((2 / 10) ** 0.5, rel=0.1)   # Kaiming: sqrt(2/fan_in)


def test_the_command_line_stores_what_the_chapter_then_loads(tmp_path):
    """Run as ``python -m`` the module is ``__main__``: its result must still be keyed by
    the computing module's code, so that the chapter (which imports it) finds it."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "resode_tut.experiments.table1",
                          "--config", "smoke", "--processes", "1", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    found = t1.load_table1("smoke", tmp_path)
    assert found is not None and found.cached
    assert found.shipped.key == shipped.result_key(
        dict(found.shipped.config), t1.COMPUTING_MODULE)
    assert "computed" in out.stdout and "step adaptation" in out.stdout


def test_the_papers_check_is_the_adapters_default_and_halvings_count_the_logs(tiny):
    from resode_tut import StepSizeAdapter
    assert sd.PAPER_GAP_LIMIT == StepSizeAdapter().gap_limit
    result, _ = tiny
    assert result.adapted.gap_limit == sd.PAPER_GAP_LIMIT
    # seed 2's strict check halves where the paper's grows (its batch gap, 6.2 points,
    # lies between the two limits)
    assert result.strict.halvings()[0] == result.adapted.halvings()[0] + 1
    assert result.strict.halvings() == [[e["action"] for e in log].count("halve")
                                        for log in result.strict.logs]

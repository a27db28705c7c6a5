"""Resumable job maps: a stopped run resumes where it stopped and ends with the numbers of
an uninterrupted one; damaged or foreign chunks are refused by name."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from resode_tut.experiments import chunks
from resode_tut.experiments import solver_dependence as sd
from resode_tut.experiments import table1 as t1

CALLS = []
FAIL_AT = set()


def _job(job):
    """A module-level job (workers import it by name): a float result, a tuple, a dict."""
    CALLS.append(job[0])
    if job[0] in FAIL_AT:
        raise RuntimeError(f"stopped at job {job[0]}")
    return {"square": job[0] ** 2 / 3, "pair": (job[0], job[1]), "name": job[1]}


JOBS = [(i, f"job{i}") for i in range(5)]


@pytest.fixture(autouse=True)
def _reset():
    CALLS.clear()
    FAIL_AT.clear()


def test_results_are_those_of_a_plain_map_as_json_reads_them(tmp_path):
    results, run = chunks.resumable_map(_job, JOBS, 1, tmp_path / "c")
    assert results == [json.loads(json.dumps(_job(j))) for j in JOBS]
    assert results[2]["pair"] == [2, "job2"]              # a tuple comes back a list
    assert (run["invocations"], run["resumed"]) == (1, 0) and run["seconds"] > 0
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [f"job-{i}.json" for i in range(5)]
    # without a folder: the same results, nothing kept
    assert chunks.resumable_map(_job, JOBS, 1)[0] == results
    # in two worker processes: the same results
    assert chunks.resumable_map(_job, JOBS, 2, tmp_path / "two")[0] == results


def test_a_stopped_run_resumes_and_ends_as_an_uninterrupted_one(tmp_path):
    whole, _ = chunks.resumable_map(_job, JOBS, 1)
    FAIL_AT.add(3)
    CALLS.clear()
    with pytest.raises(RuntimeError, match="stopped at job 3"):
        chunks.resumable_map(_job, JOBS, 1, tmp_path)
    assert CALLS == [0, 1, 2, 3]                          # jobs 0-2 were kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job-0.json", "job-1.json",
                                                          "job-2.json"]
    FAIL_AT.clear()
    CALLS.clear()
    results, run = chunks.resumable_map(_job, JOBS, 1, tmp_path)
    assert CALLS == [3, 4]                                # only what was missing
    assert results == whole
    assert (run["invocations"], run["resumed"]) == (2, 3)
    # all found: nothing runs, the same numbers
    CALLS.clear()
    again, run = chunks.resumable_map(_job, JOBS, 1, tmp_path)
    assert CALLS == [] and again == whole and run["resumed"] == 5
    # a deleted chunk: that job alone runs again
    (tmp_path / "job-1.json").unlink()
    assert chunks.resumable_map(_job, JOBS, 1, tmp_path)[0] == whole and CALLS == [1]


def test_a_damaged_chunk_is_refused_by_name(tmp_path):
    chunks.resumable_map(_job, JOBS, 1, tmp_path)
    path = tmp_path / "job-2.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])               # a file cut short
    with pytest.raises(ValueError, match=r"job-2\.json: a damaged chunk.*delete it"):
        chunks.resumable_map(_job, JOBS, 1, tmp_path)
    path.write_text(json.dumps({"job": json.loads(text)["job"]}))      # a field missing
    with pytest.raises(ValueError, match="damaged chunk"):
        chunks.resumable_map(_job, JOBS, 1, tmp_path)
    path.write_text(text)
    assert chunks.resumable_map(_job, JOBS, 1, tmp_path)[0][2]["square"] == 4 / 3


def test_a_chunk_of_another_job_is_refused(tmp_path):
    chunks.resumable_map(_job, JOBS, 1, tmp_path)
    other = [(i, f"other{i}") for i in range(5)]
    with pytest.raises(ValueError, match=r"job-0\.json: a chunk of another job"):
        chunks.resumable_map(_job, other, 1, tmp_path)
    assert CALLS == list(range(5))                        # and nothing ran for it


def test_two_processes_on_one_folder_agree(tmp_path):
    script = textwrap.dedent(f"""
        import json, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_chunks import JOBS, _job
        from resode_tut.experiments.chunks import resumable_map
        results, _ = resumable_map(_job, JOBS * 4, 1, {str(tmp_path)!r})
        print(json.dumps(results))
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    first, second = (json.loads(o[0]) for o in outs)
    assert first == second == chunks.resumable_map(_job, JOBS * 4, 1)[0]
    assert len(list(tmp_path.glob("job-*.json"))) == 20 and not list(tmp_path.glob(".*.tmp"))


SMALL = sd.Table1Config("chunked", "spheres2d", (1 / 2, 1 / 4), (2,), 60, 1e-2,
                        batch_size=16, reference_step=1 / 8)


def test_table1_resumes_from_its_chunks_with_the_same_numbers(tmp_path, monkeypatch):
    whole = sd.compute_table1(SMALL, processes=1)
    folder = tmp_path / "chunks"
    ran = []
    real = sd._table_job

    def stop_at_grid(job):
        ran.append(job[0])
        if job[0] == "grid" and job[2] == 1 / 4:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(sd, "_table_job", stop_at_grid)
    with pytest.raises(KeyboardInterrupt):
        sd.compute_table1(SMALL, processes=1, chunks=folder)
    assert ran == ["adapt", "adapt", "grid"] and len(list(folder.iterdir())) == 2
    ran.clear()
    monkeypatch.setattr(sd, "_table_job", lambda job: (ran.append(job[0]), real(job))[1])
    resumed = sd.compute_table1(SMALL, processes=1, chunks=folder)
    assert ran == ["grid", "grid"] and resumed["invocations"] == 2
    drop = ("seconds", "invocations")
    strip = lambda d: {k: v for k, v in d.items() if k not in drop}
    assert strip(resumed["grid"]) == strip(whole["grid"])
    for run in ("adapted", "strict"):
        assert strip(resumed[run]) == strip(whole[run])


def test_table1_keeps_its_chunks_until_stored_and_drops_older_code(tmp_path, monkeypatch):
    key = t1.table1_key(SMALL)
    stale = tmp_path / ".partial" / f"{t1.result_name(SMALL)}-0000000000000000"
    stale.mkdir(parents=True)
    (stale / "job-0.json").write_text("{}")
    kept = []
    real = chunks.resumable_map

    def watch(fn, jobs, processes, folder):
        kept.append(Path(folder))
        return real(fn, jobs, processes, folder)

    monkeypatch.setattr(sd, "resumable_map", watch)
    table = t1.table1(SMALL, processes=1, out_dir=tmp_path)
    assert kept == [tmp_path / ".partial" / f"{t1.result_name(SMALL)}-{key}"]
    assert not stale.exists() and not kept[0].exists()    # stored: chunks removed
    assert table.shipped.provenance["invocations"] == 1
    assert "invocations" not in json.loads(Path(table.path).read_text())["data"]

"""scripts/explain_failure.sh names the chapter, the cell and the reason of a failed build,
including a cell stopped by the per-cell timeout (reports live below _build/reports/book/)."""
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TIMEOUT_LOG = (
    "Traceback (most recent call last):\n"
    '  File "nbclient/client.py", line 782, in _async_poll_for_reply\n'
    "nbclient.exceptions.CellTimeoutError: A cell timed out while it was being executed, "
    "after 1800 seconds.\n"
    "The message was: Cell execution timed out.\n"
    "Here is a preview of the cell contents:\n"
    "-------------------\n"
    "['table = ex.table1(run.pick(quick=ex.QUICK_TABLE1, full=\"paper\"),', "
    "'                 cache_result=run.mode == \"full\")']\n"
    "-------------------\n")


def _run(tmp_path, name, text):
    for part in ("scripts", "_config.yml"):
        src = ROOT / part
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / part)
    log = tmp_path / "_build" / "reports" / "book" / f"{name}.err.log"
    log.parent.mkdir(parents=True)
    log.write_text(text)
    return subprocess.run(["bash", "scripts/explain_failure.sh"], cwd=tmp_path,
                          capture_output=True, text=True).stdout


def test_a_timed_out_cell_is_named_with_its_chapter_and_the_limit(tmp_path):
    out = _run(tmp_path, "05_solver_dependence", TIMEOUT_LOG)
    assert "chapter book/05_solver_dependence" in out
    assert "per-cell limit of 1800 s" in out and "ex.table1(" in out
    assert "no chapter failed" not in out


def test_another_error_shows_its_last_lines(tmp_path):
    out = _run(tmp_path, "01_resnets_are_euler_steps",
               "Traceback (most recent call last):\nAssertionError: slope -0.5\n")
    assert "chapter book/01_resnets_are_euler_steps" in out and "AssertionError" in out

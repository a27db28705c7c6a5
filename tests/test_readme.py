"""The README works as written: its Python examples run, its command lines exist."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
BASH_BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.DOTALL)
MODULES = sorted({m for block in BASH_BLOCKS
                  for m in re.findall(r"python -m (resode_tut[\w.]*)", block)})


def test_the_readme_has_examples_and_command_lines():
    assert len(PYTHON_BLOCKS) >= 2 and MODULES


@pytest.mark.slow
def test_python_examples_run_in_order(tmp_path):
    """All Python blocks, one after another in one fresh interpreter (later blocks use the
    names earlier ones define), except the Colab snippet that sets the run mode."""
    code = "\n".join(b for b in PYTHON_BLOCKS if "RESODE_MODE" not in b)
    script = tmp_path / "readme_examples.py"
    # one thread: the examples are tiny, and two spinning threads crawl on a busy machine
    script.write_text("import torch\ntorch.set_num_threads(1)\n" + code)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ODE regime" in done.stdout


@pytest.mark.parametrize("module", MODULES)
def test_command_lines_exist_and_explain_themselves(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


def test_commands_named_in_the_readme_are_the_packages():
    for path in re.findall(r"(scripts/\w+\.sh|\.\./shared/data/\w+\.py)", README):
        if not path.startswith(".."):
            assert (ROOT / path).is_file(), path
    for name in re.findall(r"`(rt\.\w+)", README):
        import resode_tut as rt
        assert hasattr(rt, name[3:]), f"the README names {name}, which rt does not have"


def test_no_placeholder_is_left():
    left = re.findall(r"\b[A-Z][A-Z0-9]*_(?:TIME|TODO|XXX)\b|\bTODO\b|\bXXX\b", README)
    assert not left, f"the README still holds placeholders: {left}"

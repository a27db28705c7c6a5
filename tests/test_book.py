"""Consistency of the book's sources: pairs, outputs, first cells, one repository URL."""
import re
from pathlib import Path

import jupytext
import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
URL = CONFIG["repository"]["url"]
PAGES = [c["file"] for part in TOC["parts"] for c in part["chapters"]]
CHAPTERS = [p for p in PAGES if re.match(r"book/\d\d_", p)]


def test_toc_lists_every_chapter_file():
    on_disk = sorted(str(p.relative_to(ROOT).with_suffix(""))
                     for p in (ROOT / "book").glob("[0-9][0-9]_*.md"))
    assert CHAPTERS == on_disk, "every book/NN_topic.md must be in _toc.yml, in order"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_first_code_cell_installs_on_colab_only_and_sets_up(chapter):
    nb = jupytext.read(ROOT / f"{chapter}.md")
    first = next(c.source for c in nb.cells if c.cell_type == "code")
    assert '"google.colab" in sys.modules' in first
    install = re.search(r'%pip install -q "resode-tut @ git\+(\S+)"', first)
    assert install and install.group(1) == URL, "install cell must use _config.yml's URL"
    assert "torch" not in first.split("%pip")[1].split("\n")[0], "never reinstall torch on Colab"
    assert "rt.setup(" in first and "%matplotlib inline" in first


def test_repository_url_is_the_same_everywhere():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["urls"]["Homepage"] == URL
    readme = (ROOT / "README.md").read_text()
    github = set(re.findall(r"https://github\.com/[\w-]+/[\w-]+(?:\.[\w-]+)*", readme))
    assert github == {URL}, f"README links to other repositories: {github - {URL}}"
    owner, repo = URL.rstrip("/").split("/")[-2:]
    assert f"https://{owner}.github.io/{repo}" in readme
    assert project["urls"]["Documentation"] == f"https://{owner}.github.io/{repo}"


def test_every_citation_is_in_the_bibliography():
    bib = (ROOT / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    cited = set()
    for md in (ROOT / "book").glob("*.md"):
        for group in re.findall(r"\{cite:[pt]\}`([^`]+)`", md.read_text()):
            cited.update(k.strip() for k in group.split(","))
    assert cited <= keys, f"cited but not in references.bib: {cited - keys}"


def test_every_figure_is_drawn_for_the_column():
    """Figures at most MAX_WIDTH_IN wide, no font below MIN_FONT_PT, the style set in every
    chapter: with the browser test's measurement, the smallest text is >= 9 px on the page."""
    from resode_tut.experiments.plots import MAX_WIDTH_IN, MIN_FONT_PT
    sources = sorted(ROOT.glob("book/0*.md")) + sorted(ROOT.glob("resode_tut/experiments/*.py"))
    for path in sources:
        text = path.read_text()
        for width in re.findall(r"figsize=\(([\d.]+)", text):
            assert float(width) <= MAX_WIDTH_IN, f"{path.name}: a figure {width} in wide"
        for size in re.findall(r"fontsize=(\d+)", text):
            assert int(size) >= MIN_FONT_PT, f"{path.name}: fontsize={size}"
    for path in sorted(ROOT.glob("book/0*.md")):
        assert "ex.use_style()" in path.read_text(), f"{path.name} does not set the style"


def test_every_package_and_the_shipped_results_are_installed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {str(p.parent.relative_to(ROOT)).replace("/", ".")
                for p in (ROOT / "resode_tut").rglob("__init__.py")}
    assert packages <= set(setuptools["packages"]), "list every package in pyproject.toml"
    assert setuptools["package-dir"]["resode_tut.experiments.results"] == "results"
    assert setuptools["package-data"]["resode_tut.experiments.results"] == ["*.json"]

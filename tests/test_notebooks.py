"""The Colab notebooks: made from the chapters by scripts/make_notebooks.py, plain Jupyter
Markdown only, output-free, numbered and cited as the book is."""
import importlib.util
import json
import re
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("make_notebooks",
                                               ROOT / "scripts" / "make_notebooks.py")
mk = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mk)
CHAPTERS = mk.chapters()

# what Colab would show as raw text: roles, directives, colon fences, options, targets
MYST_LEFT = [re.compile(p, re.M) for p in (
    r"\{[a-z][a-z:-]*\}`", r"^\s*(```+|:::+)\s*\{", r"^:::", r"^:(label|language|pyobject|"
    r"caption|name|class):", r"^\([\w-]+\)=\s*$", r"\{bibliography\}")]


def test_every_committed_notebook_is_what_the_generator_makes():
    assert mk.main(["--check"]) == 0, "run `python scripts/make_notebooks.py`"


def test_the_check_fails_on_a_stale_notebook(tmp_path, monkeypatch, capsys):
    page = CHAPTERS[0]
    (tmp_path / "book").mkdir()
    for name in ("_config.yml", "_toc.yml", "references.bib"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    for p in mk.pages():
        (tmp_path / f"{p}.md").write_text((ROOT / f"{p}.md").read_text())
    (tmp_path / "resode_tut").symlink_to(ROOT / "resode_tut")       # the listings' sources
    monkeypatch.setattr(mk, "ROOT", tmp_path)
    assert mk.main([]) == 0 and (tmp_path / f"{page}.ipynb").exists()
    assert mk.main(["--check"]) == 0
    md = tmp_path / f"{page}.md"
    md.write_text(md.read_text().replace("## ", "## Changed ", 1))
    assert mk.main(["--check"]) == 1
    assert Path(page).name in capsys.readouterr().err


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_no_myst_is_left_and_no_outputs(chapter):
    nb = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)
    for k, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            for pattern in MYST_LEFT:
                found = pattern.search(cell.source)
                assert not found, f"{chapter}.ipynb cell {k}: MyST left: {found.group(0)!r}"
        elif cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
            assert "mystnb" not in cell.metadata


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_caption_follows_its_figure_and_every_equation_is_numbered(chapter):
    src = jupytext.read(ROOT / f"{chapter}.md")
    nb = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)
    eqs, figs = mk.numbers()
    captions = [c.metadata["mystnb"]["figure"] for c in src.cells
                if "figure" in c.metadata.get("mystnb", {})]
    shown = [nb.cells[k + 1].source for k, c in enumerate(nb.cells[:-1])
             if c.cell_type == "code" and nb.cells[k + 1].cell_type == "markdown"
             and nb.cells[k + 1].source.startswith("**Fig. ")]
    assert len(shown) == len(captions)
    for fig, text in zip(captions, shown):
        assert text.startswith(f"**Fig. {figs[fig['name']]}.** ")
    labels = re.findall(r"^:label: (\S+)", (ROOT / f"{chapter}.md").read_text(), re.M)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for label in labels:
        assert f"\\tag{{{eqs[label]}}}\n$$" in markdown


def test_listings_are_the_package_source():
    nb = nbformat.read(ROOT / "book/07_scaling_up.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    source = (ROOT / "resode_tut/distributed.py").read_text()
    start = source.index("def shard(")
    body = source[start:source.index("\n\n\n", start)]
    assert body in text, "the listing of distributed.shard is not the package's source"


def test_the_first_cells_are_the_colab_form_and_the_costs():
    for chapter in CHAPTERS:
        nb = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4)
        assert nb.cells[0].source.startswith("# ")                     # the title
        assert "Running this chapter on Colab" in nb.cells[1].source
        assert "| quick |" in nb.cells[1].source and "| full |" in nb.cells[1].source
        form = nb.cells[2]
        assert "# @param [\"quick\", \"full\"]" in form.source
        assert 'if "google.colab" in sys.modules' in form.source   # never outside Colab
        gpu = Path(chapter).name in mk.GPU_CHAPTERS
        assert (nb.metadata.get("accelerator") == "GPU") == gpu
        assert ("gains from a GPU" in nb.cells[1].source) == gpu


def _convert(text, eqs=None, figs=None):
    conv = mk.Converter("book/test", eqs or {"eq-a": "3.7"}, figs or {"fig-b": "3.12"},
                        mk.bibliography())
    return conv.convert(text), conv


def test_each_construct_becomes_plain_markdown():
    out, conv = _convert(
        "See {eq}`eq-a` and {numref}`fig-b`; {cite:t}`sander2022resnets` and "
        "{cite:p}`ott2021resnet,chen2018neural`.\n\n```{math}\n:label: eq-a\nx = 1\n```\n\n"
        "```{note}\nA {eq}`eq-a` note.\n```\n\n[chapter 3](03_memory_free_adjoint)")
    assert "See (3.7) and Fig. 3.12; Sander et al. (2022) and (Ott et al., 2021; Chen et " \
           "al., 2018)." in out
    assert "$$\nx = 1 \\tag{3.7}\n$$" in out
    assert "> **Note**\n>\n> A (3.7) note." in out
    assert f"[chapter 3]({mk.book_url()}/book/03_memory_free_adjoint.html)" in out
    assert conv.cited == ["sander2022resnets", "ott2021resnet", "chen2018neural"]
    refs = conv.references()
    assert refs.startswith("## References") and "Peyré, G. (2022)" in refs


@pytest.mark.parametrize("text, message", [
    ("{eq}`eq-missing`", "unknown label"),
    ("{numref}`fig-missing`", "unknown figure"),
    ("{cite:t}`nobody2020`", "not in references.bib"),
    ("{term}`adjoint`", "role is left"),
    ("```{margin}\ntext\n```", "directive {margin} is not converted"),
    ("```{math}\nx = 1\n", "never closed"),
    ("(sec-x)=\n# Title", "target is left"),
])
def test_what_is_not_converted_is_an_error_that_names_it(text, message):
    with pytest.raises(mk.MystLeft, match=message):
        _convert(text)


def test_numbering_is_per_chapter_in_book_order():
    eqs, figs = mk.numbers()
    assert eqs["eq-resnet"] == "1.1"
    for k, chapter in enumerate(CHAPTERS, start=1):
        text = (ROOT / f"{chapter}.md").read_text()
        labels = re.findall(r"^:label: (\S+)", text, re.M)
        assert [eqs[label] for label in labels] == [f"{k}.{i}" for i in
                                                    range(1, len(labels) + 1)]
        names = [c.metadata["mystnb"]["figure"]["name"] for c in
                 jupytext.read(ROOT / f"{chapter}.md").cells
                 if "figure" in c.metadata.get("mystnb", {})]
        assert [figs[n] for n in names] == [f"{k}.{i}" for i in range(1, len(names) + 1)]
        title = nbformat.read(ROOT / f"{chapter}.ipynb", as_version=4).cells[0].source
        assert title.startswith(f"# {k}. ")


def test_costs_file_is_measured_and_names_its_machine():
    costs = json.loads((ROOT / "book" / "costs.json").read_text())
    assert costs["measured"]["load"] and costs["measured"]["machine"]
    for chapter in CHAPTERS:
        entry = costs["chapters"][Path(chapter).name]
        assert entry["quick"] > 0 and entry["full"] > 0


def test_chapter_1_lists_the_whole_step_without_its_docstring():
    """The listing selects lines of Euler.step: a changed docstring must not cut the body
    or leave half a docstring."""
    nb = nbformat.read(ROOT / "book/01_resnets_are_euler_steps.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    listing = text.split("`Euler.step` from `resode_tut/schemes.py`:\n\n```python\n")[1]
    listing = listing.split("\n```")[0]
    import inspect

    from resode_tut.schemes import Euler
    source = inspect.getsource(Euler.step)
    body = source.split('"""')[2].strip("\n")
    import textwrap
    assert listing == textwrap.dedent(source.split("\n")[0] + "\n" + body)

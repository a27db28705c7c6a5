r"""Make the Colab notebooks (book/NN_topic.ipynb) from the chapters (book/NN_topic.md).

Colab renders plain Jupyter Markdown only. The chapters are MyST: `{math}` blocks with
labels, `{eq}`/`{numref}`/`{cite:t}`/`{cite:p}` roles, `literalinclude` of the package's
source, figure captions in `mystnb` cell metadata. This script writes each chapter as a
notebook in which all of these are plain Markdown, so that Colab shows what the book shows:

- display maths as `$$ ... \tag{n} $$`, numbered as the HTML book numbers it;
- `{eq}` as "(n)", `{numref}` as "Fig. n" (the book's own words and numbers);
- citations as "Sander et al. (2022)" / "(Sander et al., 2022)", and a references cell at
  the end listing what the chapter cites;
- `literalinclude` as the included source in a fenced code block (read with Sphinx's own
  reader, so it is the same text as the book's);
- each figure's caption as a Markdown cell under the cell that draws it;
- admonitions as block quotes; links to other pages of the book as links to the online book;
- a first cell for Colab: the run mode as a form field, and what the chapter costs in each
  mode (``book/costs.json``, measured by ``scripts/book.sh``);
- Colab's accelerator metadata on the chapters that gain from a GPU.

Anything else in MyST syntax is an error (named with its file and line), never passed on.

    python scripts/make_notebooks.py            # write every chapter's notebook
    python scripts/make_notebooks.py --check    # exit 1 if a committed notebook is stale
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import types
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]

#: Chapters that gain from a GPU (Colab opens them on a GPU runtime): chapter 3's
#: benchmark and memory measurement, chapter 6's CIFAR-10 training (gpu-full), chapter 7's
#: multi-GPU and CUDA memory cells.  The others are small float64 or 2-d runs that a GPU
#: does not speed up.
GPU_CHAPTERS = ("03_memory_free_adjoint", "06_cifar_finetuning", "07_scaling_up")

_ROLE = re.compile(r"\{(eq|numref|cite:t|cite:p|ref|doc)\}`([^`]+)`")
_ANY_ROLE = re.compile(r"\{[a-z][a-z:-]*\}`")
_FENCE = re.compile(r"^(```+|:::+)\{([a-z-]+)\}(.*)$")
_ADMONITIONS = ("note", "tip", "warning", "important", "caution", "attention", "hint",
                "seealso", "admonition", "danger", "error")


class MystLeft(ValueError):
    """A MyST construct that the generator does not convert."""


def config() -> dict:
    """The book's ``_config.yml``."""
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def book_url() -> str:
    """The online book: ``https://<owner>.github.io/<repo>`` from the repository URL."""
    owner, repo = config()["repository"]["url"].rstrip("/").split("/")[-2:]
    return f"https://{owner}.github.io/{repo}"


def _toc() -> dict:
    return yaml.safe_load((ROOT / "_toc.yml").read_text())


def pages() -> list[str]:
    """The book's pages in ``_toc.yml`` order (``book/intro``, chapters, references)."""
    toc = _toc()
    return [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]


def chapters() -> list[str]:
    """The chapters (``book/NN_topic``) in order."""
    return [p for p in pages() if re.match(r"book/\d\d_", p)]


def chapter_numbers() -> dict:
    """Page -> its number in the book: the pages of the numbered parts of ``_toc.yml``,
    counted from 1 in order, as Sphinx numbers a numbered toctree.
    """
    numbered = [c["file"] for part in _toc()["parts"] if part.get("numbered")
                for c in part["chapters"]]
    return {page: k + 1 for k, page in enumerate(numbered)}


# -- numbering: the same as the HTML book ----------------------------------------------

def _split_fences(text: str):
    """Yield ``(kind, name, options, body, line)`` for each fenced MyST directive and
    ``("text", None, None, chunk, line)`` for the text between them.
    """
    lines = text.split("\n")
    i, start, chunk = 0, 0, []
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            chunk.append(lines[i])
            i += 1
            continue
        if chunk:
            yield "text", None, None, "\n".join(chunk), start + 1
        fence, name, arg = m.group(1), m.group(2), m.group(3).strip()
        j, options, body = i + 1, {}, []
        while j < len(lines) and re.match(r"^:[\w-]+:", lines[j]):
            key, _, value = lines[j][1:].partition(":")
            options[key] = value.strip()
            j += 1
        while j < len(lines) and lines[j].rstrip() != fence:
            body.append(lines[j])
            j += 1
        if j == len(lines):
            raise MystLeft(f"line {i + 1}: the {name} block is never closed")
        options["_arg"] = arg
        yield "directive", name, options, "\n".join(body), i + 1
        i, start, chunk = j + 1, j + 1, []
    if chunk:
        yield "text", None, None, "\n".join(chunk), start + 1


def numbers() -> tuple[dict, dict]:
    """``(equations, figures)``: label -> number as the HTML book gives it, ``"4.2"``:
    per chapter (:func:`chapter_numbers`), counting labelled ``{math}`` blocks and figures
    (``mystnb.figure.name``) in order, as Sphinx numbers them in a numbered toctree.
    """
    eqs, figs = {}, {}
    for page, chapter in chapter_numbers().items():
        nb = jupytext.read(ROOT / f"{page}.md")
        n_eq = n_fig = 0
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                for kind, name, options, _, _ in _split_fences(cell.source):
                    if kind == "directive" and name == "math" and options.get("label"):
                        n_eq += 1
                        eqs[options["label"]] = f"{chapter}.{n_eq}"
            fig = cell.metadata.get("mystnb", {}).get("figure", {})
            if fig.get("name"):
                n_fig += 1
                figs[fig["name"]] = f"{chapter}.{n_fig}"
    return eqs, figs


# -- citations ---------------------------------------------------------------------------

def bibliography() -> dict:
    """``references.bib`` read with pybtex (installed with sphinxcontrib-bibtex)."""
    from pybtex.database import parse_file
    return parse_file(str(ROOT / "references.bib")).entries


def _plain(text: str) -> str:
    """BibTeX text as plain text: braces and accents resolved."""
    import codecs

    import latexcodec  # noqa: F401  (registers the "ulatex" codec; a pybtex dependency)
    return codecs.decode(text, "ulatex").replace("{", "").replace("}", "").strip()


def _surname(person) -> str:
    return _plain(" ".join(person.prelast_names + person.last_names))


def cite_label(entry) -> tuple[str, str]:
    """``(authors, year)`` as the text shows them: the book's own rule
    (``_ext/bibstyle.author_year``), so that notebooks and pages cite alike.
    """
    sys.path.insert(0, str(ROOT / "_ext"))
    try:
        from bibstyle import author_year
    finally:
        sys.path.remove(str(ROOT / "_ext"))
    return author_year(entry)


def reference(entry) -> str:
    """One line of the references cell."""
    people = entry.persons.get("author", [])
    authors = ", ".join(f"{_surname(p)}, {' '.join(_plain(n)[0] + '.' for n in p.first_names)}"
                        for p in people)
    f = entry.fields
    venue = f.get("booktitle") or f.get("journal") or f.get("publisher") or ""
    extra = f" arXiv:{f['eprint']}." if f.get("eprint") else ""
    title = _plain(f.get("title", ""))
    title += "" if title.endswith(("?", "!", ".")) else "."
    where = f" *{_plain(venue)}*." if venue else ""
    return f"{authors} ({f.get('year', 'n.d.')}). {title}{where}{extra}"


# -- conversion ---------------------------------------------------------------------------

class Converter:
    """Converts one chapter's Markdown; collects what it cites."""

    def __init__(self, page: str, eqs: dict, figs: dict, bib):
        self.page, self.eqs, self.figs, self.bib = page, eqs, figs, bib
        self.cited: list[str] = []

    def fail(self, line: int, what: str):
        """Raise :class:`MystLeft` naming the page and line."""
        raise MystLeft(f"{self.page}.md, near line {line}: {what}")

    def role(self, m: re.Match, line: int) -> str:
        """The plain text of one role (an equation or figure number, a citation)."""
        kind, arg = m.group(1), m.group(2)
        if kind == "eq":
            if arg not in self.eqs:
                self.fail(line, f"{{eq}} to an unknown label {arg!r}")
            return f"({self.eqs[arg]})"
        if kind == "numref":
            if arg not in self.figs:
                self.fail(line, f"{{numref}} to an unknown figure {arg!r}")
            return f"Fig. {self.figs[arg]}"
        if kind in ("cite:t", "cite:p"):
            keys = [k.strip() for k in arg.split(",")]
            labels = []
            for key in keys:
                if key not in self.bib:
                    self.fail(line, f"citation of {key!r}, which is not in references.bib")
                if key not in self.cited:
                    self.cited.append(key)
                labels.append(cite_label(self.bib[key]))
            if kind == "cite:t":
                return "; ".join(f"{who} ({year})" for who, year in labels)
            return "(" + "; ".join(f"{who}, {year}" for who, year in labels) + ")"
        self.fail(line, f"the role {{{kind}}} is not converted")

    def text(self, chunk: str, line: int) -> str:
        """Markdown text with its roles and book links converted."""
        out = _ROLE.sub(lambda m: self.role(m, line), chunk)
        # links to another page of the book -> the online book
        out = re.sub(r"\]\((\d\d_[\w]+|intro|references)(?:\.md)?(#[\w-]+)?\)",
                     lambda m: f"]({book_url()}/book/{m.group(1)}.html{m.group(2) or ''})", out)
        left = _ANY_ROLE.search(out)
        if left:
            self.fail(line, f"a MyST role is left: {left.group(0)}")
        target = re.search(r"^\([\w-]+\)=\s*$", out, re.M)
        if target:
            self.fail(line, f"a MyST target is left: {target.group(0)}")
        return out

    def directive(self, name: str, options: dict, body: str, line: int) -> str:
        """One fenced directive as plain Markdown."""
        if name == "math":
            label = options.get("label")
            math = self.text(body.strip(), line)
            tag = f" \\tag{{{self.eqs[label]}}}" if label else ""
            return f"$$\n{math}{tag}\n$$"
        if name == "literalinclude":
            from sphinx.directives.code import LiteralIncludeReader
            path = ROOT / options["_arg"].lstrip("/")
            opts = {k: v for k, v in options.items() if k not in ("_arg", "language")}
            if "dedent" in opts:            # `:dedent:` alone: remove the common indent
                opts["dedent"] = int(opts["dedent"]) if opts["dedent"] else None
            source, _ = LiteralIncludeReader(
                str(path), opts, types.SimpleNamespace(source_encoding="utf-8")).read()
            language = options.get("language", "python")
            rel = path.relative_to(ROOT)
            what = f"`{options['pyobject']}` from " if "pyobject" in options else ""
            return f"{what}`{rel}`:\n\n```{language}\n{source.rstrip()}\n```"
        if name in _ADMONITIONS:
            title = options.get("_arg") or name.capitalize()
            inner = self.convert(body)
            quoted = "\n".join("> " + ln if ln else ">" for ln in inner.split("\n"))
            return f"> **{title}**\n>\n{quoted}"
        self.fail(line, f"the directive {{{name}}} is not converted")

    def convert(self, source: str) -> str:
        """A whole Markdown cell."""
        parts = []
        for kind, name, options, body, line in _split_fences(source):
            parts.append(self.text(body, line) if kind == "text"
                         else self.directive(name, options, body, line))
        return "\n".join(parts)

    def caption(self, cell) -> str | None:
        """The Markdown cell under a figure: its number and caption (None: no figure)."""
        fig = cell.metadata.get("mystnb", {}).get("figure", {})
        if not fig.get("caption"):
            return None
        number = self.figs.get(fig.get("name"))
        text = self.text(" ".join(fig["caption"].split()), 0)
        return f"**Fig. {number}.** {text}" if number else text

    def references(self) -> str | None:
        """The references cell: what the chapter cites, in order of first citation."""
        if not self.cited:
            return None
        lines = [f"- {reference(self.bib[k])}" for k in self.cited]
        return "## References\n\n" + "\n".join(lines)


def costs() -> dict:
    """``book/costs.json``: per chapter, measured seconds in each mode (see that file)."""
    path = ROOT / "book" / "costs.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _minutes(seconds) -> str:
    if seconds is None:
        return "not measured"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def colab_cells(page: str) -> list:
    """The cells a Colab reader meets first: the run mode as a form, what it costs."""
    name = page.split("/")[-1]
    table = costs()
    cost = table.get("chapters", {}).get(name, {})
    measured = table.get("measured", {})
    note = ""
    if measured:
        note = (f"Measured on {measured.get('machine', '?')} "
                f"({measured.get('full', {}).get('date', '?')}, one torch thread, every cell "
                "top to bottom, the install not counted; full mode with the shipped results "
                "loaded). Colab's free CPU runtime also has two cores. No GPU runtime has "
                "timed these chapters yet.")
    gpu = name in GPU_CHAPTERS
    rows = [
        "| mode | 2 CPU cores (measured) | Colab GPU runtime |",
        "|---|---|---|",
        f"| quick | {_minutes(cost.get('quick'))} | {cost.get('gpu_quick', 'not measured')} |",
        f"| full | {_minutes(cost.get('full'))} | {cost.get('gpu_full', 'not measured')} |",
    ]
    # what the shipped results of this chapter cost to recompute: their own wall times
    shipped = sorted((ROOT / "results").glob(f"ch{name[:2]}-*.json"))
    if shipped and cost.get("full") is not None:
        provs = [json.loads(p.read_text())["provenance"] for p in shipped]
        extra = sum(prov["seconds"] for prov in provs)
        # the runs' own loads: a run made beside other work took longer than it would alone
        load = max((float(prov[k]) for prov in provs
                    for k in ("load", "load_before", "load_after") if k in prov), default=0)
        busy = f" (as run, load up to {load:.1f})" if load > 2.5 else ""
        rows.append(f"| full, recomputing the shipped results (`RESODE_RECOMPUTE=1`) | "
                    f"{_minutes(cost['full'] + extra)}{busy} | not measured |")
    text = (
        "**Running this chapter on Colab.** The next cell chooses the run mode: `quick` "
        "runs every experiment small (what the book's CI runs; the claims still hold and "
        "are checked), `full` at the real scale. Runs too long for a page are loaded in "
        "seconds from the results shipped with the package (the cell that loads one says so "
        "and prints the command that recomputes it; set `RESODE_RECOMPUTE=1` to recompute "
        "them here). "
        + ("This chapter gains from a GPU: it opens on a GPU runtime "
           "(*Runtime → Change runtime type* to switch)." if gpu else
           "This chapter does not gain from a GPU; a CPU runtime is enough.")
        + "\n\nWhat the chapter costs, top to bottom:\n\n" + "\n".join(rows)
        + (f"\n\n{note}" if note else ""))
    form = ('# @title Run mode { display-mode: "form" }\n'
            'RESODE_MODE = "full"  # @param ["quick", "full"]\n'
            "import os\n"
            "import sys\n"
            'if "google.colab" in sys.modules:  # elsewhere RESODE_MODE comes from the '
            "environment\n"
            '    os.environ["RESODE_MODE"] = RESODE_MODE')
    return [nbformat.v4.new_markdown_cell(text),
            nbformat.v4.new_code_cell(form, metadata={"cellView": "form"})]


def notebook(page: str, eqs=None, figs=None, bib=None):
    """The Colab notebook of ``page`` (``book/NN_topic``)."""
    if eqs is None:
        eqs, figs = numbers()
    bib = bibliography() if bib is None else bib
    conv = Converter(page, eqs, figs, bib)
    src = jupytext.read(ROOT / f"{page}.md")
    number = chapter_numbers().get(page)
    cells = []
    for i, cell in enumerate(src.cells):
        if cell.cell_type == "markdown":
            text = conv.convert(cell.source)
            if i == 0 and number is not None:      # the title, numbered as in the book
                text = re.sub(r"^# ", f"# {number}. ", text, count=1)
            cells.append(nbformat.v4.new_markdown_cell(text))
            if i == 0:
                cells.extend(colab_cells(page))
        elif cell.cell_type == "code":
            meta = {k: v for k, v in cell.metadata.items() if k != "mystnb"}
            cells.append(nbformat.v4.new_code_cell(cell.source, metadata=meta))
            caption = conv.caption(cell)
            if caption:
                cells.append(nbformat.v4.new_markdown_cell(caption))
        else:
            cells.append(nbformat.v4.new_raw_cell(cell.source, metadata=dict(cell.metadata)))
    refs = conv.references()
    if refs:
        cells.append(nbformat.v4.new_markdown_cell(refs))
    meta = {"kernelspec": {"display_name": "Python 3", "language": "python",
                           "name": "python3"},
            "language_info": {"name": "python"},
            "colab": {"provenance": [], "name": Path(page).name + ".ipynb"},
            "resode": {"generated_from": f"{page}.md",
                       "generator": "scripts/make_notebooks.py"}}
    if Path(page).name in GPU_CHAPTERS:
        meta["accelerator"] = "GPU"
        meta["colab"]["gpuType"] = "T4"
    nb = nbformat.v4.new_notebook(cells=cells, metadata=meta)
    for k, cell in enumerate(nb.cells):      # stable ids: the file changes only with its text
        cell["id"] = f"c{k:03d}"
    return nb


def render(nb) -> str:
    """The notebook's file text (nbformat 4.5, one space indent, a final newline)."""
    return nbformat.writes(nb, version=4) + "\n"


def main(argv=None) -> int:
    """Write or check every chapter's notebook.

    Parameters
    ----------
    argv : list of str, optional
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a committed notebook differs from what this makes")
    args = parser.parse_args(argv)
    eqs, figs = numbers()
    bib = bibliography()
    stale = []
    for page in chapters():
        text = render(notebook(page, eqs, figs, bib))
        path = ROOT / f"{page}.ipynb"
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path.relative_to(ROOT))
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("stale notebooks (run `python scripts/make_notebooks.py`): "
              + ", ".join(map(str, stale)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

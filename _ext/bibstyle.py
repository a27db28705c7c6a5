"""Sphinx extension: author-year citations that read the same in the text and in the
references, with round brackets ("Sander et al. (2022)", "(Ott et al., 2021)" in the text;
"[Sander et al., 2022]" as the label of the entry in the references).

Registers the sphinxcontrib-bibtex referencing style ``author_year_round`` and the pybtex
formatting style ``authoryear`` (pybtex's ``plain`` entries, sorted by author and year,
labelled by first author's surname, "et al." for three or more authors, and year), both
selected in ``_config.yml``. ``scripts/make_notebooks.py`` writes the same labels into the
Colab notebooks.
"""
from dataclasses import dataclass, field

import sphinxcontrib.bibtex.plugin
from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from sphinxcontrib.bibtex.style.referencing import BracketStyle
from sphinxcontrib.bibtex.style.referencing.author_year import AuthorYearReferenceStyle


def _round() -> BracketStyle:
    return BracketStyle(left="(", right=")")


@dataclass
class AuthorYearRound(AuthorYearReferenceStyle):
    """Author-year references in round brackets."""

    bracket_parenthetical: BracketStyle = field(default_factory=_round)
    bracket_textual: BracketStyle = field(default_factory=_round)
    bracket_author: BracketStyle = field(default_factory=_round)
    bracket_label: BracketStyle = field(default_factory=_round)
    bracket_year: BracketStyle = field(default_factory=_round)


def _surname(person) -> str:
    import codecs

    import latexcodec  # noqa: F401  (registers the "ulatex" codec; a pybtex dependency)
    name = " ".join(person.prelast_names + person.last_names)
    return codecs.decode(name, "ulatex").replace("{", "").replace("}", "")


def author_year(entry) -> tuple[str, str]:
    """``(authors, year)`` of a pybtex entry as the book cites it: "Sander et al.",
    "Dupont and Doucet", "Chen" and the year (also used by ``scripts/make_notebooks.py``,
    so that the Colab notebooks cite as the pages do)."""
    names = [_surname(p) for p in entry.persons.get("author", [])]
    who = (names[0] if len(names) == 1 else " and ".join(names) if len(names) == 2
           else f"{names[0]} et al." if names else entry.key)
    return who, entry.fields.get("year", "n.d.")


class AuthorYearLabels(BaseLabelStyle):
    """Labels "Sander et al., 2022", "Dupont and Doucet, 2019", "Chen, 2018"."""

    def format_labels(self, sorted_entries):
        """Yield one label per entry."""
        for entry in sorted_entries:
            yield "{}, {}".format(*author_year(entry))


class AuthorYearStyle(PlainStyle):
    """pybtex's plain entries with :class:`AuthorYearLabels`, sorted by author and year."""

    default_label_style = "authoryear"
    default_sorting_style = "author_year_title"


def setup(app):
    """Register the two styles."""
    sphinxcontrib.bibtex.plugin.register_plugin(
        "sphinxcontrib.bibtex.style.referencing", "author_year_round", AuthorYearRound)
    register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabels)
    register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

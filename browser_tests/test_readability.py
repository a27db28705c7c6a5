"""What a reader sees at a 1280 px window and on a 390 px phone: nothing wider than the text column
without a scrollbar, every figure numbered and captioned, no error output, and figure text
large enough to read once the image is scaled into the column.

The figures' text size is read from the images themselves: every figure is drawn at
:data:`resode_tut.experiments.plots.DPI` dots per inch with fonts of at least
:data:`resode_tut.experiments.plots.MIN_FONT_PT` points (the package's one figure style), so a
glyph is ``MIN_FONT_PT / 72 * DPI`` image pixels tall before the page scales the image; the
test measures that scale for every image in the page.
"""
from __future__ import annotations

import pytest
from test_pages import CHAPTERS, PAGES, _load, browser, server  # noqa: F401  (fixtures below)  # noqa: F401

from resode_tut.experiments.plots import DPI, MIN_FONT_PT

MIN_TEXT_PX = 10

# Elements whose content may be wider than the column only if they scroll.
_OVERFLOW = """
const article = document.querySelector('article') || document.querySelector('main');
const right = article.getBoundingClientRect().right + 1;
const bad = [];
for (const el of article.querySelectorAll('pre, mjx-container[display="true"], div.math, table, '
                                          + 'div.cell_output, div.output, img, div.highlight')) {
  const style = getComputedStyle(el);
  if (style.display === 'inline') continue;
  const scrolls = ['auto', 'scroll'].includes(style.overflowX);
  const box = el.getBoundingClientRect();
  if (box.width === 0) continue;
  const wide = el.scrollWidth > el.clientWidth + 1;
  const scrollbar = el.offsetHeight - el.clientHeight > 0;   // a classic, visible scrollbar
  const clipped = wide && style.overflowX !== 'visible' && !(scrolls && scrollbar);
  const sticksOut = box.right > right && !el.closest('[style*="overflow"], .cell_output, pre');
  const spills = wide && style.overflowX === 'visible';
  if (clipped || sticksOut || spills) {
    bad.push(el.tagName + '.' + el.className + ': ' + (el.innerText || el.src || '').slice(0, 60));
  }
}
return bad;
"""

_FIGURES = """
const article = document.querySelector('article') || document.querySelector('main');
return Array.from(article.querySelectorAll('img'))
  .filter(i => i.src.includes('_images/') && i.naturalWidth > 100)
  .map(i => {
    const fig = i.closest('figure');
    const caption = fig && fig.querySelector('figcaption');
    const number = caption && caption.querySelector('.caption-number');
    return {src: i.src.split('/').pop(), shown: i.getBoundingClientRect().width,
            natural: i.naturalWidth, caption: caption ? caption.innerText : null,
            number: number ? number.innerText : null};
  });
"""


def _at_width(browser, server, page, width, script):  # noqa: F811
    """Run ``script`` on ``page`` in a window ``width`` px wide (then back to 1280 px)."""
    browser.set_window_size(width, 900)
    try:
        _load(browser, server, page)
        return browser.execute_script(script)
    finally:
        browser.set_window_size(1280, 900)


@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("page", PAGES)
def test_nothing_is_wider_than_the_column_without_a_scrollbar(browser, server, page,  # noqa: F811
                                                              width):
    bad = _at_width(browser, server, page, width, _OVERFLOW)
    assert not bad, f"{page} at {width} px: clipped or overflowing elements: {bad[:5]}"


_EQNO_OVERLAP = """
const out = [];
for (const eq of document.querySelectorAll('div.math')) {
  const no = eq.querySelector(':scope > span.eqno');
  const mj = eq.querySelector(':scope > mjx-container');
  if (!no || !mj) continue;
  const a = no.getBoundingClientRect(), b = mj.getBoundingClientRect();
  const inner = mj.firstElementChild ? mj.firstElementChild.getBoundingClientRect() : b;
  const right = Math.min(b.right, inner.right);   // what is drawn, not what scrolls away
  if (a.left < right - 1 && a.right > b.left && a.top < b.bottom && a.bottom > b.top) {
    out.push(no.innerText.trim());
  }
}
return out;
"""


@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("page", CHAPTERS)
def test_no_equation_number_covers_its_equation(browser, server, page, width):  # noqa: F811
    covered = _at_width(browser, server, page, width, _EQNO_OVERLAP)
    assert not covered, f"{page} at {width} px: equation numbers over their equation: {covered}"


@pytest.mark.parametrize("width", [1280, 390])
@pytest.mark.parametrize("page", CHAPTERS)
def test_every_figure_is_numbered_captioned_and_legible(browser, server, page,  # noqa: F811
                                                        width):
    figures = _at_width(browser, server, page, width, _FIGURES)
    assert figures, f"{page}: no figure"
    glyph = MIN_FONT_PT / 72 * DPI        # image pixels of the smallest text
    for fig in figures:
        assert fig["number"] and fig["number"].startswith("Fig"), \
            f"{page}: figure {fig['src']} has no number"
        assert fig["caption"] and len(fig["caption"]) > 40, \
            f"{page}: figure {fig['src']} has no caption saying what it shows"
        text_px = glyph * fig["shown"] / fig["natural"]
        assert text_px >= MIN_TEXT_PX, (
            f"{page}: figure {fig['src']} ({fig['natural']} px wide) is shown "
            f"{fig['shown']:.0f} px wide: its smallest text is {text_px:.1f} px tall")


@pytest.mark.parametrize("page", PAGES)
def test_no_error_output_is_rendered(browser, server, page):  # noqa: F811
    _load(browser, server, page)
    errors = browser.execute_script("""
        return Array.from(document.querySelectorAll('.output, .cell_output'))
          .map(o => o.innerText)
          .filter(t => /Traceback \\(most recent call last\\)|\\w+Error: |\\w+Warning: /.test(t))
          .map(t => t.slice(0, 120));""")
    assert not errors, f"{page}: error or warning output rendered: {errors[:3]}"

"""Real-browser checks of the built book (run after `jupyter-book build`).

Headless Chromium (Debian's chromium + chromium-driver) loads every page of
_toc.yml from a local HTTP server and checks what a reader sees: MathJax
typeset the equations (no raw TeX left in the visible text), every image
loaded, and the Colab button opens a notebook that exists in the repository.
A full-page screenshot of each page is kept under _build/screenshots/.
"""
from __future__ import annotations

import functools
import http.server
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())
PAGES = [TOC["root"]] + [c["file"] for part in TOC["parts"] for c in part["chapters"]]
CHAPTERS = [p for p in PAGES if re.match(r"book/\d\d_", p)]
RAW_TEX = re.compile(r"\\\(|\\\[|\$\$|\\begin\{|\\frac|\\mathbb|\\theta")


@pytest.fixture(scope="module")
def server():
    if not (HTML / "index.html").exists():
        pytest.fail(f"no built book at {HTML}: run `jupyter-book build .` first")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("headless Chromium is missing: apt-get install chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1280,900"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(60)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def _load(browser, server, page):
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{server}/{page}.html")
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script("return document.readyState") == "complete")
    # Wait for MathJax 3 to finish typesetting, when the page loads it.
    browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
            MathJax.startup.promise.then(() => done(true), () => done(false));
        } else { done(null); }""")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete)"))


@pytest.mark.parametrize("page", PAGES)
def test_page_renders(browser, server, page):
    _load(browser, server, page)
    text = browser.execute_script(
        "return document.querySelector('article, main, body').innerText")
    leftover = RAW_TEX.findall(text)
    assert not leftover, f"{page}: raw TeX left in the visible text: {leftover[:5]}"
    broken = browser.execute_script(
        "return Array.from(document.images).filter(i => !(i.naturalWidth > 0)).map(i => i.src)")
    assert not broken, f"{page}: images that did not load: {broken}"
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1280, min(max(height, 900), 16000))
    browser.save_screenshot(str(SHOTS / (page.replace("/", "_") + ".png")))
    browser.set_window_size(1280, 900)


@pytest.mark.parametrize("page", CHAPTERS)
def test_chapter_math_and_figures(browser, server, page):
    _load(browser, server, page)
    typeset = browser.execute_script("return document.querySelectorAll('mjx-container').length")
    assert typeset > 0, f"{page}: MathJax typeset no equation"
    figures = browser.execute_script(
        "return Array.from(document.images).filter(i => i.src.includes('_images/') "
        "&& i.naturalWidth > 100).length")
    assert figures > 0, f"{page}: no figure image rendered"


@pytest.mark.parametrize("page", CHAPTERS)
def test_colab_link_opens_existing_notebook(browser, server, page):
    _load(browser, server, page)
    links = browser.execute_script(
        "return Array.from(document.querySelectorAll('a')).map(a => a.href)"
        ".filter(h => h.includes('colab.research.google.com'))")
    assert links, f"{page}: no Colab launch button"
    repo = urlparse(CONFIG["repository"]["url"]).path.strip("/")
    branch = CONFIG["repository"]["branch"]
    prefix = f"https://colab.research.google.com/github/{repo}/blob/{branch}/"
    for href in links:
        assert href.startswith(prefix), f"{page}: Colab link {href} is not under {prefix}"
        path = href[len(prefix):]
        assert path.endswith(".ipynb"), f"{page}: Colab link opens {path}, not a notebook"
        assert (ROOT / path).is_file(), f"{page}: Colab link opens {path}, missing from the repo"


# what a public page must never show: the builder's home directory, its caches, this
# checkout's absolute path, a virtual environment
# (a comment that names a default such as ~/.cache/resode_tut is documentation, not a path
# of the builder's machine)
LOCAL_PATHS = [re.escape(str(Path.home())) + "/", r"/root/", r"/home/\w+/",
               re.escape(str(ROOT)), r"/tmp/", r"\.venv/"]


@pytest.mark.parametrize("page", PAGES)
def test_no_page_shows_a_local_path(browser, server, page):
    _load(browser, server, page)
    text = browser.execute_script("return document.body.innerText")
    found = [m.group(0) for p in LOCAL_PATHS for m in re.finditer(p, text)]
    assert not found, f"{page}: shows local paths {sorted(set(found))[:5]}"


def test_notebooks_number_equations_and_figures_as_the_book_does():
    """The Colab notebooks' "(7)" and "Fig. 12" are the numbers of the built pages."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("mk", ROOT / "scripts" / "make_notebooks.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    eqs, figs = mk.numbers()
    html = {page: (HTML / f"{page}.html").read_text() for page in CHAPTERS}
    seen_eqs, seen_figs = {}, {}
    for text in html.values():
        for label, number in re.findall(
                r'id="equation-([\w-]+)"[^>]*>\s*<span class="eqno">\(([\d.]+)\)', text):
            seen_eqs[label] = number
        for block in re.findall(r"<figure\b.*?</figure>", text, re.S):
            label = re.search(r'id="([\w-]+)"', block)
            number = re.search(r'<span class="caption-number">Fig\. ([\d.]+) </span>', block)
            if label and number:
                seen_figs[label.group(1)] = number.group(1)
    assert seen_eqs == eqs
    # a figure drawn only on a GPU has no image, so no number, in a CPU build: it must be
    # the last of its chapter, so that the others keep their numbers
    assert seen_figs == {k: v for k, v in figs.items() if k in seen_figs}
    for label in set(figs) - set(seen_figs):
        chapter, k = figs[label].split(".")
        assert not any(v.startswith(chapter + ".") and int(v.split(".")[1]) > int(k)
                       for v in seen_figs.values()), label


def test_every_citation_reads_as_its_reference():
    """A citation in the text ("Sander et al. (2022)") and the label of its entry in the
    references ("[Sander et al., 2022]") name the same authors and year."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("mk", ROOT / "scripts" / "make_notebooks.py")
    mk = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mk)
    bib = mk.bibliography()
    import html as entities
    plain = lambda path: entities.unescape(re.sub(r"<[^>]+>", "", path.read_text())).replace(
        "\xa0", " ")
    refs = plain(HTML / "book" / "references.html")
    for page in CHAPTERS:
        source = (ROOT / f"{page}.md").read_text()
        text = plain(HTML / f"{page}.html")
        for kind, keys in re.findall(r"\{cite:([pt])\}`([^`]+)`", source):
            for key in (k.strip() for k in keys.split(",")):
                who, year = mk.cite_label(bib[key])
                assert f"[{who}, {year}]" in refs, f"{key}: no reference labelled {who}, {year}"
                shown = f"{who} ({year})" if kind == "t" else f"{who}, {year}"
                assert shown in text, f"{page}: {key} is not cited as {shown!r}"

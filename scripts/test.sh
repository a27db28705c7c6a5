#!/usr/bin/env bash
# Run every test: ruff, unit tests (slow ones too), the chapters under nbval (quick
# mode), a book build with -W (quick mode), and real-browser checks of the built pages.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export RESODE_MODE=quick

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "== installing headless Chromium (Debian packages chromium, chromium-driver)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "error: the browser tests need Chromium and its driver:" >&2
        echo "       sudo apt-get install chromium chromium-driver" >&2
        exit 1
    fi
fi

echo "== 1/5 style: ruff (pyflakes, pycodestyle, imports, bugbear, NumPy docstrings)"
ruff check .
# the chapters' code as the Colab notebooks hold it: no line past the project's length
ruff check --isolated --select E501 --line-length 100 book/

echo "== 2/5 unit tests (tests/lib), experiment tests (tests/experiments), book consistency"
python -m pytest tests

echo "== 3/5 nbval: every chapter of _toc.yml, quick mode"
mapfile -t notebooks < <(python -c "import yaml; toc = yaml.safe_load(open('_toc.yml'));
[print(c['file'] + '.ipynb') for part in toc['parts'] for c in part['chapters']
 if c['file'].split('/')[-1][:2].isdigit()]")
python -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider "${notebooks[@]}"

echo "== 4/5 book build with -W, quick mode"
bash scripts/book.sh        # the README's build command, in quick mode (exported above)

echo "== 5/5 real-browser checks of the built pages (screenshots in _build/screenshots)"
python -m pytest browser_tests

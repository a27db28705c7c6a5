# Sourced by scripts/book.sh and scripts/test.sh: create .venv and install
# what the book and the tests need, once per version of pyproject.toml.
#
# torch==2.13.0 goes in first and every later install is constrained to it,
# so that no dependency pulls a CUDA build of torch.  Set RESODE_TORCH_INDEX
# (e.g. https://download.pytorch.org/whl/cpu) to take torch from another index.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.installed-$( (cat pyproject.toml; echo "$TORCH_VERSION") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "== installing torch==$TORCH_VERSION, then resode-tut[test] constrained to it"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "torch==$TORCH_VERSION" \
        ${RESODE_TORCH_INDEX:+--index-url "$RESODE_TORCH_INDEX"}
    echo "torch==$TORCH_VERSION" > .venv/constraints.txt
    .venv/bin/python -m pip install -q -c .venv/constraints.txt -e ".[test]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"
# Progress bars are for people: keep them out of the built pages and CI logs.
export TQDM_DISABLE=1
# CIFAR-10 for chapter 6: without internet, make the official batch layout from the JPEG
# mirror beside the checkout (../shared/data), once, and point the loader at it.
if [ -z "${RESODE_DATA:-}" ] && [ -f ../shared/data/make_cifar10.py ]; then
    export RESODE_DATA="$PWD/.data"
    if [ ! -f .data/cifar-10-batches-py/test_batch ]; then
        echo "== making CIFAR-10 (official layout) from ../shared/data/cifar10-jpeg.zip"
        python ../shared/data/make_cifar10.py .data
    fi
fi

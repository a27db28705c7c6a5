#!/usr/bin/env bash
# Build the HTML book into _build/html, executing every chapter.
# RESODE_MODE=full (default) runs the real scale; RESODE_MODE=quick the small one.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export RESODE_MODE=${RESODE_MODE:-full}
echo "== building the book (RESODE_MODE=$RESODE_MODE)"
jupyter-book build --all -W -n --keep-going .
echo "== book written to $PWD/_build/html/index.html"

#!/usr/bin/env bash
# Build the HTML book into _build/html, executing every chapter.
# RESODE_MODE=full (default) runs the real scale; RESODE_MODE=quick the small one.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export RESODE_MODE=${RESODE_MODE:-full}
echo "== building the book (RESODE_MODE=$RESODE_MODE, load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a))"
start=$SECONDS
status=0
jupyter-book build --all -W -n --keep-going . || status=$?
# The execution reports (tracebacks with local paths) are for the builder, not the site.
rm -rf _build/reports
[ -d _build/html/reports ] && mv _build/html/reports _build/reports
if [ "$status" != 0 ]; then
    bash "$(dirname "${BASH_SOURCE[0]}")/explain_failure.sh" >&2
    exit "$status"
fi
python - <<'PY'
import json
from pathlib import Path
t = json.loads(Path("_build/exec_times.json").read_text())
print(f"== execution time per page ({t['mode']} mode; load average after: {t['load_after']})")
for page, d in sorted(t["pages"].items()):
    print(f"   {page:<36} {d['seconds']:8.1f} s")
PY
echo "== book written to $PWD/_build/html/index.html in $((SECONDS - start)) s (load average" \
     "$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a))"

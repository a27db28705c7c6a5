#!/usr/bin/env bash
# After a failed book build: say which chapter and which cell failed, and why,
# from the execution reports that Jupyter Book leaves (moved to _build/reports).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
timeout=$(python - <<'PY' 2>/dev/null || echo "?"
import yaml; print(yaml.safe_load(open("_config.yml"))["execute"]["timeout"])
PY
)
# myst-nb writes one report per failed page, at its path below reports/ (book/NN_x.err.log)
mapfile -t logs < <(find _build/reports -name '*.err.log' 2>/dev/null | sort)
echo
echo "== the book build failed (load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo n/a))"
if [ ${#logs[@]} = 0 ]; then
    echo "   no chapter failed to execute: read the Sphinx warnings above (-W makes each one an error)"
    exit 0
fi
for log in "${logs[@]}"; do
    chapter=${log#_build/reports/}
    chapter=${chapter%.err.log}
    echo
    echo "---- chapter $chapter ($log)"
    if grep -q "CellTimeoutError" "$log"; then
        echo "   A cell ran longer than the per-cell limit of ${timeout} s (execute.timeout in"
        echo "   _config.yml) and was stopped. This is the cell:"
        awk '/Here is a preview of the cell contents/ {on = 1; next}
             on && /^-------------------$/ {n++; if (n == 2) exit; next}
             on && n == 1' "$log" | head -n 12 | sed 's/^/      /'
        echo "   Chapters run torch on RESODE_THREADS threads (default 1: robust when the cores"
        echo "   are shared); a larger value, or a CPU-heavy job beside the build, can make a cell"
        echo "   this slow. Run the chapter alone to see whether it fits the limit."
    else
        echo "   The cell and its error (the last lines of the report):"
        grep -v "^\s*$" "$log" | tail -n 25 | sed 's/^/      /'
    fi
done

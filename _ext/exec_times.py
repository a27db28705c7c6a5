"""Sphinx extension: after a build, write each page's execution time to
``_build/exec_times.json`` (from myst-nb's execution data), with the run mode and the
load average, so that ``scripts/book.sh`` can print them and ``scripts/record_costs.py``
can put them in ``book/costs.json`` (the cost table of every Colab notebook)."""
import json
import os
from pathlib import Path


def _write(app, exception):
    if exception is not None:
        return
    from myst_nb.sphinx_ import NbMetadataCollector
    times = {}
    for docname, data in NbMetadataCollector.get_doc_data(app.env).items():
        exec_data = data.get("exec_data") or {}
        if exec_data.get("runtime") is not None:
            times[docname] = {"seconds": round(float(exec_data["runtime"]), 1),
                              "succeeded": bool(exec_data.get("succeeded"))}
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    out = Path(app.outdir).parent / "exec_times.json"
    out.write_text(json.dumps({"mode": os.environ.get("RESODE_MODE", "full"),
                               "threads": os.environ.get("RESODE_THREADS", "1"),
                               "load_after": load, "pages": times}, indent=1) + "\n")


def setup(app):
    """Register the build-finished hook."""
    app.connect("build-finished", _write)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

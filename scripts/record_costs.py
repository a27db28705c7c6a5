"""Put the page execution times of the last book build into book/costs.json.

``scripts/book.sh`` leaves ``_build/exec_times.json`` (each page's execution time, the run
mode, the load average). This script copies the chapters' times into ``book/costs.json``
under that mode, with the date, the machine and the load, for the cost table that
``scripts/make_notebooks.py`` puts at the top of every Colab notebook. Run it after a
build on the reference machine (2 CPU cores), then ``python scripts/make_notebooks.py``.

    python scripts/record_costs.py [--load-before X] [--note TEXT]
"""
import argparse
import datetime
import json
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    """Merge ``_build/exec_times.json`` into ``book/costs.json``.

    Parameters
    ----------
    argv : list of str, optional
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--times", default=str(ROOT / "_build" / "exec_times.json"))
    parser.add_argument("--load-before", type=float, default=None,
                        help="the 1-minute load average when the build started")
    parser.add_argument("--how", default="a fresh clone, shipped results loaded",
                        help="how the build was run")
    args = parser.parse_args(argv)
    times = json.loads(Path(args.times).read_text())
    path = ROOT / "book" / "costs.json"
    costs = json.loads(path.read_text()) if path.exists() else {"chapters": {}, "measured": {}}
    mode = times["mode"]
    failed = [p for p, d in times["pages"].items() if not d["succeeded"]]
    if failed:
        raise SystemExit(f"not recorded: these pages failed to execute: {failed}")
    for page, d in times["pages"].items():
        name = page.split("/")[-1]
        if name[:2].isdigit():
            costs["chapters"].setdefault(name, {})[mode] = d["seconds"]
    costs["measured"]["machine"] = (f"{platform.system()} {platform.machine()}, "
                                    f"{os.cpu_count()} cores, no GPU")
    costs["measured"][mode] = {
        "date": datetime.date.today().isoformat(), "how": args.how,
        "threads": times.get("threads"), "load_before": args.load_before,
        "load_after": times.get("load_after")}
    costs["measured"]["load"] = {m: costs["measured"][m]["load_after"]
                                 for m in ("quick", "full") if m in costs["measured"]}
    path.write_text(json.dumps(costs, indent=1, sort_keys=True) + "\n")
    print(f"recorded {mode} times of {len(times['pages'])} pages in {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

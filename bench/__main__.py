"""``python -m bench [--quick] [--only NAME ...]``: run redirgate's benchmarks, print them, keep them.

Run from the repository root.  For each module named in :data:`MODULES`
(``bench/<name>.py``), in order: measure, print its table, then write

* ``bench/results/<YYYY-MM-DD>.json``: every module's result, with the date,
  ``quick`` and the Python version (one file per day; a later run that day
  replaces it);
* ``bench/results/<YYYY-MM-DD>-<module>-<chart id>.svg``: one bar chart per
  question the module answers.

``bench/results/`` is kept out of git (.gitignore).

The contract of a benchmark module (add one by writing it and listing its
name in :data:`MODULES`; nothing else changes):

``run(quick: bool) -> dict``
    Measures and returns JSON-serialisable figures.  Keep the per-run
    values (medians and spread are computed from them), say what was
    measured and on what, and report rather than assert: a figure that
    cannot be measured is missing with a reason, not an exception.
    ``quick`` must finish in a few minutes on a 2-core machine.
``table(result: dict) -> str``
    The human-readable table of one ``run`` result: what, on what, how
    many runs, medians with spread, ours beside the reference and the ratio.
``charts(result: dict) -> list[dict]`` (optional)
    One chart per question, each::

        {"id": "throughput", "title": str, "unit": str, "note": str,
         "categories": [label, ...],                 # one row each
         "series": [{"name": str,                    # one bar per row each
                     "values": [[median, min, max] or None, ...]}]}

    drawn by :func:`bench.svgchart.bar_chart`.

A module that raises is reported and recorded as ``{"error": ...}``; the
others still run.  ``bench/usb_path.py`` is not listed: it has only a
``main()``; ``bench/guest_dd.py`` runs its real-guest part (through
``serve-usb`` and through client + gateway) for the suite, and reports
instead of measuring when QEMU or the guest image is missing.

``--quick`` runs the whole suite in under two minutes on a 2-core machine,
the full set in under fifteen; each table says how many runs and what size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.svgchart import bar_chart

#: The benchmark modules, in the order they run: bench/<name>.py.
MODULES: tuple[str, ...] = (
    "relay",
    "parse",
    "usb_gateway",
    "fairness",
    "scale",
    "serial",
    "guest_dd",
    "real_usb",
    "resume",
    "cluster",
)
RESULTS = Path(__file__).resolve().parent / "results"


def run_module(name: str, quick: bool) -> tuple[dict[str, Any], Any]:
    """(result, module); the result is {"error": ...} if the module failed."""
    started = time.monotonic()
    try:
        module = importlib.import_module(f"bench.{name}")
        result: dict[str, Any] = module.run(quick)
    except Exception as exc:  # one broken benchmark must not hide the others
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}, None
    result.setdefault("wall_s", time.monotonic() - started)
    return result, module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer runs")
    parser.add_argument("--only", nargs="+", choices=MODULES, help="run only these modules")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write JSON and SVG")
    args = parser.parse_args(argv)
    today = dt.date.today().isoformat()
    record: dict[str, Any] = {"date": today, "quick": args.quick, "python": sys.version.split()[0], "modules": {}}
    args.results.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name in args.only or MODULES:
        print(f"\n=== bench.{name}{' (quick)' if args.quick else ''}", flush=True)
        result, module = run_module(name, args.quick)
        record["modules"][name] = result
        if module is None:
            print(f"failed: {result['error']}")
            continue
        print(module.table(result), flush=True)
        for chart in getattr(module, "charts", lambda _r: [])(result):
            path = args.results / f"{today}-{name}-{chart['id']}.svg"
            path.write_text(bar_chart(chart))
            written.append(path)
    json_path = args.results / f"{today}.json"
    json_path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"\nwrote {json_path}" + "".join(f"\n      {p}" for p in written))


if __name__ == "__main__":
    main()

"""What every benchmark module shares about reporting: table cells, medians
and ratios of per-run figures, and the command line of a module run as a
script (``--quick``, ``--runs``, ``--json``; the table on stdout).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["cell", "emit", "median", "ratio", "script_arguments"]


def median(values: list[float] | None) -> float | None:
    return statistics.median(values) if values else None


def ratio(a: list[float] | None, b: list[float] | None) -> float | None:
    """Median of `a` ÷ median of `b`; None when either is missing or `b`'s is 0."""
    ma, mb = median(a), median(b)
    return ma / mb if ma is not None and mb else None


def cell(values: list[float] | None, digits: int = 0, *, single: str = "") -> str:
    """``median [min–max]``, the median alone (plus `single`) for one run, ``—`` for none."""
    if not values:
        return "—"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}{single}"
    return f"{med:.{digits}f} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def script_arguments(doc: str | None, quick_help: str, *, runs: bool = True) -> argparse.ArgumentParser:
    """The options every module takes as a script; a module adds its own to the parser."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    if runs:
        parser.add_argument("--runs", type=int, help="override the number of runs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser


def emit(result: dict[str, Any], table: Callable[[dict[str, Any]], str], json_path: Path | None) -> None:
    """Print the table of `result`; write its figures to `json_path` too if given."""
    print(table(result))
    if json_path:
        json_path.write_text(json.dumps(result, indent=1))

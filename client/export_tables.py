"""The `[[serial]]` / `[[parallel]]` table shape of the client config, checked once.

Both kinds of port export are arrays of tables with a `name` (the export is
`KIND:NAME` in the inventory), a `port` and a `ring_bytes`, plus their own
keys.  `export_tables` walks such an array, reports the shared mistakes
(not an array, not a table, an unknown key, a name no selector can carry, a
name used twice) through the loader's `problem(key, reason)`, and yields
what is left for the kind's own checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from redirgate.proto.tunnel import SelectorError, parse_selector

__all__ = ["export_tables", "ring_bytes"]

Problem = Callable[[str, str], None]


def export_tables(
    kind: str, tables: Any, keys: set[str], problem: Problem
) -> Iterator[tuple[str, dict[str, Any], str]]:
    """(where, table, name) for each well-formed `[[kind]]` table."""
    if not isinstance(tables, list):
        problem(kind, f"must be an array of tables: [[{kind}]]")
        return
    seen: set[str] = set()
    for index, table in enumerate(tables):
        where = f"{kind}[{index}]"
        if not isinstance(table, dict):
            problem(where, "must be a table")
            continue
        for key in table:
            if key not in keys:
                problem(f"{where}.{key}", f"unknown key (expected one of: {', '.join(sorted(keys))})")
        name = table.get("name")
        if not isinstance(name, str):
            problem(f"{where}.name", f"missing (the export is {kind}:NAME)")
            continue
        try:
            parse_selector(f"{kind}:{name}")
        except SelectorError as exc:
            problem(f"{where}.name", exc.reason)
            continue
        if name in seen:
            problem(kind, f"export name {name!r} is used twice")
            continue
        seen.add(name)
        yield where, table, name


def ring_bytes(where: str, table: dict[str, Any], default: int, maximum: int, problem: Problem) -> int | None:
    """The table's `ring_bytes` (default when absent), None after reporting a bad one."""
    ring = table.get("ring_bytes", default)
    if not isinstance(ring, int) or isinstance(ring, bool) or not 0 < ring <= maximum:
        problem(f"{where}.ring_bytes", f"{ring!r}: a byte count in 1..{maximum}")
        return None
    return ring

"""`redirgate selfcheck`: placeholder, filled in once the codec lands."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(commands: Any) -> None:
    parser = commands.add_parser("selfcheck", help="check the usbredir codec (both roles)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return 0

"""`redirgate install-service gateway|client [--dry-run] [--root DIR]`: the systemd unit and friends.

The files themselves ship in the package (`cli/systemd/`): the unit
(`Type=notify`, hardening, reload = SIGHUP), for the client the udev rules
that let its unprivileged user open USB devices and ports, and a starting
config that is written only where none exists.  `@EXEC@` in a unit becomes
this Python running `-m redirgate.cli`, so a virtualenv install works
without anything on PATH.  The command creates the `redirgate` system user
when it is missing and reloads systemd and udev when it installed into the
running system; `--dry-run` prints every file and command instead, and
`--root DIR` installs under DIR (packaging, tests) without touching users
or daemons.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "planned_files", "unit_text"]

USER = "redirgate"


@dataclass(frozen=True)
class PlannedFile:
    path: Path  # where it goes, relative to the root ("etc/...")
    text: str
    mode: int
    keep_existing: bool = False  # a config the admin edits: never overwritten


def _shipped(name: str) -> str:
    return resources.files("redirgate.cli").joinpath("systemd", name).read_text()


def exec_command() -> str:
    """How systemd should start this installation of redirgate."""
    return f"{shlex.quote(sys.executable)} -m redirgate.cli"


def unit_text(kind: str) -> str:
    return _shipped(f"redirgate-{kind}.service").replace("@EXEC@", exec_command())


def planned_files(kind: str) -> list[PlannedFile]:
    files = [
        PlannedFile(Path(f"etc/systemd/system/redirgate-{kind}.service"), unit_text(kind), 0o644),
        PlannedFile(Path(f"etc/redirgate/{kind}.toml"), _shipped(f"{kind}.toml"), 0o640, keep_existing=True),
    ]
    if kind == "client":
        files.append(PlannedFile(Path("etc/udev/rules.d/70-redirgate.rules"), _shipped("70-redirgate.rules"), 0o644))
    return files


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "install-service", help="install the systemd unit (and for a client the udev rules) for gateway or client"
    )
    parser.add_argument("kind", choices=("gateway", "client"))
    parser.add_argument("--dry-run", action="store_true", help="print what would be written and run; change nothing")
    parser.add_argument(
        "--root", type=Path, default=Path("/"), metavar="DIR", help="install under DIR (no user, no daemon reload)"
    )
    parser.set_defaults(run=_run)


def _commands(kind: str, root: Path) -> list[list[str]]:
    """What follows the files on the running system."""
    if root != Path("/"):
        return []
    commands: list[list[str]] = []
    if _missing_user():
        commands.append(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/var/lib/redirgate",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ]
        )
    if kind == "client":
        commands.append(["udevadm", "control", "--reload"])
        commands.append(["udevadm", "trigger"])
    if Path("/run/systemd/system").is_dir():
        commands.append(["systemctl", "daemon-reload"])
    return commands


def _missing_user() -> bool:
    import pwd

    try:
        pwd.getpwnam(USER)
    except KeyError:
        return True
    return False


def _run(args: argparse.Namespace) -> int:
    kind: str = args.kind
    root: Path = args.root
    files = planned_files(kind)
    commands = _commands(kind, root)
    for planned in files:
        target = root / planned.path
        if planned.keep_existing and target.exists():
            print(f"keep   {target} (exists)")
            continue
        if args.dry_run:
            print(f"write  {target} (mode {planned.mode:04o}):")
            print("".join(f"    {line}\n" for line in planned.text.splitlines()), end="")
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.new")
            tmp.write_text(planned.text)
            tmp.chmod(planned.mode)
            os.replace(tmp, target)
        except OSError as exc:
            print(
                f"redirgate: cannot write {target}: {exc.strerror or exc} (run as root, or use --root DIR)",
                file=sys.stderr,
            )
            return 1
        print(f"wrote  {target}")
    for command in commands:
        line = " ".join(shlex.quote(c) for c in command)
        if args.dry_run:
            print(f"run    {line}")
            continue
        if shutil.which(command[0]) is None:
            print(f"skip   {line} ({command[0]} is not installed)")
            continue
        done = subprocess.run(command, check=False)
        if done.returncode != 0:
            print(f"redirgate: {line} failed with status {done.returncode}", file=sys.stderr)
            return 1
        print(f"ran    {line}")
    config = root / f"etc/redirgate/{kind}.toml"
    print(f"next: edit {config}, put the certificates under {config.parent / 'pki'} (owner {USER}, keys mode 0600),")
    print(f"      then: redirgate {kind} check && systemctl enable --now redirgate-{kind}")
    return 0

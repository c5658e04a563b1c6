"""Log output for the `redirgate` command: levels, plain/journald/JSON lines.

The options (`-v`, `--log-level`, `--log-format`) are accepted anywhere on
the command line: `hoist_log_options` moves them in front of the
subcommand before argparse sees them.  The services (`gateway run`,
`client run`) log at INFO by default, so an admin sees clients come and go, VMs attach
and detach and every refusal; one-shot commands stay at WARNING.  Under
systemd (`$JOURNAL_STREAM` names our stderr) lines carry a `<N>` syslog
priority prefix and no timestamp, which journald turns into the entry's
priority and time; `--log-format json` writes one JSON object per line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["FORMATS", "LEVELS", "JournalFormatter", "JsonFormatter", "hoist_log_options", "setup_logging"]

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "plain", "journal", "json")
_VERBOSE = re.compile(r"^-v+$")
_WITH_VALUE = ("--log-level", "--log-format")


def hoist_log_options(argv: Sequence[str]) -> list[str]:
    """`argv` with the logging options moved to the front (before `--`, if any)."""
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if _VERBOSE.match(arg) or arg == "--verbose" or arg.startswith(tuple(f"{o}=" for o in _WITH_VALUE)):
            front.append(arg)
        elif arg in _WITH_VALUE and i + 1 < len(argv):
            front += [arg, argv[i + 1]]
            i += 1
        else:
            rest.append(arg)
        i += 1
    return front + rest


# syslog priorities (sd-daemon.h's SD_ERR ... SD_DEBUG)
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JournalFormatter(logging.Formatter):
    """`<6>redirgate.gateway.tunnel: text`: journald reads the priority, adds the time."""

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        # a multi-line message stays one journal entry per line, each with its priority
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _stderr_is_journal(stream: TextIO) -> bool:
    """systemd sets $JOURNAL_STREAM to DEV:INODE of the stream it connected."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, inode = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


def setup_logging(level: int, fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure the root logger once for the whole command."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "journal" if _stderr_is_journal(stream) else "plain"
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "journal":
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)

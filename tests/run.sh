#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian/Ubuntu machine,
# then run it: system packages (QEMU, the reference usbredir library, ...),
# a virtualenv with redirgate installed editable, ruff and mypy
# (tests/lint.sh), pytest, and the fuzzers.
#
#   bash tests/run.sh [pytest args]
#
# REDIRGATE_REQUIRE_SYSTEM=1 (the default here) turns a missing system
# component into a test failure instead of a skip.  FUZZ_SECONDS sets how
# long each fuzz target runs (default 60; 0 skips fuzzing).
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/setup-system.sh

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip setuptools wheel
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'

# Format, lint and types first (ruff, mypy: tests/lint.sh). The tests run
# either way; a finding fails the run at the end.
lint=0
bash tests/lint.sh || lint=1

export REDIRGATE_REQUIRE_SYSTEM="${REDIRGATE_REQUIRE_SYSTEM:-1}"
export PYTHONSAFEPATH=1
.venv/bin/python -m pytest "$@"

if [ "${FUZZ_SECONDS:-60}" != "0" ]; then
    .venv/bin/python fuzz/run.py --seconds "${FUZZ_SECONDS:-60}"
fi

if [ "$lint" != 0 ]; then
    echo "tests/run.sh: the tests passed, but tests/lint.sh found problems (printed before the tests)" >&2
    exit 1
fi

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
# REDIRGATE_CPU_HOGS=N runs pytest beside N CPU-bound processes (CI uses one
# per core): the suite must stay green on a loaded machine, so CI proves it
# on every run instead of on a quiet one.
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
hogs=()
stop_hogs() {
    if [ "${#hogs[@]}" -gt 0 ]; then
        kill "${hogs[@]}" 2>/dev/null || true
        wait "${hogs[@]}" 2>/dev/null || true
        hogs=()
    fi
}
trap stop_hogs EXIT
trap 'stop_hogs; exit 143' TERM INT
for _ in $(seq 1 "${REDIRGATE_CPU_HOGS:-0}"); do
    python3 -c 'while True: pass' &
    hogs+=("$!")
done
if [ "${#hogs[@]}" -gt 0 ]; then
    echo "tests/run.sh: pytest runs beside ${#hogs[@]} CPU-bound processes (REDIRGATE_CPU_HOGS)"
fi
status=0
.venv/bin/python -m pytest "$@" || status=$?
stop_hogs
if [ "$status" != 0 ]; then
    exit "$status"
fi

if [ "${FUZZ_SECONDS:-60}" != "0" ]; then
    .venv/bin/python fuzz/run.py --seconds "${FUZZ_SECONDS:-60}"
fi

if [ "$lint" != 0 ]; then
    echo "tests/run.sh: the tests passed, but tests/lint.sh found problems (printed before the tests)" >&2
    exit 1
fi

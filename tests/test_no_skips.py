"""With REDIRGATE_REQUIRE_SYSTEM=1 a skip from anywhere fails the run (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_skipping_test(tmp_path: Path, require: str) -> subprocess.CompletedProcess[str]:
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tests / "test_skip.py").write_text("import pytest\n\ndef test_skips():\n    pytest.skip('no widget here')\n")
    env = {**os.environ, "REDIRGATE_REQUIRE_SYSTEM": require, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            str(tests),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_skip_fails_when_every_component_is_required(tmp_path: Path) -> None:
    result = _run_skipping_test(tmp_path, "1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no test may skip: Skipped: no widget here" in result.stdout


def test_a_skip_stays_a_skip_on_a_developer_machine(tmp_path: Path) -> None:
    result = _run_skipping_test(tmp_path, "")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout

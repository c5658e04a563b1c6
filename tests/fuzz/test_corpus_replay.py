"""Every input in fuzz/corpus/<target>/ goes through that target's own
TestOneInput (fuzz/<target>_fuzz.py), so an input that once found a bug and
was copied into the corpus keeps being checked by every test run, not only
when someone runs the fuzzer.

A target catches the errors its codec may raise on bad input (FilterError,
RemoteProtocolError, TunnelProtocolError) and raises on anything else or on
a broken property (chunking changes the events, a round trip changes a
message), so here any exception out of TestOneInput is a failure.  The
targets are loaded with a stand-in for atheris: replaying needs neither
libFuzzer nor coverage instrumentation.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
TARGETS = sorted(p.name for p in (FUZZ / "corpus").iterdir() if p.is_dir())


def load_target(name: str) -> Callable[[bytes], None]:
    """fuzz/<name>_fuzz.py's TestOneInput, the module imported without atheris."""
    stand_in = types.ModuleType("atheris")
    stand_in.instrument_imports = contextlib.nullcontext  # type: ignore[attr-defined]  # a bare module stands in for atheris
    saved = sys.modules.get("atheris")
    sys.modules["atheris"] = stand_in
    try:
        spec = importlib.util.spec_from_file_location(f"redirgate_fuzz_{name}", FUZZ / f"{name}_fuzz.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["atheris"]
        else:
            sys.modules["atheris"] = saved
    test_one_input: Callable[[bytes], None] = module.TestOneInput
    return test_one_input


def corpus_cases() -> list[object]:
    return [
        pytest.param(target, path, id=f"{target}/{path.name}")
        for target in TARGETS
        for path in sorted((FUZZ / "corpus" / target).iterdir())
    ]


def test_every_target_has_a_corpus_and_a_script() -> None:
    scripts = sorted(p.name.removesuffix("_fuzz.py") for p in FUZZ.glob("*_fuzz.py"))
    assert scripts == TARGETS
    assert all(any((FUZZ / "corpus" / t).iterdir()) for t in TARGETS)


@pytest.fixture(scope="module")
def targets() -> dict[str, Callable[[bytes], None]]:
    return {name: load_target(name) for name in TARGETS}


@pytest.mark.parametrize(("target", "path"), corpus_cases())
def test_corpus_input_passes_its_target(targets: dict[str, Callable[[bytes], None]], target: str, path: Path) -> None:
    targets[target](path.read_bytes())

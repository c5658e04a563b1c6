"""Run the atheris fuzz targets, each in its own subprocess, and summarise.

    python fuzz/run.py --seconds 60 [target ...]    fuzz (default: every target)
    python fuzz/run.py --replay [target ...]        only run the seed corpus once
    python fuzz/run.py --write-seeds                regenerate fuzz/corpus/<target>/

Each target reads its committed corpus fuzz/corpus/<target>/ and writes the
new inputs it finds to a temporary directory, so the repository corpus stays
small and curated (copy an interesting input over by hand).  Crash inputs are
kept in --artifacts (default: a temporary directory that is *not* removed
when something crashed); reproduce one with
`python fuzz/<target>_fuzz.py <crash-file>`.  The exit status is non-zero if
any target crashed, timed out or could not start.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = {
    "filter": HERE / "filter_fuzz.py",
    "usbredir": HERE / "usbredir_fuzz.py",
    "usbredir_host": HERE / "usbredir_host_fuzz.py",
    "tunnel": HERE / "tunnel_fuzz.py",
    "telnet": HERE / "telnet_fuzz.py",
    "resume": HERE / "resume_fuzz.py",
    "route_hello": HERE / "route_hello_fuzz.py",
    "admin": HERE / "admin_fuzz.py",
}
CORPUS = HERE / "corpus"
_EXECS = re.compile(r"stat::number_of_executed_units:\s*(\d+)")


def write_seeds(names: list[str]) -> None:
    for name in names:
        spec = importlib.util.spec_from_file_location(f"{name}_fuzz", TARGETS[name])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        folder = CORPUS / name
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.iterdir():
            old.unlink()
        seeds: dict[str, bytes] = module.seed_inputs()
        for seed_name, data in seeds.items():
            module.TestOneInput(data)  # a seed must pass its own target
            (folder / seed_name).write_bytes(data)
        print(f"{name}: wrote {len(seeds)} seeds to {folder}")


def run_target(name: str, seconds: int, max_len: int, artifacts: Path, replay: bool) -> bool:
    corpus = CORPUS / name
    with tempfile.TemporaryDirectory(prefix=f"redirgate-fuzz-{name}-") as new_corpus:
        cmd = [
            sys.executable,
            str(TARGETS[name]),
            "-print_final_stats=1",
            f"-artifact_prefix={artifacts}/{name}-",
            f"-max_len={max_len}",
            "-timeout=60",
        ]
        if replay:
            cmd += ["-runs=0", str(corpus)]
        else:
            cmd += [f"-max_total_time={seconds}", new_corpus, str(corpus)]
        started = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", check=False)
        elapsed = time.monotonic() - started
        found = len(list(Path(new_corpus).iterdir()))
    output = proc.stdout + proc.stderr
    match = _EXECS.search(output)
    execs = match.group(1) if match else "?"
    ok = proc.returncode == 0
    result = "ok" if ok else f"FAILED (exit {proc.returncode})"
    extra = "" if replay else f", {found} new inputs (not kept)"
    print(f"{name}: {execs} execs in {elapsed:.0f} s{extra}: {result}", flush=True)
    if not ok:
        tail = "\n".join(output.splitlines()[-60:])
        print(f"---- {name} output (last lines) ----\n{tail}\n---- crash inputs in {artifacts}", flush=True)
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "targets", nargs="*", metavar="target", help=f"targets to run (default all: {', '.join(TARGETS)})"
    )
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per target")
    parser.add_argument("--max-len", type=int, default=4096, help="largest input libFuzzer generates")
    parser.add_argument("--artifacts", type=Path, help="where crash inputs go")
    parser.add_argument("--replay", action="store_true", help="only run the corpus once")
    parser.add_argument("--write-seeds", action="store_true", help="regenerate the seed corpus")
    args = parser.parse_args(argv)
    names = args.targets or list(TARGETS)
    unknown = sorted(set(names) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}")
    if args.write_seeds:
        write_seeds(names)
        return 0
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="redirgate-fuzz-crashes-"))
    artifacts.mkdir(parents=True, exist_ok=True)
    failed = [name for name in names if not run_target(name, args.seconds, args.max_len, artifacts, args.replay)]
    if not failed and args.artifacts is None and not any(artifacts.iterdir()):
        artifacts.rmdir()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

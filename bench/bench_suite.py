"""How long the test suite takes: the fast loop (``pytest -m "not slow"``) and the full suite (what
``make test`` runs), each timed once on an otherwise idle machine, with their slowest tests.

    python bench/bench_suite.py --out bench/results/suite.json

The README's development section quotes both times from this file. A test run is never timed by a
test: this script is where the suite's speed is measured.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

from common import write_result

ROOT = Path(__file__).resolve().parent.parent
MAKE_TEST = ["-n", "2", "--dist", "loadgroup"]  # what `make test` adds: two pytest-xdist workers (tests/conftest.py)
SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?)")
DURATION = re.compile(r"^\s*([\d.]+)s (call|setup|teardown)\s+(\S+)", re.M)


def timed(args: list[str]) -> dict:
    """One pytest run: wall seconds, its counts and its 10 slowest steps."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=10", *args],
                          cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    counts = {kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in SUMMARY.findall(last)}
    return {"command": "pytest " + " ".join(args), "seconds": round(seconds, 1), "exit_status": done.returncode,
            "counts": counts, "summary": last,
            "failed": re.findall(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.M),
            "slowest": [{"seconds": float(s), "step": step, "test": test}
                        for s, step, test in DURATION.findall(done.stdout)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/suite.json")
    args = parser.parse_args()
    fast = timed(["-m", "not slow"])
    full = timed(MAKE_TEST)
    write_result(args.out, {"benchmark": "suite", "fast_loop": fast, "full_suite": full,
                            "targets": {"fast loop <= 30 s": fast["seconds"] <= 30,
                                        "full suite <= 600 s": full["seconds"] <= 600}})


if __name__ == "__main__":
    main()

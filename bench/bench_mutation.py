"""Mutation testing of the seed systems' code with the fast tests (mutmut 3, a dev extra).

mutmut names a mutant by its file's path, and imports the mutated copy from ``mutants/``; the
package maps ``modules/`` to ``modtrain.modules`` (and so on), which mutmut cannot follow. So this
script stages a plain ``src/modtrain/`` copy of the package and the tests in a scratch folder
(``build/mutation`` unless ``--stage``), runs ``mutmut run`` there with the fast tests
(``-m "not slow"``), and writes, per file, the mutants killed, survived, timed out and not
covered, the score (killed + timed out over all), and every survivor's name and diff, so that a
reader can judge which are equivalent.

    python bench/bench_mutation.py --out bench/results/mutation.json
    python bench/bench_mutation.py --files modules/snmn.py      # one file

It takes tens of minutes on two cores; don't run anything heavy beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FILES = ["modules/snmn.py", "modules/lnmn.py", "surrogates/factorized.py", "modtrain/execute.py"]
# the source folders and where each sits in the installed package (pyproject.toml's package-dir)
PACKAGE_DIRS = {"modtrain": "modtrain", "modules": "modtrain/modules", "surrogates": "modtrain/surrogates",
                "datasets": "modtrain/datasets", "recipes": "modtrain/recipes"}
# a mutant that makes a test hang or crash is caught too (pytest-timeout, mutmut's own limit)
KILLED = {"killed", "timeout", "segfault"}


def staged_path(file: str) -> str:
    top, _, rest = file.partition("/")
    return f"src/{PACKAGE_DIRS[top]}/{rest}"


def stage(folder: Path, files: list[str], children: int) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    for top, inside in PACKAGE_DIRS.items():
        shutil.copytree(ROOT / top, folder / "src" / inside, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "reports" if top == "modtrain" else "-"))
    shutil.copytree(ROOT / "modtrain" / "reports", folder / "src" / "modtrain" / "reports",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", folder / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    only = ", ".join(json.dumps(staged_path(f)) for f in files)
    (folder / "pyproject.toml").write_text(f"""[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "-p no:cacheprovider"
timeout = 120
markers = ["slow: end-to-end runs of a whole command on tiny data"]

[tool.mutmut]
source_paths = ["src"]
only_mutate = [{only}]
pytest_add_cli_args_test_selection = ["tests", "-m", "not slow"]
max_children = {children}
""")


def results(folder: Path, files: list[str]) -> dict:
    """mutmut's verdict per mutant (its own names for its exit codes), from ``mutants/**/*.meta``."""
    from mutmut.stats import status_by_exit_code

    out = {}
    for file in files:
        meta = folder / "mutants" / (staged_path(file) + ".meta")
        if not meta.exists():
            out[file] = {"error": f"no {meta.name}: mutmut did not run on it"}
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        verdicts: dict[str, list[str]] = {}
        for mutant, code in codes.items():
            verdict = status_by_exit_code[code]
            verdicts.setdefault(verdict, []).append(mutant)
        total = len(codes)
        caught = sum(len(verdicts.get(v, [])) for v in KILLED)
        out[file] = {"mutants": total, **{v: len(m) for v, m in sorted(verdicts.items())},
                     "score": round(caught / total, 4) if total else None,
                     "survivors": [{"mutant": m, "diff": diff(folder, m)} for m in sorted(verdicts.get("survived", []))]}
    return out


def diff(folder: Path, mutant: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mutmut", "show", mutant], cwd=folder, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if re.match(r"^[-+](?![-+])", line)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", nargs="+", default=FILES, help="source files, as in the repository")
    parser.add_argument("--stage", type=Path, default=ROOT / "build" / "mutation")
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", default="bench/results/mutation.json")
    args = parser.parse_args()
    for file in args.files:
        if file.partition("/")[0] not in PACKAGE_DIRS or not (ROOT / file).is_file():
            raise SystemExit(f"--files {file}: not a source file of the package "
                             f"(under {', '.join(f'{d}/' for d in PACKAGE_DIRS)})")
    stage(args.stage, args.files, args.children)
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(args.stage / "src")}
    done = subprocess.run([sys.executable, "-m", "mutmut", "run"], cwd=args.stage, env=env)
    seconds = round(time.perf_counter() - start)
    if done.returncode != 0:
        raise SystemExit(f"mutmut run failed (exit {done.returncode}) in {args.stage}")
    per_file = results(args.stage, args.files)
    write_result(args.out, {"tool": "mutmut " + _version(), "tests": "pytest -m 'not slow' tests",
                            "score": "(killed + timeout + segfault) / mutants", "target": 0.8, "seconds": seconds,
                            "files": per_file})


def _version() -> str:
    from importlib.metadata import version

    return version("mutmut")


if __name__ == "__main__":
    main()

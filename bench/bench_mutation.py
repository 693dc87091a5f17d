"""Mutation testing of the seed systems' code with the fast tests (mutmut 3, a dev extra).

mutmut names a mutant by its file's path, and imports the mutated copy from ``mutants/``; the
package maps ``modules/`` to ``modtrain.modules`` (and so on), which mutmut cannot follow. So this
script stages a plain ``src/modtrain/`` copy of the package and the tests in a scratch folder
(``build/mutation`` unless ``--stage``), runs ``mutmut run`` there with the fast tests
(``-m "not slow"``), and writes, per file, the mutants killed, survived, timed out and not
covered, the score (killed + timed out over all), and every survivor's name and diff, so that a
reader can judge which are equivalent. Each file is tested by the fast tests that exercise it
(``FILES``): the seed systems by ``tests/modules``, the surrogate and the executor by theirs;
files with the same tests are staged and run together.

    python bench/bench_mutation.py --out bench/results/mutation.json
    python bench/bench_mutation.py --files modules/snmn.py      # one file (the others kept from --out)

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
# each file with the fast tests that exercise it (mutmut runs, per mutant, those of them that
# reach the mutated function; a mutant that no test of its group reaches counts as a survivor)
FILES = {"modules/snmn.py": ("tests/modules",), "modules/lnmn.py": ("tests/modules",),
         "surrogates/factorized.py": ("tests/surrogates", "tests/test_execute.py", "tests/test_method.py",
                                      "tests/test_types.py", "tests/test_pipeline.py"),
         "modtrain/execute.py": ("tests/surrogates", "tests/test_execute.py", "tests/test_method.py",
                                 "tests/test_types.py", "tests/test_pipeline.py"),
         "modtrain/reuse.py": ("tests/test_reuse_remap.py", "tests/test_reuse_import.py"),
         "modtrain/device.py": ("tests/test_device.py", "tests/test_data_window.py")}
# the source folders and where each sits in the installed package (pyproject.toml's package-dir)
PACKAGE_DIRS = {"modtrain": "modtrain", "modules": "modtrain/modules", "surrogates": "modtrain/surrogates",
                "datasets": "modtrain/datasets", "recipes": "modtrain/recipes"}
# a mutant that makes a test hang or crash is caught too (pytest-timeout, mutmut's own limit)
KILLED = {"killed", "timeout", "segfault"}


# mutmut runs each mutant's tests in a forked child, where the generator's process pool (a
# fixture's data) would wait forever: the staged tests render in the test's own process
IN_PROCESS = """

import functools as _functools

import modtrain.datasets.generate as _generate_module

_generate = _generate_module.generate


@_functools.wraps(_generate)
def _generate_in_process(*args, **kwargs):
    return _generate(*args, **{**kwargs, "workers": 0})


_generate_module.generate = _generate_in_process
"""


# Survivors judged equivalent (or out of the fast tests' reach) by hand, each with its reason, keyed
# by a piece of the mutated line; the general kinds below catch the rest of what is explained.
JUDGED = [
    ("torch.softmax(a, 0).norm(2) * torch.softmax(a, 0).norm(1)", "equivalent: a softmax's l1 norm is 1"),
    ("torch.softmax(a, 0).norm(None)", "equivalent: norm(None) is the 2-norm"),
    ("default_rng([seed, 8])", "equivalent: any fixed stream draws a valid search split"),
    ("set_to_none=", "equivalent: zeroed gradients and absent ones give the same α step"),
    ("projected is None) or True", "equivalent: recomputes the conv_1 it was given (slower, same value)"),
    ("cell(None, c,", "equivalent: with the projection given, the cell never reads the image"),
    ("projected=None)", "equivalent: the cell computes the same projection itself"),
    ("c, maps, memory, None)", "equivalent: the cell computes the same projection itself"),
    ("c, maps, memory, )", "equivalent: the cell computes the same projection itself"),
    ("if x2.numel() >= x1.numel():", "equivalent: at equal sizes, swapping the inputs with A and B gives the same sum"),
    ("view(4, -1, 1, 1)", "equivalent: (4, K, 1, 1) broadcasts against (B, K, d, H·W) as (4, 1, K, 1, 1) does"),
    ("if (len(ms) == 1) and False else", "equivalent: one weight's sum is the weight itself"),
    ("same = None  # by identity", "equivalent: each tensor weighed alone (the same sum, more products)"),
    ("if (attended is None) or True else", "equivalent: a cache; without it the map's features are attended again"),
    ("if (found is None) or True else", "equivalent: a cache; without it Find's map is computed again"),
    ("second, top, memory, None)", "equivalent: a cache; without it Compare attends both maps again"),
    ("second, top, memory, )", "equivalent: a cache; without it Compare attends both maps again"),
    ("both = None  # what Compare reads", "equivalent: a cache; without it Compare attends both maps again"),
    ("attention\"", "equivalent: the kind's text only names the cell (module names)"),
    ("ATTENTION\"", "equivalent: the kind's text only names the cell (module names)"),
    ("{maps - 2}", "equivalent: the name's digit only"), ("{maps + 3}", "equivalent: the name's digit only"),
    ("if epoch < zero_at", "equivalent: both branches give 0 at epoch = zero_at"),
    ("log_softmax(logits, dim=+1)", "equivalent: logits are (B, A), dim 1 is dim −1"),
    ("log_softmax(logits, dim=None)", "equivalent: logits are (B, A), torch picks dim 1"),
    ("log_softmax(logits, )", "equivalent: logits are (B, A), torch picks dim 1"),
    ("- self.per_step_bias", "equivalent: a zero-initialised bias; its sign is a reparametrisation"),
    ("- self.read_bias", "equivalent: a zero-initialised bias; its sign is a reparametrisation"),
    ("float(\"-INF\")", "equivalent: float() reads -INF as -inf"),
    ("padding_idx", "equivalent in the forward pass: the packed sequence never reads the padding"),
    ("embedding, )", "equivalent in the forward pass: the packed sequence never reads the padding"),
    ("enforce_sorted=None", "equivalent: None is falsy"),
    ("height = 2 +", "equivalent: every height shifts by one, the order of levels is kept"),
    ("default=+1)", "equivalent: leaves higher, every parent still above its children"),
    ("default=-2)", "equivalent: leaves lower, every parent still above its children"),
    ("k = 1", "equivalent: no shipped module has more than two module inputs"),
    ("k -= 1", "equivalent: no shipped module has more than two module inputs (children[−1] is children[1])"),
    ("            break", "equivalent: no shipped module lists a dataset input before a module input"),
    ("top.view(-1, 1).expand", "equivalent: broadcasting adds the same leading dimension"),
    ("var(0, )", "equivalent: unbiased is var's default"),
    ("or True else torch.zeros_like", "equivalent for T > 1; T = 1 is tested (zero, not NaN)"),
    ("hidden = F.dropout", "equivalent: see the tests of dropout"),
    ("\"...BL,NLA->...BNA\"", "equivalent: einsum subscripts are case-insensitive letters"),
    ("self.explained: dict | None = \"\"", "equivalent: set by the first forward before any read"),
    ("self.structure_optimizer: torch.optim.Optimizer | None = \"\"", "equivalent: set by configure_optimizers"),
    ("self.hard = None", "equivalent: None is falsy"), ("self.removed: set[str] = None", "equivalent: None is falsy"),
    ("or nodes[j].function == \"count\") or True", "equivalent on CLEVR: comparisons read query_* or count"),
    ("- 1e-3 * torch.randn", "equivalent: symmetric noise"),
    ("ops.scene(image, None)", "equivalent: Scene reads no text"),
    ("stack = x.new_zeros(self.stack_size, h, w)", "equivalent: the first write broadcasts it over the batch"),
    ("self.tops: list[torch.Tensor] = None", "equivalent: run() sets it before use (a test helper's record)"),
    ("x.new_zeros(*x.shape[2:])", "equivalent: the comparison broadcasts the empty stack's zeros"),
    ("np.full((len(split), steps), -1, None)", "equivalent: numpy infers int64 from the fill value −1"),
    ("stack: int = 9", "a constructor default that the module always overrides"),
    ("hard_pointer: bool = True", "a constructor default that the module always overrides"),
    ("embedding: int = 129", "a constructor default that the module always overrides"),
    ("\"surrogate factorized\"", "message text (the tests match a part of it)"),
    ("XXsurrogate factorizedXX", "message text (the tests match a part of it)"),
    ("SURROGATE FACTORIZED", "message text (the tests match a part of it)"),
    ("resolve_hparams(self.defaults, hparams, None)", "message text (the tests match a part of it)"),
    ("bias=None", "equivalent: None is falsy (no bias)"),
    ("self._compile(child, None, slots)", "message text: ``whole`` only names the layout in errors"),
    ("self._compile(layout, None, slots)", "message text: ``whole`` only names the layout in errors"),
    ("ids = None  # keyed", "equivalent: a cache; without it the ids are computed again"),
    ("self._ids.get(None)", "equivalent: a cache; without it the ids are computed again"),
    ("instance_ids([i], None)", "message text (the tests match a part of it)"),
    ("self._compile(layout, layout, [1])", "equivalent: check() reads the output type, not the slot numbers"),
    ("build_module(name, interface, None)", "equivalent: parameter-free modules read no dims"),
    ("(t is Features) and False", "equivalent: the same rows gathered again instead of from the cache"),
    ("where: str = \"XXXX\"", "message text (the tests match a part of it)"),
    ("instance_ids([i], )", "message text (the tests match a part of it)"),
    ("np.full((len(split), steps), -1, )", "equivalent: numpy infers int64 from the fill value −1"),
]
MESSAGE = re.compile(r"Error\(|warning\(|^\s*f?\"", re.M)


def _argument(name: str, was: str, now: str) -> bool:
    """Whether the mutant sets the keyword argument ``name`` to None or drops it."""
    return f"{name}=None" in now or (f"{name}=" in was and f"{name}=" not in now)


KINDS = [  # (kind, whether it is one: the original lines, the mutated lines)
    ("message text (the tests match a part of it)", lambda was, now: bool(MESSAGE.search(now))),
    ("device argument (no GPU here: CPU is every tensor's device)",
     lambda was, now: _argument("device", was, now) or bool(re.search(r"^\s*device = None", now, re.M))
     or (".to(None)" in now and bool(re.search(r"\.to\([\w.]*device\)", was)))),
    ("dtype argument (the default gives the same dtype here)",
     lambda was, now: _argument("dtype", was, now) or ".to(None)" in now),
    ("a constructor default that the module always overrides", lambda was, now: "def __init__(" in now),
]


def judge(diff: str) -> str:
    """Why a survivor is harmless, or "not judged equivalent"."""
    was, now = ("\n".join(line[1:] for line in diff.splitlines() if line.startswith(sign)) for sign in "-+")
    for piece, reason in JUDGED:
        if piece in now:
            return reason
    return next((kind for kind, applies in KINDS if applies(was, now)), "not judged equivalent")


def staged_path(file: str) -> str:
    top, _, rest = file.partition("/")
    return f"src/{PACKAGE_DIRS[top]}/{rest}"


def stage(folder: Path, files: list[str], tests: tuple[str, ...], children: int) -> None:
    """The repository's tracked files (the tests read the README, docs, recipes, pyproject.toml) and
    the package again as ``src/modtrain``, the copy mutmut mutates and the tests import."""
    if folder.exists():
        shutil.rmtree(folder)
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, folder / name)
    for top, inside in PACKAGE_DIRS.items():
        shutil.copytree(ROOT / top, folder / "src" / inside, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "reports" if top == "modtrain" else "-"))
    shutil.copytree(ROOT / "modtrain" / "reports", folder / "src" / "modtrain" / "reports",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with (folder / "tests" / "conftest.py").open("a") as out:
        out.write(IN_PROCESS)
    only = ", ".join(json.dumps(staged_path(f)) for f in files)
    copied = ", ".join(json.dumps(name) for name in sorted({n.split("/")[0] for n in tracked}))
    with (folder / "pyproject.toml").open("a") as out:
        out.write(f"""
[tool.mutmut]
source_paths = ["src"]
only_mutate = [{only}]
also_copy = [{copied}]
pytest_add_cli_args_test_selection = [{", ".join(json.dumps(t) for t in tests)}, "-m", "not slow"]
max_children = {children}
# a mutant's tests may build a session fixture (a generated data folder) again: tens of CPU seconds
# that mutmut's default limit, 30 × the tests' timed seconds + 30, would call a timeout
timeout_constant = 10.0
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
        survivors = []
        for m in sorted(verdicts.get("survived", []) + verdicts.get("no tests", [])):
            text = diff(folder, m)
            survivors.append({"mutant": m, "diff": text, "judged": judge(text)})
        judged: dict[str, int] = {}
        for s in survivors:
            judged[s["judged"]] = judged.get(s["judged"], 0) + 1
        out[file] = {"mutants": total, **{v: len(m) for v, m in sorted(verdicts.items())},
                     "score": round(caught / total, 4) if total else None,
                     "score_without_timeouts": round(len(verdicts.get("killed", [])) / total, 4) if total else None,
                     "survivors_judged": dict(sorted(judged.items(), key=lambda kv: -kv[1])), "survivors": survivors}
    return out


def diff(folder: Path, mutant: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mutmut", "show", mutant], cwd=folder, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if re.match(r"^[-+](?![-+])", line)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", nargs="+", default=list(FILES), help="source files, as in the repository")
    parser.add_argument("--stage", type=Path, default=ROOT / "build" / "mutation")
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", default="bench/results/mutation.json")
    args = parser.parse_args()
    groups: dict[tuple[str, ...], list[str]] = {}
    for file in args.files:
        if file not in FILES:
            raise SystemExit(f"--files {file}: no tests named for it; valid: {', '.join(FILES)}")
        groups.setdefault(FILES[file], []).append(file)
    per_file, seconds = {}, {}
    for i, (tests, files) in enumerate(groups.items()):
        folder = args.stage / str(i)
        stage(folder, files, tests, args.children)
        start = time.perf_counter()
        # one thread: a forked child would wait forever on the OpenMP pool its parent had started
        env = {**os.environ, "PYTHONPATH": str(folder / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "-m", "mutmut", "run"], cwd=folder, env=env)
        if done.returncode != 0:
            raise SystemExit(f"mutmut run failed (exit {done.returncode}) in {folder}")
        found = results(folder, files)
        for file in files:
            per_file[file] = {"tests": f"pytest -m 'not slow' {' '.join(tests)}", **found[file]}
        seconds[" ".join(files)] = round(time.perf_counter() - start)
    # a run of some files keeps what an earlier run measured of the others
    earlier = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
    write_result(args.out, {"tool": "mutmut " + _version(), "score": "(killed + timeout + segfault) / mutants",
                            "target": 0.8, "seconds": {**earlier.get("seconds", {}), **seconds},
                            "files": {**earlier.get("files", {}), **per_file}})


def _version() -> str:
    from importlib.metadata import version

    return version("mutmut")


if __name__ == "__main__":
    main()

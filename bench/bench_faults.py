"""Do the fast tests catch the faults a review found in Stack-NMN and LNMN?

Each fault is a small edit of one source file (the text before and after). The script applies
one fault at a time to the working tree, runs the fast tests of the seed systems (``pytest -m
"not slow" tests/modules``), records whether they failed and which tests did, and restores the
file, whatever happens (a file it cannot restore byte for byte stops the run). A fault whose
original text is not found is reported as ``stale``: the source moved and the fault must be
rewritten, not counted as caught.

    python bench/bench_faults.py --out bench/results/faults.json
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["tests/modules"]

# (name, file, original text, faulty text); "|" separates edits of the same fault.
FAULTS = [
    ("Stack-NMN Transform reads the slot below the top", "modules/snmn.py",
     'ops.transform(image, c, top, attended)', 'ops.transform(image, c, second, attend(second, image["x"]))'),
    ("Stack-NMN Compare's operands swapped", "modules/snmn.py",
     'second, top, memory, both|(attend(second, image["x"]), attended)',
     'top, second, memory, both|(attended, attend(second, image["x"]))'),
    ("Stack-NMN Answer ignores its attention map", "modules/snmn.py",
     'self.ans_att(attended)', 'self.ans_att(image["x"].mean((2, 3)))'),
    ("Stack-NMN Answer ignores the memory", "modules/snmn.py",
     'torch.cat([c, memory, self.ans_att', 'torch.cat([c, torch.zeros_like(memory), self.ans_att'),
    ("Stack-NMN Compare ignores the memory", "modules/snmn.py",
     "torch.cat([c, memory, both]", "torch.cat([c, torch.zeros_like(memory), both]"),
    ("Stack-NMN Answer pops nothing", "modules/snmn.py",
     '"Answer": Part(below,', '"Answer": Part(pointer,'),
    ("LNMN 3-input cell: its node's two inputs swapped", "modules/lnmn.py",
     "self.nodes[0](image, spread[0])", "self.nodes[0](spread[0], image)"),
    ("LNMN 4-input cell: its first node's two inputs swapped", "modules/lnmn.py",
     "self.nodes[0](spread[0], spread[1])", "self.nodes[0](spread[1], spread[0])"),
    ("LNMN 3-input cells run as one: their first node's inputs swapped", "modules/lnmn.py",
     "mix_terms(nodes[0], image[maps], flat_top)", "mix_terms(nodes[0], flat_top, image[maps])"),
    ("LNMN 4-input cells run as one: their first node's inputs swapped", "modules/lnmn.py",
     "mix_terms(nodes[0], second.view(b, 1, 1, h * w), flat_top)",
     "mix_terms(nodes[0], flat_top, second.view(b, 1, 1, h * w))"),
    ("LNMN both regularizers' signs flipped", "modules/lnmn.py",
     "return -weight * module_entropy|return -self.hparams[\"sparsity_weight\"]",
     "return weight * module_entropy|return self.hparams[\"sparsity_weight\"]"),
    ("LNMN entropy term's sign flipped", "modules/lnmn.py",
     "return -weight * module_entropy", "return weight * module_entropy"),
    ("LNMN sparsity term's sign flipped", "modules/lnmn.py",
     "return -self.hparams[\"sparsity_weight\"]", "return self.hparams[\"sparsity_weight\"]"),
    ("LNMN 3-input cell keeps its input and pushes (does not pop)", "modules/lnmn.py",
     "pushed = move_up(below if self.cell3_pops else pointer)", "pushed = move_up(pointer)"),
    ("LNMN 3-input cell overwrites in place, pointer unchanged", "modules/lnmn.py",
     "pushed = move_up(below if self.cell3_pops else pointer)",
     "pushed = pointer if self.cell3_pops else move_up(pointer)"),
]


def run_tests() -> tuple[int, list[str]]:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider",
                           *TESTS], cwd=ROOT, capture_output=True, text=True)
    failed = re.findall(r"^FAILED (\S+)", done.stdout, flags=re.M)
    return done.returncode, failed


def inject(name: str, file: str, before: str, after: str) -> dict:
    path = ROOT / file
    original = path.read_bytes()
    text = original.decode()
    for old, new in zip(before.split("|"), after.split("|")):
        if text.count(old) != 1:
            return {"fault": name, "file": file, "status": "stale", "why": f"{old!r} found {text.count(old)} times"}
        text = text.replace(old, new)
    start = time.perf_counter()
    try:
        path.write_text(text)
        code, failed = run_tests()
    finally:
        path.write_bytes(original)
    if path.read_bytes() != original:
        raise SystemExit(f"{file}: could not restore the original after {name!r}")
    return {"fault": name, "file": file, "status": "caught" if code != 0 else "missed", "failed_tests": failed,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results/faults.json")
    args = parser.parse_args()
    code, failed = run_tests()
    if code != 0:
        raise SystemExit(f"the fast tests fail before any fault is injected: {failed}")
    results = []
    for fault in FAULTS:
        results.append(inject(*fault))
        print(f"{results[-1]['status']:>7}  {fault[0]}", flush=True)
    write_result(args.out, {"tests": TESTS, "faults": results,
                            "caught": sum(r["status"] == "caught" for r in results), "total": len(results)})


if __name__ == "__main__":
    main()

"""The docs quote only what the benchmarks measured, and the README stays a front page.

Numbers quoted from ``bench/results/*.json`` (``check_numbers``)
-----------------------------------------------------------------

A *reference* is the path ``bench/results/NAME.json`` written out in full (in a code span or
not). It covers:

- the line it is on, and
- when it is in a markdown heading, the whole section under that heading: every line up to
  the next heading of the same or a higher level (subsections included).

A line may be covered by several references (its own and its headings'); a number on it
passes when any of their JSON files holds it. A reference to a file that does not exist is
an error.

A *number* is a run of digits, with an optional decimal part, optional thousands commas
(``699,989``) and an optional exponent (``2.3e-14``). These are not numbers, because they are
names, code or citations rather than measurements:

- anything in a fenced code block or an inline code span (commands, paths, recipe keys and
  values such as ``0.0025``),
- the target of a markdown link, ``[text](target)``,
- digits glued to a word: ``x86_64``, ``float16``, ``ResNet-101``, ``nmn-v1``, ``70k``,
- section, table and figure numbers: ``§5.3``, ``Table 2``, ``Tables 7 and 2``,
  ``Fig. 7/8``,
- numbers quoted from the paper for comparison, not measured here: a parenthesis that starts
  with "paper" (``(paper: +1.79)``; to the end of the line if it closes on a later one), and
  the text after "paper:" up to the next ``;`` or parenthesis.

A number ``x`` shown with ``d`` decimals is *in* a JSON file when some number ``v`` of the
file rounds to it, ``|v − x| ≤ ½·10⁻ᵈ`` (for an exponent ``e``: ``½·10ᵉ⁻ᵈ``), or, for a
float ``v``, when ``100·v`` does (a fraction shown as a percentage: 84.72 for 0.8472,
256.3 for 2.5626). Signs are ignored (``−3.89`` and "3.89 points short" both match -3.89).
The numbers of a file are its numeric values at any depth (booleans are not numbers), and
the numbers written in its keys and strings, read by the same rules except that a unit of up
to three letters may follow ("run <= 300 s", "<= 1.5x seen", a recorded message): a target or
a message the benchmark wrote down counts as measured.

Where the rules apply:

- ``docs/results.md`` is *strict*: every number in it must be covered by a reference and be
  in one of the covering files. So each section of it names its JSON in its heading, or each
  line names it.
- ``README.md`` is *lenient*: a number covered by a reference must be in its file, and every
  **bold** number and every number in a table must be covered (a table of numbers is a results
  table and names its JSON); other numbers (settings such as the 5% trust gain) are not
  checked.

These rules are strict (a number a section does not hold fails, a bold claim with no JSON
fails) but not brittle: rounding to what is shown, percentages and prose such as "3.89
points short" of a stored -3.89 all pass. Markdown is read line by line, so a code span must
open and close on one line (one that does not leaves its digits checked: a failure to reflow,
never a number let through).

What the check cannot see: it proves that a number is *in* the file, not that it is the number
the sentence means. A value swapped for another value of the same file passes, and small
integers ("3 epochs") match almost any file. It catches numbers that no longer match, or never
matched, any value of the file they cite (invented, stale, mistyped, or from another file); that
a matching number means what the sentence says is the reviewer's to check.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"
DOCS = ROOT / "docs"

REFERENCE = re.compile(r"bench/results/([A-Za-z0-9_.\-]+?)\.json\b")
HEADING = re.compile(r"^(#{1,6})\s")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK_TARGET = re.compile(r"\]\([^)]*\)")
CITATION = re.compile(r"(§\s*\d+(?:\.\d+)*(?:\s*[–-]\s*\d+(?:\.\d+)*)?"
                      r"|\b(?:Tables?|Figs?\.|Figures?)\s+\d+(?:\s*(?:/|,|and|–|-)\s*\d+)*)")
PAPER = re.compile(r"\(paper\b[^()]*(?:\)|$)|\bpaper:[^();]*", re.IGNORECASE)
BOLD = re.compile(r"\*\*(.+?)\*\*")
NUMBER = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:[eE]([-+−]?\d+))?(?![\w]|\.\d)")
# in a JSON file's keys and strings a unit may follow a number: "<= 1.5x seen", "20x per-sample"
JSON_NUMBER = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:[eE]([-+−]?\d+))?(?![\d]|\.\d)"
                         r"(?=[A-Za-z]{0,3}(?!\w))")


@dataclass(frozen=True)
class Number:
    text: str
    value: float
    tolerance: float


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    number: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.number}: {self.reason}"


def numbers_in(text: str, pattern: re.Pattern = NUMBER) -> list[Number]:
    """The numbers of a piece of text (already stripped of code, links and citations)."""
    found = []
    for match in pattern.finditer(text):
        start = match.start()
        # glued to a word by a hyphen (ResNet-101, nmn-v1): a name, not a number
        if start >= 2 and text[start - 1] == "-" and text[start - 2].isalpha():
            continue
        whole, decimals, exponent = match.group(1).replace(",", ""), match.group(2) or "", match.group(3)
        places = len(decimals) - 1 if decimals else 0
        power = int(exponent.replace("−", "-")) if exponent else 0
        value = float(whole + decimals) * 10 ** power
        found.append(Number(match.group(0), value, 0.5 * 10 ** (power - places) * (1 + 1e-9)))
    return found


def prose(line: str) -> str:
    """A line without what holds no measured numbers: code spans, link targets, citations and
    numbers quoted from the paper."""
    for pattern in (CODE_SPAN, LINK_TARGET, PAPER, CITATION):
        line = pattern.sub(" ", line)
    return line


def json_numbers(path: Path) -> tuple[list[float], list[float]]:
    """(ints, floats) of a JSON file: its numeric values, and the numbers in its keys and strings."""
    ints: list[float] = []
    floats: list[float] = []

    def text(s: str) -> None:
        for n in numbers_in(s, JSON_NUMBER):
            (floats if n.tolerance < 0.5 or not float(n.value).is_integer() else ints).append(n.value)

    def walk(node) -> None:
        if isinstance(node, bool) or node is None:
            return
        if isinstance(node, int):
            ints.append(float(node))
        elif isinstance(node, float):
            if math.isfinite(node):
                floats.append(node)
        elif isinstance(node, str):
            text(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                text(str(key))
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(path.read_text(encoding="utf-8")))
    return ints, floats


def holds(number: Number, ints: list[float], floats: list[float]) -> bool:
    x = abs(number.value)
    if any(abs(abs(v) - x) <= number.tolerance for v in ints + floats):
        return True
    return any(abs(abs(100 * v) - x) <= number.tolerance for v in floats)


def check_numbers(text: str, results: Path, name: str, strict: bool) -> list[Problem]:
    """Every problem with the numbers of a markdown text that quotes ``results``/*.json (the rules
    are in this module's docstring)."""
    cache: dict[str, tuple[list[float], list[float]] | None] = {}

    def load(ref: str):
        if ref not in cache:
            path = results / f"{ref}.json"
            cache[ref] = json_numbers(path) if path.is_file() else None
        return cache[ref]

    problems: list[Problem] = []
    sections: list[tuple[int, list[str]]] = []  # (heading level, its references)
    fenced = False
    for lineno, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        own = REFERENCE.findall(line)
        for ref in own:
            if load(ref) is None:
                problems.append(Problem(name, lineno, f"bench/results/{ref}.json", "no such file"))
        heading = HEADING.match(line)
        if heading:
            level = len(heading.group(1))
            sections = [s for s in sections if s[0] < level] + [(level, own)]
        refs = {r for _, rs in sections for r in rs} | set(own)
        refs = {r for r in refs if load(r) is not None}
        bold = {n.text for part in BOLD.findall(prose(line)) for n in numbers_in(part)}
        table = line.lstrip().startswith("|")
        for n in numbers_in(prose(line)):
            if not refs:
                if strict:
                    problems.append(Problem(name, lineno, n.text, "no bench/results JSON names it"))
                elif n.text in bold:
                    problems.append(Problem(name, lineno, n.text, "a bold number with no bench/results JSON"))
                elif table:
                    problems.append(Problem(name, lineno, n.text, "a table number with no bench/results JSON"))
                continue
            if not any(holds(n, *load(r)) for r in refs):
                problems.append(Problem(name, lineno, n.text,
                                        f"not in {', '.join(f'bench/results/{r}.json' for r in sorted(refs))}"))
    return problems


# -- the repository's docs ----------------------------------------------------------------------

def test_results_md_quotes_only_numbers_its_json_files_hold():
    problems = check_numbers((DOCS / "results.md").read_text(encoding="utf-8"), RESULTS, "docs/results.md",
                             strict=True)
    assert not problems, "\n" + "\n".join(map(str, problems))


def test_results_md_names_its_json_files():
    text = (DOCS / "results.md").read_text(encoding="utf-8")
    assert len(set(REFERENCE.findall(text))) >= 10


def test_readme_numbers_come_from_the_json_they_name():
    problems = check_numbers(README.read_text(encoding="utf-8"), RESULTS, "README.md", strict=False)
    assert not problems, "\n" + "\n".join(map(str, problems))


def test_readme_has_a_headline_table_that_names_its_json():
    """A README table row with numbers whose numbers a bench/results JSON holds (the numbers test
    above fails for a table of numbers that names none)."""
    text = README.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.lstrip().startswith("|") and numbers_in(prose(line))]
    assert rows, "README has no table of results"
    assert not check_numbers(text, RESULTS, "README.md", strict=False)


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250)"


def _doc_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("**/*.md"))]


# the team's notes folder, as patterns that do not spell its path, so that this file does not point there
@pytest.mark.parametrize("forbidden", [r"shar[e]d folder", r"\.\./shar[e]d", r"DESIGN\.md"])
def test_docs_never_point_outside_the_repository(forbidden):
    offenders = [str(p.relative_to(ROOT)) for p in _doc_files() if re.search(forbidden, p.read_text(encoding="utf-8"))]
    assert not offenders, f"{forbidden!r} in {', '.join(offenders)}"


def test_docs_folder_has_its_pages():
    for page in ("design.md", "formats.md", "results.md", "robustness.md", "distributed.md"):
        assert (DOCS / page).is_file(), page


# -- the checker can fail ------------------------------------------------------------------------

@pytest.fixture
def results(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({
        "accuracy": 0.847249, "seconds": 211.1, "points": -3.89, "ratio": 2.5626, "p": 2.2807e-14,
        "questions": 699989, "flag": True, "targets": {"run <= 300 s": {"met": True}},
        "message": "variance 0.00262 over the threshold 0.0025"}))
    return tmp_path


def _check(text: str, results: Path, strict: bool = True) -> list[str]:
    return [f"{p.number}: {p.reason}" for p in check_numbers(text, results, "synthetic.md", strict)]


def test_a_number_its_json_does_not_hold_is_reported(results):
    text = "## Run (bench/results/run.json)\n\nAccuracy 84.72%, in 211.1 s; 12.5 points better.\n"
    assert _check(text, results) == ["12.5: not in bench/results/run.json"]


def test_rounding_percentages_signs_keys_and_strings_pass(results):
    text = ("## Run — `bench/results/run.json`\n\n"
            "| accuracy | seconds |\n|---|---|\n| 84.72 | 211 |\n\n"
            "84.7% (0.85), 3.89 points short, −3.89, 256.3%, 2.3e-14, 699,989 questions, "
            "target ≤ 300 s, variance 0.00262 > 0.0025.\n")
    assert _check(text, results) == []


def test_rounding_is_to_what_is_shown(results):
    text = "bench/results/run.json: 84.73, 211.2, 2.4e-14\n"
    assert _check(text, results) == ["84.73: not in bench/results/run.json", "211.2: not in bench/results/run.json",
                                      "2.4e-14: not in bench/results/run.json"]


def test_a_heading_covers_its_section_and_no_further(results):
    text = ("## Run bench/results/run.json\n\n### Detail\n\n84.72 and 211.1\n\n"
            "## Another section\n\n211.1\n")
    assert _check(text, results) == ["211.1: no bench/results JSON names it"]


def test_a_bold_claim_or_a_table_with_no_json_fails(results):
    text = "Typed modular training wins by **7.79** points.\nPython ≥ 3.11.\n"
    assert _check(text, results, strict=False) == ["7.79: a bold number with no bench/results JSON"]
    table = "| version | accuracy |\n|---|---|\n| typed | 86.94 |\n"
    assert _check(table, results, strict=False) == ["86.94: a table number with no bench/results JSON"]
    assert _check("## Run, bench/results/run.json\n\n" + table, results, strict=False) == [
        "86.94: not in bench/results/run.json"]
    assert _check(text, results, strict=True) == ["7.79: no bench/results JSON names it",
                                                  "3.11: no bench/results JSON names it"]


def test_a_reference_to_a_missing_file_is_reported(results):
    assert _check("bench/results/nothing.json: 1.5\n", results) == [
        "bench/results/nothing.json: no such file", "1.5: no bench/results JSON names it"]


def test_names_code_citations_and_paper_numbers_are_not_numbers(results):
    text = ("Measured on x86_64 with float16 features of ResNet-101, `--images 1000`, "
            "[plot](bench/results/compare_time.png), §5.3, Table 2, Fig. 7/8 "
            "(paper: 47.2% vs 55.1%).\n\n```\nmodtrain run --seed 17\n```\n"
            "bench/results/run.json: 211.1 s (target ≤ 300 s; paper: 0.38)\n")
    assert _check(text, results) == []

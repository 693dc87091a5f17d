"""modtrain's VQA accuracy against the official evaluation, question by question.

Given a local copy of the VQA team's evaluation code (github.com/GT-Vision-Lab/VQA: a folder
holding ``vqaEval.py`` and ``vqa.py``, ported to Python 3 if need be: print statements, tabs), a
VQA v1 folder, one of its annotated splits and a predictions file in the official results format
(a JSON list of ``{"question_id", "answer"}``; ``modtrain run`` writes WORKDIR/reports/predictions/
SPLIT.json), this runs the official evaluation (imported from that folder at run time, never
shipped) and ``modtrain.datasets.vqa.vqa_accuracy`` on every question, and writes the questions
compared, those whose scores differ (the first few shown), and the overall and per-answer-type
scores both ways. Scores are percentages rounded as the official script rounds them (``--digits``).

    python bench/bench_vqa_official.py /tmp/vqa-official DATA --split test \\
        --predictions WORKDIR/reports/predictions/test.json --out bench/results/vqa-official.json
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import io
import json
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402
from modtrain.datasets.vqa import VQAFolder, vqa_accuracy  # noqa: E402

from modtrain.errors import ModtrainError  # noqa: E402

SHOWN = 10  # differing questions listed one by one
# Keys the official loadRes copies from the questions file (and reads nowhere else).
QUESTION_FILE_KEYS = ("info", "task_type", "data_type", "data_subtype", "license")


def _find(root: Path, name: str) -> Path:
    found = sorted(root.rglob(name))
    if not found:
        raise ModtrainError(f"{root}: no {name} in the official evaluation folder (it needs vqaEval.py and vqa.py "
                            f"from github.com/GT-Vision-Lab/VQA, ported to Python 3)")
    return found[0]


def _import(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():  # its regexes are not raw strings: invalid-escape warnings
        warnings.simplefilter("ignore")
        try:
            spec.loader.exec_module(module)
        except SyntaxError as e:
            raise ModtrainError(f"{path}: not Python 3 ({e.msg}, line {e.lineno}); port it first (print "
                                f"statements → print(), tabs → spaces)") from None
    return module


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModtrainError(f"{path}: cannot read the {what} ({e})") from None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def official_scores(official: Path, questions_path: Path, annotations_path: Path, predictions_path: Path,
                    digits: int = 2) -> dict:
    """The official evaluation's scores: per question_id, overall and per answer type (percentages
    rounded to ``digits``), with the files it was run from."""
    vqa_tools = _import(_find(official, "vqa.py"), "_official_vqa")
    vqa_eval = _import(_find(official, "vqaEval.py"), "_official_vqaEval")
    questions = _read_json(questions_path, "VQA questions file")
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(questions, dict) and any(k not in questions for k in QUESTION_FILE_KEYS):
            # modtrain's generated files lack some metadata loadRes copies; a copy supplies it empty
            for key in QUESTION_FILE_KEYS:
                questions.setdefault(key, "")
            questions_path = Path(tmp) / questions_path.name
            questions_path.write_text(json.dumps(questions), encoding="utf-8")
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):  # its progress messages would mix with the JSON
                vqa = vqa_tools.VQA(str(annotations_path), str(questions_path))
                results = vqa.loadRes(str(predictions_path), str(questions_path))
                evaluation = vqa_eval.VQAEval(vqa, results, n=digits)
                evaluation.evaluate()
        except AssertionError as e:  # loadRes checks the predictions cover exactly the annotated questions
            raise ModtrainError(f"{predictions_path}: the official evaluation refused it: {e}") from None
    return {
        "by_question_id": dict(evaluation.evalQA),
        "overall": evaluation.accuracy["overall"],
        "per_answer_type": dict(evaluation.accuracy["perAnswerType"]),
        "question_ids": list(vqa.getQuesIds()),
        "files": {p.name: _sha256(p) for p in (_find(official, "vqaEval.py"), _find(official, "vqa.py"))},
    }


def compare(official: Path, data: Path, split: str, predictions_path: Path, digits: int = 2,
            shown: int = SHOWN) -> dict:
    """The official and modtrain's VQA accuracy of one split's predictions, question by question."""
    folder = VQAFolder(data)
    questions_path, annotations_path = folder.questions_path(split), folder.annotations_path(split)
    if annotations_path is None:
        raise ModtrainError(f"{data}: split {split!r} has no annotations file; only annotated splits can be scored")
    predictions = _read_json(predictions_path, "predictions file")
    if not isinstance(predictions, list) or not all(isinstance(p, dict) and "question_id" in p and "answer" in p
                                                    for p in predictions):
        raise ModtrainError(f"{predictions_path}: expected a JSON list of {{\"question_id\", \"answer\"}} "
                            f"(the official results format)")
    official_result = official_scores(official, questions_path, annotations_path, predictions_path, digits)
    # As the official loadRes indexes them: a question_id given twice keeps its last answer.
    answer_of = {p["question_id"]: p["answer"] for p in predictions}
    annotations = {a["question_id"]: a for a in _read_json(annotations_path, "VQA annotations file")["annotations"]}
    ours: dict[int, float] = {}
    differing = []
    for qid in official_result["question_ids"]:
        annotation = annotations[qid]
        humans = [a["answer"] for a in annotation["answers"]]
        ours[qid] = vqa_accuracy(answer_of[qid], humans)
        theirs = official_result["by_question_id"][qid]
        if round(100 * ours[qid], digits) != theirs:
            differing.append({"question_id": qid, "answer_type": annotation["answer_type"],
                              "prediction": answer_of[qid], "humans": humans,
                              "official": theirs, "modtrain": round(100 * ours[qid], digits)})
    types = sorted({a["answer_type"] for a in annotations.values()})

    def mean(qids: list[int]) -> float:
        return round(100 * sum(ours[q] for q in qids) / len(qids), digits)

    return {
        "official_code": {"folder": str(official), "sha256": official_result["files"]},
        "data": str(data),
        "split": split,
        "predictions": str(predictions_path),
        "questions_compared": len(ours),
        "questions_differing": len(differing),
        "differing": differing[:shown],
        "overall": {"official": official_result["overall"], "modtrain": mean(list(ours))},
        "per_answer_type": {t: {"official": official_result["per_answer_type"][t],
                                "modtrain": mean([q for q in ours if annotations[q]["answer_type"] == t])}
                            for t in types},
        "digits": digits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", type=Path, help="folder holding the official vqaEval.py and vqa.py (Python 3)")
    parser.add_argument("data", type=Path, help="a VQA v1 folder (questions, annotations)")
    parser.add_argument("--split", required=True, help="an annotated split of the folder, e.g. test")
    parser.add_argument("--predictions", type=Path, required=True,
                        help="JSON list of {question_id, answer}, e.g. WORKDIR/reports/predictions/SPLIT.json")
    parser.add_argument("--how", default=None, help="how the data and predictions were made (recorded)")
    parser.add_argument("--digits", type=int, default=2, help="decimals of the percentages (the official n)")
    parser.add_argument("--out", default="bench/results/vqa-official.json")
    args = parser.parse_args()
    try:
        result = compare(args.official, args.data, args.split, args.predictions, args.digits)
    except ModtrainError as e:
        sys.exit(f"Error: {e}")
    write_result(args.out, {**({"how": args.how} if args.how else {}), **result})


if __name__ == "__main__":
    main()

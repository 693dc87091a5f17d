"""``modtrain data info``: what a CLEVR folder holds, at a glance."""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from modtrain.datasets.clevr import ClevrFolder
from modtrain.datasets.executor import program_depth, question_type
from modtrain.datasets.families import FAMILIES
from modtrain.datasets.layouts import program_to_layout

from modtrain.io import read_json

FAMILY_NAMES = {f.index: f.name for f in FAMILIES}


def data_info(data_dir: str | Path, top_answers: int = 10) -> dict:
    """Per split: image and question counts, answer distribution, depth histogram,
    questions per type, and distinct layouts per question family (a VQA folder: per answer type,
    layout depth, and the questions without a parse; once prepared, those whose answer is
    outside the answer set and those with a ``<UNK>`` word)."""
    from modtrain.datasets.folders import detect_format

    if detect_format(data_dir) == "vqa":
        return _with_run_splits(_vqa_info(Path(data_dir), top_answers))
    folder = ClevrFolder(data_dir)
    # modtrain's family names hold only for folders it generated; elsewhere the index is all we know
    generated = (folder.root / "generate.json").exists()
    out: dict = {"root": str(folder.root), "splits": {}}
    for split in folder.splits():
        questions = folder.load_questions(split)
        answers = Counter(q.answer for q in questions if q.answer is not None)
        depths: Counter = Counter()
        types: Counter = Counter()
        layouts: dict[str, set[str]] = defaultdict(set)
        family_counts: Counter = Counter()
        for q in questions:
            if q.program is None:
                continue
            depths[program_depth(q.program)] += 1
            types[question_type(q.program)] += 1
            index = q.question_family_index
            family = FAMILY_NAMES[index] if generated and index in FAMILY_NAMES else f"family {index}"
            family_counts[family] += 1
            layouts[family].add(str(program_to_layout(q.program)))
        image_dir = folder.image_dir(split)
        out["splits"][split] = {
            "images": folder.num_images(split) if image_dir.is_dir() else 0,
            "questions": len(questions),
            "unlabelled": sum(q.answer is None for q in questions),
            "answers": len(answers),
            "top_answers": answers.most_common(top_answers),
            "depth_histogram": dict(sorted(depths.items())),
            "question_types": dict(types.most_common()),
            "families": {f: {"questions": family_counts[f], "layouts": len(layouts[f])}
                         for f in sorted(family_counts)},
            "distinct_layouts": len(set().union(*layouts.values())) if layouts else 0,
        }
    return _with_run_splits(out)


def features_info(root: Path, splits: list[str]) -> dict[str, dict]:
    """Per split with a features file: its backbone and what that backbone was pretrained on (a
    clevr-cnn of a CoGenT folder: one condition's colour-shape pairs), as the file records them."""
    import h5py
    from modtrain.datasets.features import features_path

    out = {}
    for split in splits:
        path = features_path(root, split)
        if path.is_file():
            with h5py.File(path, "r") as f:
                out[split] = {"backbone": str(f.attrs.get("backbone", "not recorded")),
                              "pretrained_on": str(f.attrs.get("backbone_pretrained_on", "") or "not recorded")}
    return out


def _with_run_splits(info: dict) -> dict:
    """``info`` with the splits ``modtrain run`` trains and stops early on when the recipe's
    data.train_split / data.val_split are auto (``run_splits``), or why it cannot choose them, and
    each split's features' backbone (``features``)."""
    from modtrain.errors import ModtrainError
    from modtrain.recipe import AUTO, resolve_splits

    info["features"] = features_info(Path(info["root"]), list(info["splits"]))

    try:
        train, val = resolve_splits(AUTO, AUTO, list(info["splits"]), f"data folder {info['root']}")
        info["run_splits"] = {"train_split": train, "val_split": val}
    except ModtrainError as e:
        info["run_splits"] = {"problem": str(e)}
    return info


def _vqa_info(root: Path, top_answers: int) -> dict:
    import warnings

    from modtrain.datasets.vqa import VQAFolder

    folder = VQAFolder(root)
    prepared = read_json(root / "prepare.json") if (root / "prepare.json").exists() else {}
    out: dict = {"root": str(root), "format": "vqa", "splits": {}}
    for split in folder.splits():
        with warnings.catch_warnings():  # counted below instead
            warnings.simplefilter("ignore")
            questions = folder.load_questions(split)
        answers = Counter(q.answer for q in questions if q.answer is not None)
        layouts = [q.layout for q in questions if q.layout is not None]
        counted = prepared.get("splits", {}).get(split, {})
        out["splits"][split] = {
            "images": folder.num_images(split),
            "questions": len(questions),
            "unlabelled": sum(q.answer is None for q in questions),
            "answers": len(answers),
            "top_answers": answers.most_common(top_answers),
            "depth_histogram": dict(sorted(Counter(layout.depth for layout in layouts).items())),
            "question_types": dict(Counter(q.answer_type for q in questions if q.answer_type).most_common()),
            "families": {},
            "distinct_layouts": len(set(map(str, layouts))),
            "no_parse": len(questions) - len(layouts),
            **{k: counted[k] for k in ("answer_outside_set", "unknown_word") if k in counted},
        }
    return out


def format_info(info: dict, bar_width: int = 40) -> str:
    """A readable report of ``data_info``'s result."""
    lines = [f"data folder: {info['root']}"]
    run = info.get("run_splits", {})
    if "train_split" in run:
        lines.append(f"modtrain run trains on {run['train_split']} and stops early on {run['val_split']} "
                     f"(data.train_split, data.val_split = auto)")
    elif "problem" in run:
        lines.append(f"modtrain run: {run['problem']}")
    seen: dict[tuple[str, str], list[str]] = {}
    for split, f in info.get("features", {}).items():
        seen.setdefault((f["backbone"], f["pretrained_on"]), []).append(split)
    for (backbone, pretrained_on), splits in seen.items():
        lines.append(f"features of {', '.join(splits)}: {backbone}, pretrained on {pretrained_on}")
    for split, s in info["splits"].items():
        lines.append("")
        lines.append(f"[{split}] {s['images']} images, {s['questions']} questions "
                     f"({s['unlabelled']} unlabelled), {s['answers']} distinct answers, "
                     f"{s['distinct_layouts']} distinct layouts")
        if s["top_answers"]:
            lines.append("  top answers: " + ", ".join(f"{a} {c}" for a, c in s["top_answers"]))
        if s["question_types"]:
            kind = "answer types" if info.get("format") == "vqa" else "question types"
            lines.append(f"  {kind}: " + ", ".join(f"{t} {c}" for t, c in s["question_types"].items()))
        if "no_parse" in s:
            lines.append(f"  without a usable parse (answered by the encoder alone): {s['no_parse']}")
        if "answer_outside_set" in s:
            lines.append(f"  prepared: {s['answer_outside_set']} with an answer outside the answer set (evaluated, "
                         f"not trained), {s['unknown_word']} with a word below the instance count (<UNK>)")
        if s["depth_histogram"]:
            lines.append("  layout depth histogram:" if info.get("format") == "vqa" else "  depth histogram:")
            peak = max(s["depth_histogram"].values())
            for depth, count in s["depth_histogram"].items():
                bar = "#" * max(1, round(bar_width * count / peak))
                lines.append(f"    {depth:>3} {count:>7} {bar}")
        if s["families"]:
            lines.append(f"  {'family':<26}{'questions':>10}{'layouts':>9}")
            for family, c in s["families"].items():
                lines.append(f"  {family:<26}{c['questions']:>10}{c['layouts']:>9}")
    return "\n".join(lines)

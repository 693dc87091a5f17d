"""Which kind of data folder a path is: CLEVR v1.0 or VQA v1 (docs/formats.md).

Both kinds answer the same questions for the commands that read images and questions: their
splits, each split's image files in row order, and the files a prepared split is made from.
"""
from __future__ import annotations

from pathlib import Path

from modtrain.datasets.clevr import ClevrFolder
from modtrain.datasets.vqa import VQAFolder

from modtrain.errors import ModtrainError

FORMATS = ("clevr", "vqa")


def detect_format(root: str | Path) -> str:
    """``clevr`` where ``questions/CLEVR_*_questions.json`` exist, ``vqa`` where VQA v1 questions do."""
    root = Path(root)
    if not root.is_dir():
        raise ModtrainError(f"data folder not found: {root}")
    if any((root / "questions").glob("CLEVR_*_questions.json")):
        return "clevr"
    if any(root.glob("OpenEnded_*_questions.json")) or any(root.glob("*/OpenEnded_*_questions.json")):
        return "vqa"
    raise ModtrainError(f"{root}: neither a CLEVR v1.0 folder (questions/CLEVR_{{split}}_questions.json) nor a VQA v1 "
                        f"folder (Questions/OpenEnded_{{source}}_{{split}}_questions.json); make one with "
                        f"'modtrain data generate {root} [--format vqa]'")


def open_folder(root: str | Path, format: str | None = None) -> ClevrFolder | VQAFolder:
    """The folder at ``root``, of the given format or the one detected."""
    format = format or detect_format(root)
    if format not in FORMATS:
        raise ModtrainError(f"data format {format!r}: valid: {', '.join(FORMATS)}")
    return VQAFolder(root) if format == "vqa" else ClevrFolder(root)

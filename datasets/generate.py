"""``modtrain data generate``: a procedural dataset written as a CLEVR v1.0 folder.

No public dataset can be downloaded at run time, so modtrain makes its own: rendered
2-D scenes in CLEVR's vocabulary and questions sampled as CLEVR programs from the
families in ``families.py``, answered by the executor and balanced per family by
rejection sampling. Everything is written to a staging folder first and moved into place
at the end, so an interrupted run leaves no split that looks complete.
"""
from __future__ import annotations

import logging
import multiprocessing
import shutil
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from modtrain.datasets.clevr import Question, Scene, image_filename, write_questions, write_scenes
from modtrain.datasets.executor import ProgramError, execute, program_depth
from modtrain.datasets.families import Family, select_families
from modtrain.datasets.scenes import make_scene, render_scene

from modtrain.errors import ModtrainError
from modtrain.io import default_workers, write_json
from modtrain.progress import progress

log = logging.getLogger(__name__)
SPLIT_CODES = {"train": 1, "val": 2, "test": 3, "pretrain": 4}


@dataclass
class AnswerBalancer:
    """Rejects an answer that would become more than ``ratio``× as common as the runner-up.

    ``slack`` lets the first few questions of a family through before ratios mean anything.
    """

    ratio: float = 1.1
    slack: int = 2
    counts: dict[int, Counter] = field(default_factory=dict)

    def accepts(self, family: int, answer: str) -> bool:
        counts = self.counts.setdefault(family, Counter())
        runner_up = max((c for a, c in counts.items() if a != answer), default=0)
        return counts[answer] + 1 <= max(self.ratio * runner_up, runner_up + self.slack)

    def add(self, family: int, answer: str) -> None:
        self.counts.setdefault(family, Counter())[answer] += 1


@dataclass
class DepthBalancer:
    """Keeps program depths ``low``..``high`` about equally common (paper §5.6 needs questions at
    every depth): rejects a question whose depth would be more than ``ratio``× as common as the
    rarest depth of that range seen so far (plus ``slack``). Depths outside the range pass, and
    so do depths the families never produce (they are never seen), so any family set works."""

    low: int
    high: int
    ratio: float = 1.2
    slack: int = 3
    counts: Counter = field(default_factory=Counter)

    def accepts(self, depth: int) -> bool:
        if not self.low <= depth <= self.high:
            return True
        floor = min(c for d, c in self.counts.items() if self.low <= d <= self.high) if self.counts else 0
        return self.counts[depth] + 1 <= max(self.ratio * floor, floor + self.slack)

    def add(self, depth: int) -> None:
        if self.low <= depth <= self.high:
            self.counts[depth] += 1


def parse_depth_range(text: str | None) -> tuple[int, int] | None:
    """``"3-12"`` → (3, 12); None or ``"none"`` → None; anything else is an error saying what is valid."""
    if text is None or text == "none":
        return None
    low, _, high = text.partition("-")
    if not (low.isdigit() and high.isdigit()) or not 1 <= int(low) <= int(high):
        raise ModtrainError(f"depth range {text!r}: must be LOW-HIGH with 1 ≤ LOW ≤ HIGH, e.g. 3-12 (or none)")
    return int(low), int(high)


def split_rng(seed: int, split: str) -> np.random.Generator:
    """The generator of one split: independent of the other splits' sizes."""
    code = SPLIT_CODES.get(split, sum(map(ord, split)) + 100)
    return np.random.default_rng(np.random.SeedSequence([seed, code]))


def sample_questions(rng: np.random.Generator, scene: Scene, families: list[Family], count: int,
                     balancer: AnswerBalancer, tries: int = 40,
                     depths: DepthBalancer | None = None) -> list[tuple[Family, list, str, str]]:
    """Up to ``count`` distinct (family, program, text, answer) for one scene. With ``depths``, a
    question of an over-represented depth is rejected and another family drawn (5× the tries)."""
    out = []
    seen: set[str] = set()
    for _ in range(count):
        family = families[int(rng.integers(len(families)))]
        for _ in range(tries if depths is None else 5 * tries):
            sampled = family.sample(rng, scene)
            if sampled is None:
                continue
            program, text = sampled
            if text in seen:
                continue
            if depths is not None and not depths.accepts(program_depth(program)):
                family = families[int(rng.integers(len(families)))]
                continue
            try:
                answer = execute(program, scene)
            except ProgramError as e:  # a family bug, not bad input: say so loudly
                raise AssertionError(f"family {family.name} built an invalid program: {e}") from e
            if not balancer.accepts(family.index, answer):
                continue
            balancer.add(family.index, answer)
            if depths is not None:
                depths.add(program_depth(program))
            seen.add(text)
            out.append((family, program, text, answer))
            break
    return out


def _render(jobs: list[tuple[list[dict], int, Path]]) -> None:
    for objects, image_size, path in jobs:
        render_scene(objects, image_size).save(path, compress_level=1)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class Renderer:
    """Draws and saves images: in ``workers`` processes beside this one (rendering is per image and
    independent of the random stream, so the output does not depend on the number of workers), or
    here with 0 workers."""

    CHUNK = 32

    def __init__(self, workers: int | None):
        self.workers = default_workers() if workers is None else workers
        # the workers leave Ctrl-C to this process, which stops them (no traceback from each)
        self._pool = (multiprocessing.get_context("fork").Pool(self.workers, initializer=_ignore_sigint)
                      if self.workers > 0 else None)
        self._pending: list = []
        self._chunk: list = []

    def add(self, objects: list[dict], image_size: int, path: Path) -> None:
        self._chunk.append((objects, image_size, path))
        if len(self._chunk) >= self.CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._chunk:
            if self._pool is None:
                _render(self._chunk)
            else:
                self._pending.append(self._pool.apply_async(_render, (self._chunk,)))
            self._chunk = []

    def finish(self) -> None:
        self._flush()
        for result in self._pending:
            result.get()
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def __enter__(self) -> "Renderer":
        return self

    def __exit__(self, kind, *rest) -> None:
        """On an error or Ctrl-C in this process, end the workers now, whatever they were drawing."""
        if kind is not None and self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def generate_split(root: Path, split: str, num_images: int, questions_per_image: int,
                   families: list[Family], seed: int, image_size: int,
                   combos: str | None, balance_depth: tuple[int, int] | None = None,
                   workers: int | None = None) -> tuple[list[Scene], list[Question]]:
    """Render a split's images into ``root/images/split`` (``workers`` processes draw them while
    this one samples questions) and return its scenes and questions."""
    rng = split_rng(seed, split)
    balancer = AnswerBalancer()
    depths = DepthBalancer(*balance_depth) if balance_depth else None
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    scenes: list[Scene] = []
    questions: list[Question] = []
    with Renderer(workers if num_images > Renderer.CHUNK else 0) as renderer:
        with progress(range(num_images), label=f"generate {split}") as bar:
            for index in bar:
                scene = make_scene(rng, split, index, image_size, combos)
                renderer.add(scene.objects, image_size, image_dir / scene.image_filename)
                scenes.append(scene)
                for family, program, text, answer in sample_questions(
                        rng, scene, families, questions_per_image, balancer, depths=depths):
                    questions.append(Question(
                        question_index=len(questions), split=split, image_index=index,
                        image_filename=image_filename(split, index), question=text,
                        program=program, answer=answer, question_family_index=family.index))
        renderer.finish()
    return scenes, questions


def generate(root: str | Path, images: dict[str, int], questions_per_image: int = 10,
             families: str = "all", seed: int = 0, image_size: int = 64,
             combos: str | None = None, force: bool = False, balance_depth: str | None = None,
             format: str = "clevr", workers: int | None = None) -> dict:
    """Write a CLEVR v1.0 folder (or, ``format="vqa"``, the same data as a VQA v1 folder:
    ``generate_vqa.py``); ``images`` maps split name to image count; ``workers`` processes render
    the images (default: one per other core; 0: this process alone). ``balance_depth``
    (``"3-12"``) keeps the program depths of that range about equally common in every split.

    With a CoGenT condition (``combos`` A or B) split names get its letter, as in
    CLEVR-CoGenT (trainA, valB, ...).
    """
    root = Path(root)
    selected = select_families(families)
    depth_range = parse_depth_range(balance_depth)
    if image_size < 32:
        raise ModtrainError(f"--image-size {image_size} is too small; use at least 32 pixels")
    splits = {f"{s}{combos or ''}": n for s, n in images.items() if n > 0}
    if not splits:
        raise ModtrainError("no images requested: give at least one split a positive count")
    if format not in ("clevr", "vqa"):
        raise ModtrainError(f"--format {format!r}: valid: clevr, vqa")
    from modtrain.datasets.generate_vqa import vqa_files, write_vqa_split

    def files(split: str) -> list[str]:  # what marks the split as present comes last
        if format == "vqa":
            return vqa_files(split)
        return [f"images/{split}", f"scenes/CLEVR_{split}_scenes.json", f"questions/CLEVR_{split}_questions.json"]

    if format == "vqa":
        from modtrain.datasets.families import GROUPS

        beyond = [f.name for f in selected if f.name not in GROUPS["no-relate"]]
        if beyond:
            raise ModtrainError(f"--format vqa: families {', '.join(beyond)} use relate, same or compare, which NMN "
                                f"parses cannot express; use --families no-relate")
    existing = [s for s in splits if (root / files(s)[-1]).exists()]
    if existing and not force:
        raise ModtrainError(
            f"{root} already holds split(s) {', '.join(existing)}; pass --fresh to replace them"
        )
    staging = root / ".generate-staging"
    shutil.rmtree(staging, ignore_errors=True)
    summary = {"seed": seed, "image_size": image_size, "questions_per_image": questions_per_image,
               "families": [f.name for f in selected], "combos": combos,
               "balance_depth": None if depth_range is None else f"{depth_range[0]}-{depth_range[1]}",
               "format": format, "splits": {}}
    for split, count in splits.items():
        base = split[:-1] if combos else split
        scenes, questions = generate_split(staging, split, count, questions_per_image, selected,
                                           seed, image_size, combos, depth_range, workers)
        if format == "vqa":
            write_vqa_split(staging, split, SPLIT_CODES.get(base, 9), questions, split_rng(seed + 1, split),
                            {f.index: f.name for f in selected})
        else:
            write_scenes(staging / "scenes" / f"CLEVR_{split}_scenes.json", split, scenes)
            write_questions(staging / "questions" / f"CLEVR_{split}_questions.json", split, questions)
        summary["splits"][split] = {"images": count, "questions": len(questions), "seed_split": base}
        log.info("%s: %d images, %d questions", split, count, len(questions))
    # Move into place: images (and scenes, annotations, parses) first, the questions file (which
    # marks a split as present) last, so an interruption never leaves a split that looks complete.
    for split in splits:
        (root / files(split)[-1]).unlink(missing_ok=True)
        for name in files(split)[:-1]:
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            (staging / name).replace(target)
    for split in splits:
        (root / files(split)[-1]).parent.mkdir(parents=True, exist_ok=True)
        (staging / files(split)[-1]).replace(root / files(split)[-1])
    shutil.rmtree(staging, ignore_errors=True)
    write_json(root / "generate.json", summary)
    return summary

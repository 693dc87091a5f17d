"""``modtrain explain``: what each module does on one question, as a picture.

For each question: the image, the question and answers, the layout tree, every attention
map the layout computes (find, and, or, relate, ...) laid over the image — a module that
reads an attention (relate) next to the attention it read — and the top answers of the
encoder's prior and of the assembled network. This is how a user sees whether find[red]
really finds red things, and whether relate[left] moves the attention to the left.
"""
from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modtrain.assemble import load_assembly
from modtrain.data import PreparedData
from modtrain.errors import ModtrainError
from modtrain.layout import Layout
from modtrain.recipe import Recipe
from modtrain.registry import parameter_free_names, run_prior
from modtrain.reports.plots import pyplot, save_figure
from modtrain.workdir import Workdir

FIGSIZE, DPI = (14, 9), 100  # 1400 × 900 pixels
MAX_MAPS = 9


def tree_text(layout: Layout, prefix: str = "", last: bool = True, root: bool = True) -> list[str]:
    """The layout as an indented tree, one call per line."""
    label = layout.module if layout.instance is None else f"{layout.module}[{layout.instance}]"
    lines = [label if root else f"{prefix}{'└─ ' if last else '├─ '}{label}"]
    child_prefix = "" if root else prefix + ("   " if last else "│  ")
    for k, child in enumerate(layout.children):
        lines += tree_text(child, child_prefix, k == len(layout.children) - 1, False)
    return lines


def _label(call: Layout) -> str:
    return call.module if call.instance is None else f"{call.module}[{call.instance}]"


def attention_panels(trace: list[tuple[Layout, object, torch.Tensor]], attention,
                     limit: int = MAX_MAPS) -> list[tuple[str, np.ndarray]]:
    """(title, map) of the attention maps to draw from an executor trace: first, for every module
    that turns an attention into another (relate), nearest the answer first, the attention it
    read and the one it gave; then every other map, children before parents; at most ``limit``."""
    maps = {id(call): (call, value[0].detach().cpu().numpy()) for call, dtype, value in trace if dtype is attention}
    free = set(parameter_free_names())
    panels: list[tuple[str, np.ndarray]] = []
    drawn: set[int] = set()
    for call, dtype, _ in reversed(trace):
        inputs = [child for child in call.children if id(child) in maps]
        if dtype is not attention or call.module in free or not inputs:
            continue
        for child in inputs:
            panels.append((f"{_label(call)} reads {_label(child)}", maps[id(child)][1]))
            drawn.add(id(child))
        panels.append((f"{_label(call)} gives", maps[id(call)][1]))
        drawn.add(id(call))
    panels += [(_label(call), value) for key, (call, value) in maps.items() if key not in drawn]
    return panels[:limit]


def explain(workdir: Workdir, recipe: Recipe, device: torch.device, question_indices: list[int],
            split: str = "val", out_dir: Path | None = None) -> list[Path]:
    """One PNG per question in ``reports/explain/``; returns their paths. On a VQA folder a question
    is named by its question_id."""
    from modtrain.datasets.folders import open_folder

    data = PreparedData(workdir.data)
    split_data = data.split(split)
    encoder, executor, _ = load_assembly(workdir, recipe, device)
    interface = executor.interface
    folder = open_folder(workdir.data)
    with warnings.catch_warnings():  # a VQA folder's parse problems were reported by prepare
        warnings.simplefilter("ignore")
        texts = {getattr(q, "question_index", getattr(q, "question_id", None)): q.question
                 for q in folder.load_questions(split)}
    image_paths = folder.image_paths(split)
    out_dir = Path(out_dir or workdir.reports / "explain")
    features = split_data.features()
    answers = data.answers
    paths = []
    for question_index in question_indices:
        rows = np.flatnonzero(split_data.question_index == question_index)
        if len(rows) == 0:
            raise ModtrainError(f"question {question_index} is not in split {split!r} "
                                f"(valid: {split_data.question_index.min()}..{split_data.question_index.max()})")
        row = int(rows[0])
        if split_data.layout[row] < 0:
            raise ModtrainError(f"question {question_index} of split {split!r} has no program, hence no layout to explain")
        layout = data.layouts[split_data.layout[row]]
        image_index = int(split_data.image_index[row])
        feats = torch.from_numpy(features.take([image_index])).float().to(device)
        with torch.no_grad():
            trace = executor.trace(layout, feats)
            prior_logits = run_prior(encoder, torch.from_numpy(split_data.tokens[row:row + 1]).long().to(device),
                                     torch.from_numpy(split_data.lengths[row:row + 1]).long(), feats)
            final = interface.combine(trace[-1][2], prior_logits).exp()[0].cpu().numpy()
            prior = torch.softmax(prior_logits, -1)[0].cpu().numpy()
        maps = attention_panels(trace, interface.attention)
        truth = answers[split_data.answer[row]] if split_data.answer[row] >= 0 else None
        path = out_dir / f"{split}_{question_index}.png"
        _draw(path, image_paths[image_index], texts.get(question_index, ""), layout, maps,
              prior, final, answers, truth, interface.name)
        paths.append(path)
    return paths


def _draw(path, image_path, question, layout, maps, prior, final, answers, truth, interface) -> Path:
    plt = pyplot()
    from matplotlib.gridspec import GridSpec

    image = np.asarray(Image.open(image_path).convert("RGB"))
    figure = plt.figure(figsize=FIGSIZE, dpi=DPI)
    grid = GridSpec(3, 6, figure=figure, width_ratios=[1.2, 1.2, 1, 1, 1, 1.3])
    axis = figure.add_subplot(grid[0:2, 0:2])
    axis.imshow(image)
    axis.set_axis_off()
    predicted = answers[int(final.argmax())]
    verdict = "" if truth is None else ("  ✓" if predicted == truth else f"  ✗ (answer: {truth})")
    wrapped = "\n".join(textwrap.wrap(question, 60))
    axis.set_title(f"{wrapped}\npredicted: {predicted}{verdict}", fontsize=11)
    text = figure.add_subplot(grid[2, 0:2])
    text.set_axis_off()
    lines = [f"layout ({interface} interface)", *tree_text(layout)]
    text.text(0.0, 1.0, "\n".join(lines), family="monospace", fontsize=min(10.0, 120 / len(lines)), va="top")
    height, width = image.shape[:2]
    cells = [(r, c) for r in range(3) for c in (2, 3, 4)]
    for (title, attention), (r, c) in zip(maps, cells):
        axis = figure.add_subplot(grid[r, c])
        axis.imshow(image)
        axis.imshow(attention, cmap="magma", alpha=0.6, extent=(0, width, height, 0), interpolation="nearest",
                    vmin=0.0, vmax=max(1.0, float(attention.max())))
        axis.set_title("\n".join(textwrap.wrap(title, 28)), fontsize=9)
        axis.set_axis_off()
    for k, (title, probs) in enumerate((("encoder prior", prior), ("assembled answer", final))):
        axis = figure.add_subplot(grid[k, 5])
        top = np.argsort(-probs)[:5][::-1]
        axis.barh([answers[i] for i in top], probs[top], color="tab:blue" if k == 0 else "tab:green")
        axis.set_xlim(0, 1)
        axis.set_title(f"{title} (top 5)", fontsize=10)
        axis.tick_params(labelsize=9)
    figure.subplots_adjust(left=0.03, right=0.97, top=0.9, bottom=0.05, wspace=0.35, hspace=0.45)
    return save_figure(figure, path, dpi=DPI)

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
    is named by its question_id. A Stack-NMN or LNMN recipe (one module with a controller) shows,
    instead of a layout, the controller's module weights and word attention at every step and the
    top of the stack after it (``explain_stack``)."""
    from modtrain.datasets.folders import open_folder

    if len(recipe.modules) == 1 and recipe.modules[0] in ("snmn", "lnmn"):
        return explain_stack(workdir, recipe, device, question_indices, split, out_dir)

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
            raise ModtrainError(f"question {question_index} of split {split!r} has no program, "
                                "hence no layout to explain")
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


def explain_stack(workdir: Workdir, recipe: Recipe, device: torch.device, question_indices: list[int],
                  split: str = "val", out_dir: Path | None = None) -> list[Path]:
    """Stack-NMN / LNMN: per question, the image, the module weights (steps × modules), the most
    attended word of each step and the top of the stack after every step."""
    from modtrain.card import load_module
    from modtrain.datasets.folders import open_folder

    name = recipe.modules[0]
    module, _ = load_module(workdir.modules, name, device)
    module.eval()
    data = PreparedData(workdir.data)
    split_data = data.split(split)
    folder = open_folder(workdir.data)
    image_paths = folder.image_paths(split)
    words = {i: w for w, i in data.vocab["question_tokens"].items()}
    features = split_data.features()
    out_dir = Path(out_dir or workdir.reports / "explain")
    paths = []
    for question_index in question_indices:
        rows = np.flatnonzero(split_data.question_index == question_index)
        if len(rows) == 0:
            raise ModtrainError(f"question {question_index} is not in split {split!r}")
        row = int(rows[0])
        tokens = split_data.tokens[row:row + 1]
        with torch.no_grad():
            logits = module(torch.from_numpy(tokens).long().to(device),
                            torch.from_numpy(split_data.lengths[row:row + 1]).long(),
                            torch.from_numpy(features.take([int(split_data.image_index[row])])).float().to(device))
        explained = {k: v[0].cpu().numpy() for k, v in module.explained.items()}
        question = [words.get(int(t), "?") for t in tokens[0, :int(split_data.lengths[row])]]
        truth = data.answers[split_data.answer[row]] if split_data.answer[row] >= 0 else None
        path = out_dir / f"{split}_{question_index}.png"
        _draw_stack(path, image_paths[int(split_data.image_index[row])], question, explained, module.net.module_names,
                    data.answers[int(logits.argmax())], truth)
        paths.append(path)
    return paths


def _draw_stack(path, image_path, question, explained, names, predicted, truth) -> Path:
    plt = pyplot()
    weights, text, tops = explained["module_weights"], explained["text_attention"], explained["tops"]
    steps = weights.shape[0]
    image = np.asarray(Image.open(image_path).convert("RGB"))
    figure = plt.figure(figsize=(max(12.0, 1.6 * steps), 6.0), dpi=DPI)
    grid = figure.add_gridspec(2, steps, height_ratios=[1.6, 1])
    axis = figure.add_subplot(grid[0, :2])
    axis.imshow(image)
    axis.set_axis_off()
    verdict = "" if truth is None else ("  ✓" if predicted == truth else f"  ✗ (answer: {truth})")
    axis.set_title("\n".join(textwrap.wrap(" ".join(question), 40)) + f"\npredicted: {predicted}{verdict}", fontsize=9)
    axis = figure.add_subplot(grid[0, 2:])
    axis.imshow(weights.T, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    axis.grid(False)
    axis.set_yticks(range(len(names)), names, fontsize=7)
    axis.set_xticks(range(steps), [f"{t + 1}: {question[int(text[t, :len(question)].argmax())]}" for t in range(steps)],
                    fontsize=7, rotation=30)
    axis.set_title("module weights per step (x: step and its most attended word)", fontsize=9)
    height, width = image.shape[:2]
    for t in range(steps):
        axis = figure.add_subplot(grid[1, t])
        axis.imshow(image)
        top = np.exp(tops[t] - tops[t].max())
        axis.imshow(top / top.sum(), cmap="magma", alpha=0.6, extent=(0, width, height, 0), interpolation="nearest")
        axis.set_title(f"top after step {t + 1}\n{names[int(weights[t].argmax())]}", fontsize=8)
        axis.set_axis_off()
    figure.tight_layout()
    return save_figure(figure, path, dpi=DPI)

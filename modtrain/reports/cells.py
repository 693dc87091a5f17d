"""``modtrain report cells``: what a trained LNMN's cells learned (LNMN §5).

- σ(α) of every node of every module as a heatmap (LNMN Fig. 3);
- each module's analytical expression from its nodes' argmax operations, simplified where an
  operation chooses one input (LNMN Table 6);
- integrated gradients of the correct answer's log-probability with respect to α, from the
  uniform structure (α = 0) to the learned one, summed per module and per operation (LNMN Table 5);
- validation accuracy with each operation zeroed out in every node (LNMN Table 7), and with each
  node's argmax operation alone (LNMN Table 2's hard-max).

Writes ``reports/cells.json``, ``cells.md`` and ``cells_alpha.png``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from modtrain.card import load_module
from modtrain.data import PreparedData
from modtrain.errors import ModtrainError
from modtrain.io import write_json, write_text
from modtrain.reports.plots import pyplot, save_figure
from modtrain.workdir import Workdir

IG_STEPS = 16


def _simplify(op: str, a: str, b: str) -> str:
    if op == "choose_1":
        return a
    if op == "choose_2":
        return b
    return {"sum": f"({a} + {b})", "product": f"({a} ⊙ {b})"}.get(op, f"{op}({a}, {b})")


def expression(cell) -> str:
    """The cell's function with each node's argmax operation (LNMN Table 6)."""
    from modtrain.modules.lnmn import OPERATIONS

    ops = [OPERATIONS[int(node.alpha.argmax())] for node in cell.nodes]
    image, text = "conv_1(I)", "W_1 c"
    if cell.maps == 1:
        inner = _simplify(ops[1], _simplify(ops[0], image, "a"), text)
    else:
        inner = _simplify(ops[2], _simplify(ops[1], _simplify(ops[0], "a_1", "a_2"), image), text)
    return f"W_2[Σ {inner}, {text}, f_mem]" if cell.answer else f"conv_2({inner})"


def _batches(split, features, size: int, limit: int):
    rows = np.flatnonzero(split.trainable())[:limit]
    for start in range(0, len(rows), size):
        r = rows[start:start + size]
        yield (torch.from_numpy(split.tokens[r]).long(), torch.from_numpy(split.lengths[r]).long(),
               torch.from_numpy(features.take(split.image_index[r])).float(), torch.from_numpy(split.answer[r]).long())


def _accuracy(module, split, features, limit: int) -> float:
    correct = total = 0
    with torch.no_grad():
        for tokens, lengths, feats, answer in _batches(split, features, 256, limit):
            correct += int((module(tokens, lengths, feats).argmax(1) == answer).sum())
            total += len(answer)
    return correct / max(total, 1)


def integrated_gradients(module, split, features, limit: int) -> dict[str, list[list[float]]]:
    """Per cell and node: Σ over questions of IG attributions of α (uniform α = 0 → learned α)."""
    cells = module.net.cells
    learned = {name: [node.alpha.detach().clone() for node in cell.nodes] for name, cell in cells.items()}
    totals = {name: [torch.zeros_like(a) for a in alphas] for name, alphas in learned.items()}
    batches = list(_batches(split, features, 128, limit))
    try:
        for k in range(1, IG_STEPS + 1):
            scale = k / IG_STEPS
            for name, cell in cells.items():
                for node, alpha in zip(cell.nodes, learned[name]):
                    node.alpha.data.copy_(alpha * scale)
            for tokens, lengths, feats, answer in batches:
                module.zero_grad(set_to_none=True)
                log_p = F.log_softmax(module(tokens, lengths, feats), dim=1).gather(1, answer[:, None]).sum()
                log_p.backward()
                for name, cell in cells.items():
                    for i, node in enumerate(cell.nodes):
                        totals[name][i] += node.alpha.grad / IG_STEPS
    finally:
        for name, cell in cells.items():
            for node, alpha in zip(cell.nodes, learned[name]):
                node.alpha.data.copy_(alpha)
    return {name: [(alpha * total).tolist() for alpha, total in zip(learned[name], totals[name])] for name in cells}


def cells_report(workdir: Workdir, split_name: str = "val", limit: int = 2000,
                 device: torch.device = torch.device("cpu")) -> dict[str, Any]:
    from modtrain.modules.lnmn import OPERATIONS

    if not (workdir.modules / "lnmn.json").exists():
        raise ModtrainError(f"{workdir.modules / 'lnmn.json'} not found: train an LNMN first "
                            f"('modtrain e2e --recipe lnmn --workdir {workdir.root}')")
    module, card = load_module(workdir.modules, "lnmn", device)
    module.eval()
    data = PreparedData(workdir.data)
    split = data.split(split_name)
    features = split.features()
    cells = module.net.cells
    report: dict[str, Any] = {"workdir": str(workdir.root), "split": split_name,
                              "questions": int(min(limit, split.trainable().sum())),
                              "operations": list(OPERATIONS), "modules": {}}
    for name, cell in cells.items():
        report["modules"][name] = {
            "alpha_softmax": [torch.softmax(n.alpha.detach(), 0).tolist() for n in cell.nodes],
            "argmax": [OPERATIONS[int(n.alpha.argmax())] for n in cell.nodes], "expression": expression(cell)}
    attributions = integrated_gradients(module, split, features, min(limit, 512))
    for name, per_node in attributions.items():
        report["modules"][name]["ig_by_operation"] = np.array(per_node).sum(0).tolist()
    report["accuracy"] = {"learned": _accuracy(module, split, features, limit)}
    module.net.set_hard(True)
    report["accuracy"]["argmax operations"] = _accuracy(module, split, features, limit)
    module.net.set_hard(False)
    for op in OPERATIONS:
        for cell in cells.values():
            for node in cell.nodes:
                node.removed = {op}
        report["accuracy"][f"without {op}"] = _accuracy(module, split, features, limit)
    for cell in cells.values():
        for node in cell.nodes:
            node.removed = set()
    write_json(workdir.reports / "cells.json", report)
    write_text(workdir.reports / "cells.md", format_cells(report))
    plot_alpha(report, workdir.reports / "cells_alpha.png")
    return report


def format_cells(report: dict) -> str:
    ops = report["operations"]
    lines = [f"# LNMN cells ({report['split']}, {report['questions']} questions)", "",
             "| module | node argmax | expression |", "|---|---|---|"]
    lines += [f"| {n} | {', '.join(m['argmax'])} | `{m['expression']}` |" for n, m in report["modules"].items()]
    lines += ["", "Integrated gradients of the correct answer's log-probability w.r.t. α, "
                  "per operation (LNMN Table 5):",
              "", "| module | " + " | ".join(ops) + " |", "|---" * (len(ops) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(f"{v:.3f}" for v in m["ig_by_operation"]) + " |"
              for n, m in report["modules"].items()]
    lines += ["", "Accuracy (LNMN Tables 2 and 7):", "", "| setting | accuracy |", "|---|---|"]
    lines += [f"| {k} | {100 * v:.2f} |" for k, v in report["accuracy"].items()]
    return "\n".join(lines) + "\n"


def plot_alpha(report: dict, path) -> None:
    """σ(α) per node (rows) and operation (columns), one panel per module (LNMN Fig. 3)."""
    plt = pyplot()
    import seaborn as sns

    names = list(report["modules"])
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 1.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        sns.heatmap(np.array(report["modules"][name]["alpha_softmax"]), vmin=0, vmax=1, cmap="viridis", cbar=False,
                    ax=ax, xticklabels=report["operations"], yticklabels=[f"node {i + 1}" for i in range(
                        len(report["modules"][name]["alpha_softmax"]))])
        ax.set_title(name, fontsize="small")
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    figure.tight_layout()
    save_figure(figure, path)

"""``modtrain assemble``: compose the trained modules per question and evaluate.

Loads every module from its card, type-checks each layout before computing anything,
runs the questions batched by layout shape, combines the root's answer with the encoder's
prior as the interface says, and reports accuracy overall, per question type and per
program depth, next to the encoder alone. A question whose layout needs a module or an
instance that was not trained is answered by the encoder alone and counted as skipped, per
reason. Predictions are written for every question, those without answers included.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from modtrain.cache import attention_mode
from modtrain.card import load_module
from modtrain.data import PreparedData, set_in_memory_bytes
from modtrain.datasets.vqa import vqa_scores
from modtrain.errors import ModtrainError
from modtrain.execute import Executor
from modtrain.io import read_json, write_json
from modtrain.layout import Layout
from modtrain.progress import progress
from modtrain.recipe import Recipe
from modtrain.registry import reads_features, run_prior
from modtrain.trust import card_verdict
from modtrain.types import AnswerLogits, Prior, TypeCheckError, get_interface
from modtrain.workdir import Workdir

log = logging.getLogger(__name__)


def load_assembly(workdir: Workdir, recipe: Recipe, device: torch.device):
    """The encoder, an executor over the other trained modules, and their cards."""
    interface = get_interface(recipe.interface)
    modules, cards = {}, {}
    for name in recipe.modules:
        module, card = load_module(workdir.modules, name, device)
        if card["interface"] != interface.name:
            raise ModtrainError(f"{workdir.modules / (name + '.json')} was trained in the {card['interface']} "
                                f"interface, but recipe {recipe.name} uses {interface.name}; retrain it")
        modules[name], cards[name] = module, card
    for name, card in cards.items():  # every module must have trained on the producers it is assembled with
        for producer, trained_on in card.get("inputs", {}).items():
            current = cards.get(producer, {}).get("weights_sha256")
            if current is None or trained_on in (current, (cards[producer].get("imported") or {}).get(
                    "home_weights_sha256")):
                continue
            if "imported" in card or "imported" in cards[producer]:
                # reuse composes modules trained apart on purpose (typed interfaces, paper §3.2): said, not refused
                log.info("%s was trained on %s %s and is assembled with another %s (%s imported)", name, producer,
                         str(trained_on)[:12], producer, producer if "imported" in cards[producer] else name)
            else:
                raise ModtrainError(
                    f"mixed assembly: {workdir.modules / name}.json was trained on {producer} {str(trained_on)[:12]}, "
                    f"but {workdir.modules / producer}.json is {current[:12]}; retrain {name} "
                    f"('modtrain run' retrains what is out of date)")
    priors = [name for name, card in cards.items() if card["signature"]["output"] == Prior.name]
    if not priors:
        raise ModtrainError(f"recipe {recipe.name} has no module that gives a prior (an encoder); the assembler "
                            f"combines layouts with its prior")
    encoder = modules.pop(priors[0])
    mode = attention_mode({n: c["hyperparameters"] for n, c in cards.items()})
    return encoder, Executor(modules, interface, mode), cards


def skip_reason(executor: Executor, layout: Layout) -> str | None:
    """Why a layout cannot run with these modules (a module or instance never trained), or None."""
    for node in layout.nodes():
        module = executor.modules.get(node.module)
        if module is None:
            return f"no module {node.module}"
        if node.instance is not None and node.instance not in getattr(module, "instances", ()):
            return f"{node.module}[{node.instance}] not trained"
    return None


def _accuracy(correct: np.ndarray, groups: np.ndarray | None = None, names=None) -> dict:
    if groups is None:
        return {"questions": int(len(correct)), "accuracy": float(correct.mean()) if len(correct) else float("nan")}
    out = {}
    for g in sorted(set(groups.tolist())):
        key = names[g] if names is not None else str(g)
        out[key] = _accuracy(correct[groups == g])
    return out


def assemble(workdir: Workdir, recipe: Recipe, device: torch.device, splits: list[str] | None = None,
             batch_size: int = 512, data: PreparedData | None = None) -> dict[str, Any]:
    """Evaluate the assembled NMN on ``splits``; merge them into ``reports/assemble.json`` (the
    splits evaluated before with the same modules stay), write predictions; return their report."""
    set_in_memory_bytes(recipe.data.in_memory_bytes)
    data = data or PreparedData(workdir.data)
    encoder, executor, cards = load_assembly(workdir, recipe, device)
    interface = executor.interface
    splits = splits or [s for s in data.splits() if s != recipe.data.train_split]
    report: dict[str, Any] = {
        "recipe": recipe.name, "interface": interface.name,
        "modules": {n: {"weights_sha256": c["weights_sha256"], "val_accuracy": c["metrics"]["val_accuracy"],
                        **_trust_fields(c, recipe)} for n, c in cards.items()},
        "splits": {},
    }
    type_names = data.vocab["question_types"]
    prior_alone = set(cards) == {encoder.name}  # a recipe of one module that answers alone (FiLM)
    for split_name in splits:
        split = data.split(split_name)
        n = len(split)
        runnable = np.zeros(len(data.layouts) + 1, bool)  # index −1 (no program): never
        skipped: dict[str, int] = {}
        for layout_id, count in zip(*np.unique(split.layout[split.layout >= 0], return_counts=True)):
            layout = data.layouts[layout_id]
            if prior_alone:  # the prior is the whole system (FiLM): nothing is skipped
                break
            reason = skip_reason(executor, layout)
            if reason is not None:
                skipped[reason] = skipped.get(reason, 0) + int(count)
                continue
            output = executor.check(layout)
            if output is not AnswerLogits:
                raise TypeCheckError(f"layout {layout}: its root gives {output}, not AnswerLogits")
            runnable[layout_id] = True
        if skipped:
            log.warning("%s: %d questions answered by the encoder alone: %s", split_name, sum(skipped.values()),
                        ", ".join(f"{r} ({c})" for r, c in sorted(skipped.items())))
        with_layout = runnable[split.layout]
        # sorted by shape, so that each batch holds few large groups
        shapes = np.array([data.layouts[i].shape() if i >= 0 else "" for i in split.layout])
        order = np.argsort(shapes, kind="stable")
        features = split.features() if with_layout.any() or reads_features(encoder) else None
        predicted = np.full(n, -1, np.int64)
        prior_predicted = np.full(n, -1, np.int64)
        with torch.no_grad(), progress(range(0, n, batch_size), f"assemble {split_name}") as bar:
            for start in bar:
                rows = order[start:start + batch_size]
                image = (torch.from_numpy(features.take(split.image_index[rows])).to(device).float()
                         if reads_features(encoder) else None)
                prior = run_prior(encoder, torch.from_numpy(split.tokens[rows]).long().to(device),
                                  torch.from_numpy(split.lengths[rows]).long(), image)
                prior_predicted[rows] = prior.argmax(1).cpu().numpy()
                predicted[rows] = prior_predicted[rows]  # questions without a layout: the encoder alone
                mask = with_layout[rows]
                if mask.any():
                    run_rows = rows[mask]
                    feats = torch.from_numpy(features.take(split.image_index[run_rows])).to(device).float()
                    root = executor.run([data.layouts[i] for i in split.layout[run_rows]], feats)
                    predicted[run_rows] = interface.combine(
                        root, prior[torch.from_numpy(mask).to(device)]).argmax(1).cpu().numpy()
        labelled = split.answer >= 0
        if not labelled.all():
            log.warning("%s: %d questions have no answer; predicted, but left out of the accuracy",
                        split_name, int((~labelled).sum()))
        correct = (predicted == split.answer)[labelled]
        prior_correct = (prior_predicted == split.answer)[labelled]
        types, depths = split.question_type[labelled], split.depth[labelled]
        answers = data.answers
        report["splits"][split_name] = {
            "questions": n, "labelled": int(labelled.sum()), "without_layout": int((split.layout < 0).sum()),
            "skipped": dict(sorted(skipped.items())),
            "accuracy": _accuracy(correct)["accuracy"], "encoder_accuracy": _accuracy(prior_correct)["accuracy"],
            "by_type": _merge(_accuracy(correct, types, type_names), _accuracy(prior_correct, types, type_names)),
            "by_depth": _merge(_accuracy(correct, depths), _accuracy(prior_correct, depths)),
        }
        vqa = "vqa_answers" in split.arrays
        if vqa:  # VQA accuracy (the official formula) beside accuracy against the most common answer
            humans = split.vqa_answers[labelled]
            scores = vqa_scores([answers[p] for p in predicted[labelled]], humans)
            prior_scores = vqa_scores([answers[p] for p in prior_predicted[labelled]], humans)
            s = report["splits"][split_name]
            s["vqa_accuracy"], s["encoder_vqa_accuracy"] = (_accuracy(scores)["accuracy"],
                                                            _accuracy(prior_scores)["accuracy"])
            for key, row in _merge(_accuracy(scores, types, type_names),
                                   _accuracy(prior_scores, types, type_names)).items():
                s["by_type"][key].update(vqa_accuracy=row["accuracy"], encoder_vqa_accuracy=row["encoder_accuracy"])
        key = "question_id" if vqa else "question_index"  # VQA: the official results format
        write_json(workdir.reports / "predictions" / f"{split_name}.json",
                   [{key: int(q), "answer": answers[p], "encoder_answer": answers[e]}
                    for q, p, e in zip(split.question_index, predicted, prior_predicted)], indent=None)
    path = workdir.reports / "assemble.json"
    merged = report
    if path.exists():  # keep the splits evaluated before with the same modules
        try:
            earlier = read_json(path, "assembly report")
        except ModtrainError:
            earlier = {}
        if earlier.get("modules") == report["modules"] and earlier.get("recipe") == report["recipe"]:
            merged = {**report, "splits": {**{s: v for s, v in earlier.get("splits", {}).items()
                                              if s not in report["splits"]}, **report["splits"]}}
    write_json(path, merged)
    return report


def _trust_fields(card: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """A module's verdict under the recipe's [trust] settings, for the report (none without a surrogate)."""
    verdict = card_verdict(card, recipe.trust)
    if verdict is None:
        return {}
    return {"trustworthy": verdict.trusted, "trust_criterion": verdict.criterion, "trust_reason": verdict.reason,
            "predictive_variance": card["surrogate"]["predictive_variance"]}


def _merge(assembled: dict, encoder: dict) -> dict:
    return {k: {**v, "encoder_accuracy": encoder[k]["accuracy"]} for k, v in assembled.items()}


def format_report(report: dict[str, Any]) -> str:
    """The accuracy table: assembled NMN next to the encoder alone."""
    lines = [f"recipe {report['recipe']} ({report['interface']} interface)"]
    for name, module in report["modules"].items():
        if module.get("trustworthy") is False:
            lines.append(f"warning: {name} is not trusted: {module.get('trust_reason', 'see its card')}")
    for split, s in report["splits"].items():
        skipped = "".join(f"; skipped ({reason}): {count}" for reason, count in s.get("skipped", {}).items())
        vqa = "vqa_accuracy" in s
        head = f"{'VQA acc':>10}{'encoder':>9}" if vqa else ""

        def vqa_cells(row):
            return f"{row['vqa_accuracy']:>10.1%}{row['encoder_vqa_accuracy']:>9.1%}" if vqa else ""

        lines += ["", f"[{split}] {s['labelled']} labelled of {s['questions']} questions{skipped}",
                  f"  {'':<22}{'questions':>10}{'assembled':>11}{'encoder':>9}{head}",
                  f"  {'overall':<22}{s['labelled']:>10}{s['accuracy']:>10.1%}{s['encoder_accuracy']:>9.1%}"
                  f"{vqa_cells(s)}"]
        if vqa:
            lines.append("  (assembled, encoder: accuracy against the most common answer; "
                         "VQA acc: min(humans agreeing / 3, 1), "
                         "averaged over the humans left out)")
        for name, row in s["by_type"].items():
            lines.append(f"  {name:<22}{row['questions']:>10}{row['accuracy']:>10.1%}{row['encoder_accuracy']:>9.1%}"
                         f"{vqa_cells(row)}")
        lines.append("  by depth")
        for depth, row in s["by_depth"].items():
            lines.append(f"  {'  ' + depth:<22}{row['questions']:>10}{row['accuracy']:>10.1%}"
                         f"{row['encoder_accuracy']:>9.1%}")
    return "\n".join(lines)

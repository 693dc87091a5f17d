"""``modtrain e2e``: the same NMN trained jointly, end to end — the baseline of paper Table 2.

Same modules, layouts, data, optimizer and stopping rule as modular training: the job of
``modtrain.job`` with every module of the recipe trainable, so every question's whole layout
runs with the encoder in one graph and one loss trains all modules at once. The result is
saved as ordinary module cards, so ``modtrain assemble`` evaluates both the same way.
"""
from __future__ import annotations

from typing import Any

import torch

from modtrain.data import PreparedData
from modtrain.job import Job, job_key, joint_spec
from modtrain.plan import make_plan
from modtrain.recipe import Recipe
from modtrain.train import cards_match
from modtrain.workdir import Workdir

JOB = "e2e"


def e2e_up_to_date(recipe: Recipe, data: PreparedData, workdir: Workdir) -> bool:
    """Whether every module of the recipe was trained end to end with these settings."""
    spec = joint_spec(make_plan(recipe, end_to_end=True), JOB)
    return cards_match(workdir.modules, recipe.modules, job_key(spec, recipe, data, {}, workdir))


def train_end_to_end(workdir: Workdir, recipe: Recipe, device: torch.device,
                     data: PreparedData | None = None) -> dict[str, Any]:
    """Train the recipe's NMN jointly; return a summary with every module's card."""
    plan = make_plan(recipe, end_to_end=True)
    return Job(workdir, recipe, device, joint_spec(plan, JOB), data, plan=plan).run()

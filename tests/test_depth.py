"""Generalization by program depth (paper §5.6): the training depth limit, FiLM, the depth report."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from modtrain.modules.film import coordinates

from modtrain.assemble import load_assembly
from modtrain.data import PreparedData, SplitData
from modtrain.errors import ModtrainError
from modtrain.io import sha256_json
from modtrain.job import Job, training_questions
from modtrain.pipeline import run_end_to_end
from modtrain.plan import make_plan
from modtrain.recipe import Recipe
from modtrain.registry import build_module, run_prior
from modtrain.reports.depth import (
    ALL,
    LIMITED,
    composable,
    format_markdown,
    mean_error,
    run_depth,
    summarize,
    without_untaught,
)
from modtrain.workdir import Workdir

CPU = torch.device("cpu")
# two epochs: these tests check what the reports hold and how they are made, not what training reaches
FAST = ["train.max_epochs=2", "train.patience=2", "train.device='cpu'"]
DIMS = {"features": 6, "height": 4, "width": 5, "answers": 7, "tokens": 11}


def test_trainable_rows_are_labelled_and_no_deeper_than_the_limit():
    split = SplitData("train", {"answer": np.array([5, -1, 2, 1, 3, 0]), "depth": np.array([3, 3, 6, -1, 4, 3])},
                      {}, None)
    # unlabelled (−1) and <UNK> (0: an answer outside the answer set) never train
    assert split.trainable().tolist() == [True, False, True, True, True, False]
    # depth −1 (no program): a question the depth says nothing about stays
    assert split.trainable(4).tolist() == [True, False, False, True, True, False]


def test_film_appends_coordinates_and_modulates_every_block_and_channel():
    coords = coordinates(4, 5)
    assert coords.shape == (2, 4, 5)
    assert torch.equal(coords[0, :, 0], torch.full((4,), -1.0)) and torch.equal(coords[0, :, -1], torch.ones(4))
    assert torch.equal(coords[1, 0], torch.full((5,), -1.0)) and torch.equal(coords[1, -1], torch.ones(5))
    film = build_module("film", "typed", DIMS, channels=8, blocks=3).eval()
    tokens, lengths = torch.randint(1, 11, (2, 6)), torch.tensor([6, 3])
    gamma, beta = film.modulation(tokens, lengths)
    assert gamma.shape == beta.shape == (2, 3, 8)
    # with the modulation's weights zero, γ = 1 and β = 0: every block passes its normalized map through
    torch.nn.init.zeros_(film.modulate.weight), torch.nn.init.zeros_(film.modulate.bias)
    gamma, beta = film.modulation(tokens, lengths)
    assert torch.equal(gamma, torch.ones(2, 3, 8)) and torch.equal(beta, torch.zeros(2, 3, 8))
    # the question changes the answer only through (γ, β): with them fixed, two questions answer alike
    features = torch.randn(1, 6, 4, 5).expand(2, -1, -1, -1)
    out = film(tokens, lengths, features)
    assert torch.allclose(out[0], out[1], atol=1e-6)
    # the coordinate channels reach the blocks: the stem's weights on them are real inputs
    assert film.stem[0].in_channels == 6 + 2 and film.blocks[0].project.in_channels == 8 + 2


def test_mean_error_counts_each_depth_once_and_skips_thin_ones():
    errors = {"3": {"questions": 100, "error": 0.1}, "4": {"questions": 10, "error": 0.3},
              "6": {"questions": 50, "error": 0.5}, "7": {"questions": 5, "error": 0.9}}
    assert mean_error(errors, lambda d: d <= 4, 20) == pytest.approx(0.1)
    assert mean_error(errors, lambda d: d <= 4, 5) == pytest.approx(0.2)
    assert mean_error(errors, lambda d: d > 4, 20) == pytest.approx(0.5)


@pytest.mark.slow
def test_the_depth_limit_filters_training_and_stopping_but_not_what_is_reported(tiny_run, tmp_path):
    _, typed, _, _ = tiny_run
    data = PreparedData(typed.data)
    train, val = data.split("train"), data.split("val")
    assert len(set(train.depth.tolist())) > 2  # the limit must cut something
    recipe = Recipe.load("nmn-typed", [*FAST, f"data.source='{typed.data}'", "data.max_train_depth=4"])
    workdir = Workdir.for_recipe(recipe, tmp_path / "limited")
    card = Job.for_module(workdir, recipe, "encoder", CPU, data).run()
    expected = lambda s: int(((s.answer >= 0) & (s.depth <= 4)).sum())  # noqa: E731
    assert card["metrics"]["train_questions"] == expected(train) < int((train.answer >= 0).sum())
    assert card["metrics"]["val_questions"] == expected(val) < int((val.answer >= 0).sum())
    assert training_questions(make_plan(recipe), recipe, data)["encoder"] == expected(train)
    # an unlimited card is not this one: the limit is part of what a trained result depends on
    unlimited = Recipe.load("nmn-typed", [*FAST, f"data.source='{typed.data}'"])
    assert sha256_json(Job.for_module(workdir, recipe, "encoder", CPU, data).key) == card["job_key"]
    assert sha256_json(Job.for_module(workdir, unlimited, "encoder", CPU, data).key) != card["job_key"]


@pytest.mark.slow
def test_film_answers_alone_learns_and_reads_the_image(tiny_run, tmp_path):
    """FiLM, the depth report's end-to-end baseline, as a working system: it answers every question
    on its own, fits its training questions, and its answers depend on the image. (Whether it beats
    the question-only prior on this tiny data is not asserted: in 15 epochs it lands within a
    tenth of a point of it, above on one CPU, below on another. bench_depth measures it.)"""
    _, typed, _, _ = tiny_run
    # six epochs, the settings this tiny data trains FiLM with (the recipe's are its paper's): the loss falls
    # most in the first two; the depth report trains it to the end
    recipe = Recipe.load("film", [f"data.source='{typed.data}'", "train.max_epochs=6", "train.patience=6",
                                  "train.lr=0.002", "train.weight_decay=0", "train.device='cpu'"])
    workdir = Workdir.for_recipe(recipe, tmp_path / "film")
    result = run_end_to_end(recipe, workdir, CPU, say=lambda m: None)
    assert result["splits"]["val"]["skipped"] == {}  # FiLM answers every question on its own
    losses = [json.loads(line)["train_loss"] for line in (workdir.root / "logs" / "e2e.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.75 * losses[0]  # it learns (about 0.56× in 6 epochs here)
    film, _, _ = load_assembly(workdir, recipe, CPU)
    split = PreparedData(typed.data).split("val")
    tokens, lengths = torch.from_numpy(split.tokens).long(), torch.from_numpy(split.lengths).long()
    images = split.features()
    other = (split.image_index + 1) % (split.image_index.max() + 1)  # the next image: never the question's
    with torch.no_grad():
        answers = run_prior(film, tokens, lengths, torch.from_numpy(images.take(split.image_index)).float())
        about_others = run_prior(film, tokens, lengths, torch.from_numpy(images.take(other)).float())
    # the same questions about other images get other answers
    assert (answers.argmax(1) != about_others.argmax(1)).float().mean() > 0.05


@pytest.mark.slow
def test_composable_questions_use_only_what_shallow_questions_taught(tiny_run):
    _, typed, _, _ = tiny_run
    data = PreparedData(typed.data)
    val = data.split("val")
    # depth ≤ 2: only "how many things are there?" (measure[count](find[*all*])) is taught
    mask = composable(data, "val", "train", 2)
    layouts = [str(data.layouts[i]) for i in val.layout]
    assert all(m == (text == "measure[count](find[*all*])") for m, text in zip(mask, layouts)), \
        sorted({t for m, t in zip(mask, layouts) if m})
    assert mask.any()
    # more depths teach more: the subsets grow, and a layout asked in training is always composable
    deeper, everything = composable(data, "val", "train", 4), composable(data, "val", "train", 100)
    assert (mask <= deeper).all() and (deeper <= everything).all() and deeper.sum() > mask.sum()
    assert everything[np.isin(val.layout, data.split("train").layout[data.split("train").answer >= 0])].all()


@pytest.mark.slow
def test_depth_report_on_tiny_data(tiny_run, tmp_path):
    _, typed, _, _ = tiny_run
    root = tmp_path / "depth"
    summary = run_depth(root, 4, CPU, recipe_name="nmn-typed", systems=["end-to-end typed", "FiLM"], reference=True,
                        overrides=FAST, data_dir=typed.data, say=lambda m: None, min_questions=1, seeds=1)
    saved = json.loads((root / "reports" / "depth.json").read_text())
    assert saved["max_train_depth"] == 4 and set(saved["systems"]) == {"end-to-end typed", "FiLM"}
    # reported on the test split; the validation questions (≤ D) only stopped training early
    assert saved["splits"] == {"reported": "test", "early_stopping": "val", "train": "train"}
    data = PreparedData(typed.data)
    test_depths = {str(d) for d in data.split("test").depth.tolist()}
    low = saved["counted_depths"]["low"]
    for label, regimes in summary["systems"].items():
        limited = regimes[LIMITED]
        run = limited["runs"][0]
        # every test depth is reported (the limit never filters what is evaluated) ...
        assert set(limited["report"]) == test_depths
        # ... and the errors are the assembler's, per depth, of that system's own workdir
        assembled = json.loads((Path(run["workdir"]) / "reports" / "assemble.json").read_text())
        for depth, e in limited["report"].items():
            by_depth = assembled["splits"]["test"]["by_depth"][depth]
            assert e["mean"] == pytest.approx(1 - by_depth["accuracy"]) and e["questions"] == by_depth["questions"]
            assert e["interval"] is None  # one seed: no interval
        # the training split's questions deeper than the limit, which no job trained on
        assert limited["train_unseen"] and all(int(d) > 4 for d in limited["train_unseen"])
        # the means count the balanced depths only (here ≥ 3: the data has no balance range)
        seen = [e["mean"] for d, e in limited["report"].items() if low <= int(d) <= 4]
        unseen = [e["mean"] for d, e in limited["report"].items() if int(d) > 4]
        assert any(int(d) < low for d in limited["report"])  # a shallower depth exists, and is left out
        assert limited["seen_error"]["mean"] == pytest.approx(np.mean(seen))
        assert limited["unseen_error"]["mean"] == pytest.approx(np.mean(unseen))
        assert limited["counted_depths"] == sorted(int(d) for d in limited["report"] if int(d) >= low)
        cards = [json.loads(p.read_text())
                 for p in (root / label.replace(" ", "-") / "depth-4" / "seed-0" / "modules").glob("*.json")]
        assert cards and all(c["metrics"]["train_questions"] < len(data.split("train")) for c in cards)
        # the reference trained on every depth: more training questions than the limited run
        reference = [json.loads(p.read_text())
                     for p in (root / label.replace(" ", "-") / "all-depths" / "seed-0" / "modules").glob("*.json")]
        assert reference[0]["metrics"]["train_questions"] > cards[0]["metrics"]["train_questions"]
        assert ALL in regimes
        # the composable subset is a subset, the same questions for every system
        for depth, e in limited["report_composable"].items():
            assert e["questions"] <= limited["report"][depth]["questions"]
        assert limited["trained"] is None  # no modular NMN ran: no prior to judge "did not train" by
    counts = [{d: e["questions"] for d, e in r[LIMITED]["report_composable"].items()}
              for r in summary["systems"].values()]
    assert counts[0] == counts[1]
    markdown = (root / "reports" / "depth.md").read_text()
    assert "| end-to-end typed |" in markdown and "| FiLM |" in markdown
    assert (root / "reports" / "depth.png").stat().st_size > 10_000


def _run(errors: dict[int, float], questions: int = 200, prior: dict[int, float] | None = None) -> dict:
    by_depth = {str(d): {"questions": questions if d != 7 else 30, "error": e} for d, e in errors.items()}
    return {"report": by_depth, "report_composable": by_depth, "prior_accuracy": {str(d): a for d, a in
                                                                                 (prior or {}).items()}}


def test_depth_summary_over_seeds_counts_balanced_well_filled_depths_and_says_who_did_not_train():
    """Three seeds: per depth and per mean, the mean and its Student-t interval; depth 2 (below the
    balanced range) and depth 7 (30 questions < 100) are kept per depth but left out of the means;
    a system within 10 points of the prior at seen depths "did not train"."""
    from scipy import stats

    prior = {2: 0.9, 3: 0.4, 4: 0.4, 5: 0.4, 6: 0.4, 7: 0.4}
    typed = [_run({2: 0.5, 3: 0.10, 4: 0.20, 5: 0.30, 6: 0.40, 7: 0.9}, prior=prior),
             _run({2: 0.5, 3: 0.12, 4: 0.22, 5: 0.36, 6: 0.42, 7: 0.9}, prior=prior),
             _run({2: 0.5, 3: 0.14, 4: 0.18, 5: 0.33, 6: 0.50, 7: 0.9}, prior=prior)]
    flat = [_run({2: 0.1, 3: 0.55, 4: 0.55, 5: 0.6, 6: 0.6, 7: 0.6}) for _ in range(3)]
    results = {"modular typed": {LIMITED: {"runs": typed}}, "FiLM": {LIMITED: {"runs": flat}}}
    summary = summarize(results, 4, 100, {}, (3, 12))
    s = summary["systems"]["modular typed"][LIMITED]
    assert s["counted_depths"] == [3, 4, 5, 6]
    per_seed_seen = [(0.10 + 0.20) / 2, (0.12 + 0.22) / 2, (0.14 + 0.18) / 2]
    per_seed_unseen = [(0.30 + 0.40) / 2, (0.36 + 0.42) / 2, (0.33 + 0.50) / 2]
    assert s["seen_error"]["values"] == pytest.approx(per_seed_seen)
    assert s["unseen_error"]["values"] == pytest.approx(per_seed_unseen)
    ratios = [u / e for u, e in zip(per_seed_unseen, per_seed_seen)]
    half = stats.t.ppf(0.975, 2) * np.std(ratios, ddof=1) / np.sqrt(3)
    assert s["unseen_over_seen"]["mean"] == pytest.approx(np.mean(ratios))
    assert s["unseen_over_seen"]["interval"] == pytest.approx([np.mean(ratios) - half, np.mean(ratios) + half])
    assert s["report"]["5"]["mean"] == pytest.approx(0.33) and s["report"]["7"]["questions"] == 30
    assert s["report"]["2"]["interval"] == pytest.approx([0.5, 0.5])  # no spread, a zero-width interval
    # the prior: the typed system's encoder at the counted seen depths (error 0.6); typed is 43 points
    # below it, FiLM 5 points: FiLM did not train, and depth 2's 0.1 does not rescue it
    assert summary["prior"] == {"from": "modular typed's encoder", "error": pytest.approx(0.6)}
    assert s["trained"] is True and s["above_prior_points"] == pytest.approx(44.0)
    film = summary["systems"]["FiLM"][LIMITED]
    assert film["trained"] is False and film["above_prior_points"] == pytest.approx(5.0)
    summary.update(splits={"reported": "test", "early_stopping": "val"}, seeds=[0, 1, 2])
    markdown = format_markdown(summary)
    assert "| FiLM (did not train) |" in markdown and "| modular typed |" in markdown
    assert f"{100 * np.mean(per_seed_seen):.1f} [" in markdown  # the mean with its interval


def test_bad_depth_settings_are_one_clear_error():
    with pytest.raises(ModtrainError, match=r"data.balance_depth = '12-3': depth range '12-3': must be LOW-HIGH"):
        Recipe.load("nmn-clevr", ["data.balance_depth='12-3'"])
    with pytest.raises(ModtrainError, match=r"data.max_train_depth = 0: must be an integer ≥ 1"):
        Recipe.load("nmn-clevr", ["data.max_train_depth=0"])
    with pytest.raises(ModtrainError, match=r"unknown system\(s\) 'CNN'; valid: modular typed"):
        run_depth("/nonexistent", 5, CPU, systems=["CNN"])


def test_modules_no_shallow_question_uses_are_left_out_of_a_depth_limited_recipe(tiny_clevr, tmp_path):
    from modtrain.datasets.prepare import prepare

    prepare(tiny_clevr, tmp_path / "prepared")
    data = PreparedData(tmp_path / "prepared")
    train = data.split("train")
    relate_depths = [int(d) for i, d in zip(train.layout, train.depth) if i >= 0
                     and any(n.module == "relate" for n in data.layouts[i].nodes())]
    shallowest = min(relate_depths)  # CLEVR's relate questions are deep: 5 at the least here
    assert shallowest > 3
    def used(split, depth):  # modules in the labelled questions of a split up to a depth
        s = data.split(split)
        return {n.module for i, d, a in zip(s.layout, s.depth, s.answer) if i >= 0 and d <= depth and a >= 0
                for n in data.layouts[i].nodes()}

    limited, untaught = without_untaught(Recipe.load("nmn-clevr", [f"data.max_train_depth={shallowest - 1}"]), data)
    assert "relate" in untaught and "relate" not in limited.modules and "relate" not in limited.raw["search"]
    both = used("train", shallowest - 1) & used("val", shallowest - 1)
    assert set(limited.modules) == {"encoder"} | (both & set(Recipe.load("nmn-clevr").modules))
    unlimited, none = without_untaught(Recipe.load("nmn-clevr"), data)
    assert none == [] and "relate" in unlimited.modules

"""Trust in a module trained through a surrogate (modtrain.trust): the gain test, its bootstrap
interval, the paper's variance criterion beside it, and re-judging a card under other settings."""
import dataclasses

import numpy as np
import pytest

from modtrain.errors import ModtrainError
from modtrain.recipe import Recipe
from modtrain.trust import TrustSection, card_verdict, gain_interval, judge, metrics_verdict, trust_statistics
from modtrain.tune import search_space, trial_score

SETTINGS = TrustSection()


def _stats(module, baseline, variance=0.001, settings=SETTINGS, seed=0):
    n = len(module)
    return trust_statistics(np.array(module), np.array(baseline), np.full(n, variance), np.full(n, 0.01), settings,
                            seed)


def test_gain_is_the_relative_nll_gain_over_the_baseline():
    stats = _stats([0.5, 1.0, 1.5], [1.0, 1.0, 2.0])
    assert stats["gain"] == pytest.approx(1 - 3.0 / 4.0)
    assert stats["nll_module"] == pytest.approx(1.0) and stats["nll_baseline"] == pytest.approx(4 / 3)
    assert stats["questions"] == 3 and stats["variance"] == pytest.approx(0.001)


def test_the_interval_is_paired_seeded_and_holds_the_gain():
    rng = np.random.default_rng(0)
    baseline = rng.uniform(0.5, 2.0, 400)
    module = baseline * rng.uniform(0.7, 1.1, 400)  # about 10% better, noisily
    low, high = gain_interval(module, baseline, 1000, 0.95, seed=3)
    gain = 1 - module.sum() / baseline.sum()
    assert low < gain < high and 0 < low and high - low < 0.05
    assert gain_interval(module, baseline, 1000, 0.95, seed=3) == (low, high)  # seeded: the same interval
    # paired: the same questions resampled for both, so a module equal to its baseline on every
    # question has no spread at all, however different the questions are
    assert gain_interval(baseline, baseline, 500, 0.95, seed=3) == (0.0, 0.0)
    wider = gain_interval(module, baseline, 1000, 0.99, seed=3)
    assert wider[0] < low and wider[1] > high


def test_a_large_split_is_resampled_in_chunks():
    """50,000 questions × 200 resamples: drawn a few at a time, never all at once."""
    rng = np.random.default_rng(1)
    baseline = rng.uniform(0.5, 2.0, 50_000)
    module = baseline * 0.9
    low, high = gain_interval(module, baseline, 200, 0.95, seed=0)
    assert low == pytest.approx(0.1) and high == pytest.approx(0.1)


def test_a_module_no_better_than_the_baseline_is_refused_naming_the_gain():
    rng = np.random.default_rng(2)
    baseline = rng.uniform(0.5, 2.0, 300)
    module = baseline * rng.uniform(0.97, 1.02, 300)  # about 0.5% gain
    verdict = judge(_stats(module, baseline), SETTINGS, "find", "the prior")
    assert not verdict.trusted and verdict.criterion == "gain"
    assert verdict.reason.startswith("gain 0.")
    assert "< 5.0%: the surrogate reading find does no better than the prior" in verdict.reason
    assert "interval " in verdict.reason and "300 questions" in verdict.reason


def test_a_large_gain_whose_interval_reaches_zero_is_refused():
    stats = {"gain": 0.12, "gain_low": -0.01, "gain_high": 0.25, "questions": 20, "variance": 0.0}
    verdict = judge(stats, SETTINGS, "relate", "the prior")
    assert not verdict.trusted and "interval −1.0%..25.0%" in verdict.reason and "reaches 0" in verdict.reason


def test_a_clear_gain_is_trusted_and_min_gain_decides_it():
    stats = {"gain": 0.12, "gain_low": 0.08, "gain_high": 0.16, "questions": 500, "variance": 0.01}
    assert judge(stats, SETTINGS).trusted
    assert not judge(stats, dataclasses.replace(SETTINGS, min_gain=0.15)).trusted
    assert judge({**stats, "gain": float("nan")}, SETTINGS).trusted is False


def test_the_papers_variance_criterion_is_selectable():
    variance = dataclasses.replace(SETTINGS, criterion="variance")
    quiet = {"gain": -0.5, "gain_low": -0.6, "gain_high": -0.4, "questions": 10, "variance": 0.001}
    loud = {**quiet, "variance": 0.004}
    assert judge(quiet, variance).trusted and not judge(quiet, SETTINGS).trusted
    refused = judge(loud, variance)
    assert not refused.trusted and refused.reason.startswith("predictive variance 0.00400 > 0.0025")


def test_a_card_is_judged_again_under_other_settings():
    card = {"name": "find", "surrogate": {"trustworthy": True, "trust": {
        "gain": 0.07, "gain_low": 0.05, "gain_high": 0.09, "questions": 800, "variance": 0.004,
        "baseline": "the prior"}}}
    assert card_verdict(card, SETTINGS).trusted
    strict = card_verdict(card, dataclasses.replace(SETTINGS, min_gain=0.1))
    assert not strict.trusted and "surrogate reading find does no better than the prior" in strict.reason
    assert not card_verdict(card, dataclasses.replace(SETTINGS, criterion="variance")).trusted
    assert card_verdict({"name": "describe"}, SETTINGS) is None  # a loss of its own: nothing to judge
    old = card_verdict({"name": "find", "surrogate": {"trustworthy": False}}, SETTINGS)
    assert not old.trusted and "older modtrain" in old.reason


def test_a_search_scores_an_untrusted_trial_zero():
    good = {"val_accuracy": 0.8, "val_gain": 0.2, "val_gain_low": 0.15, "val_gain_high": 0.25,
            "val_variance": 0.01, "val_questions": 100}
    flat = {**good, "val_gain": 0.01, "val_gain_low": -0.01}
    assert trial_score(good, SETTINGS) == 0.8 and trial_score(flat, SETTINGS) == 0.0
    assert trial_score({"val_accuracy": 0.7}, SETTINGS) == 0.7  # a module without a surrogate
    assert metrics_verdict({"val_accuracy": 0.7}, SETTINGS) is None
    # under the paper's criterion the quiet flat trial wins and the good one scores 0
    variance = dataclasses.replace(SETTINGS, criterion="variance")
    assert trial_score(good, variance) == 0.0 and trial_score({**flat, "val_variance": 0.001}, variance) == 0.8


@pytest.mark.slow  # seconds each: the fast loop stays under 30 s on a slower CPU
def test_trust_settings_are_checked_and_the_surrogates_dropout_is_never_searched():
    recipe = Recipe.load("nmn-typed", ["trust.min_gain=0.1", "trust.criterion='variance'"])
    assert recipe.trust.min_gain == 0.1 and recipe.trust.criterion == "variance"
    with pytest.raises(ModtrainError, match=r"trust.criterion = 'quiet': must be one of 'gain', 'variance'"):
        Recipe.load("nmn-typed", ["trust.criterion='quiet'"])
    with pytest.raises(ModtrainError, match=r"unknown key trust.threshold; valid: trust.bootstrap"):
        Recipe.load("nmn-typed", ["trust.threshold=0.1"])
    with pytest.raises(ModtrainError, match=r"search.find.surrogate_dropout: the surrogate's dropout is what its "
                                            r"MC-dropout statistics measure"):
        Recipe.load("nmn-typed", ["search.find.surrogate_dropout='uniform(0, 0.5)'"])
    space = search_space(Recipe.load("nmn-typed"), "find")
    assert "surrogate_rank" in space and "surrogate_dropout" not in space
    for name in ("nmn-typed", "nmn-original", "nmn-clevr", "nmn-vqa"):  # shipped: the reference's fixed 0.3
        assert Recipe.load(name).surrogate("find")[1]["dropout"] == 0.3

"""The surrogate-vs-final correlation report (paper §5.3)."""
import csv
import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import modtrain.pipeline as pipeline_module
import modtrain.reports.correlation as correlation_module
from modtrain.errors import ModtrainError
from modtrain.reports.correlation import (
    auroc,
    correlation,
    criteria_check,
    draw_hyperparameters,
    keeps,
    quality,
    run_correlation,
    select_spread,
)
from modtrain.trust import TrustSection

CPU = torch.device("cpu")


def test_selection_keeps_what_the_criterion_keeps_and_spreads_over_the_loss_range():
    losses = [0.10, 0.12, 0.50, 0.52, 0.90, 0.95, 0.30, 0.70]
    kept = [True, True, True, True, True, True, False, False]
    variances = [0.001, 0.0005, 0.002, 0.0001, 0.0002, 0.0003, 0.01, 0.02]
    # bins over [0.10, 0.95]: one per bin, the lowest variance in it
    assert select_spread(losses, kept, variances, k=3) == [1, 3, 4]


def test_selection_fills_an_empty_bin_with_the_module_nearest_its_centre():
    losses = [0.0, 0.05, 0.1, 0.95, 1.0]
    variances = [0.001, 0.002, 0.0005, 0.001, 0.002]
    # bins [0, 1/3): 2 (lowest variance); [1/3, 2/3): empty; [2/3, 1]: 3. The empty bin's centre
    # 0.5 takes the nearest unpicked module: 0.05 (index 1), nearer than 0.0 and 1.0.
    assert select_spread(losses, [True] * 5, variances, k=3) == [1, 2, 3]


def test_selection_with_fewer_kept_modules_than_asked():
    assert select_spread([0.3, 0.1, float("nan"), 0.2], [True, True, True, False], [0.0] * 4, k=3) == [1, 0]


def test_auroc_and_the_criteria_on_a_hand_made_set():
    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5
    assert math.isnan(auroc([0.5, 0.4], [True, True]))
    # two good finds with high variance and high gain, two stuck ones quiet and flat, and the nulls
    entries = [{"index": i, "null": False, "surrogate_loss": s, "final_loss": f, "gain": g, "gain_low": g - 0.02,
                "gain_high": g + 0.02, "questions": 500, "variance": v, "mutual_information": v * 3}
               for i, (s, f, g, v) in enumerate([(0.5, 0.40, 0.40, 0.02), (0.7, 0.60, 0.25, 0.01),
                                                 (1.08, 1.05, 0.01, 0.0004), (1.09, 1.07, 0.00, 0.0003)])]
    entries += [{"index": 4 + j, "null": True, "final_loss": f} for j, f in enumerate((1.06, 1.08))]
    plateau = quality(entries, margin=0.05)
    assert plateau["plateau"] == pytest.approx(1.07) and plateau["good_below"] == pytest.approx(1.07 * 0.95)
    assert [e.get("good") for e in entries[:4]] == [True, True, False, False]
    for e in entries[:4]:
        e.update({f"kept_{c}": k for c, k in keeps(e, TrustSection()).items()})
    check = criteria_check(entries, plateau["good_below"])
    assert check["gain"]["auroc"] == 1.0 and check["variance"]["auroc"] == 0.0
    assert check["mutual_information"]["auroc"] == 0.0 and check["surrogate_loss"]["auroc"] == 1.0
    assert (check["gain"]["good_kept"], check["gain"]["bad_kept"]) == (2, 0)
    assert (check["variance"]["good_kept"], check["variance"]["bad_kept"]) == (0, 2)
    assert check["gain"]["kept_mean_final_loss"] == pytest.approx(0.5)


def test_correlation_without_the_two_most_extreme_points():
    x = [0.5, 0.6, 1.0, 1.01, 1.02, 1.03, 1.04, 1.05]
    y = [0.4, 0.5, 1.06, 1.02, 1.05, 1.03, 1.07, 1.04]
    c = correlation(x, y)
    assert c["pearson_r"] > 0.95 and c["n"] == 8
    assert c["pearson_r_without_2_extreme"] < 0.7  # the two learnt finds carried it
    assert math.isnan(correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["pearson_r"])  # constant: no r


def test_every_candidate_draws_from_its_own_generator():
    np.random.seed(123)
    first = [draw_hyperparameters(7, i) for i in range(20)]
    np.random.seed(456)  # the global RNG plays no part
    assert [draw_hyperparameters(7, i) for i in range(20)] == first
    assert len({json.dumps(h, sort_keys=True) for h in first}) == 20
    for h in first:
        assert 16 <= h["batch_size"] <= 512 and 1e-5 <= h["lr"] <= 1e-1
        assert 1e-10 <= h["weight_decay"] <= 1 and 0 <= h["dropout"] <= 0.9 and 1 <= h["epochs"] <= 20
        assert "surrogate_dropout" not in h and h["surrogate_rank"] in (4, 8, 16, 32, 64)
    assert draw_hyperparameters(8, 0) != first[0]


@pytest.fixture(scope="module")
def interrupted_then_resumed(tiny_run, tmp_path_factory):
    """A report interrupted at its third candidate, then run again to the end."""
    _, typed, _, _ = tiny_run
    root = tmp_path_factory.mktemp("correlation")
    # every candidate kept (the mechanics are tested here, not a criterion): the paper's, at a threshold nothing exceeds
    args = (root, "nmn-typed", 4, 3, CPU, [f"data.source='{typed.data}'", "train.max_epochs=2", "train.device='cpu'",
                                           "trust.criterion='variance'", "trust.variance_threshold=1.0"])
    trained = []
    real = correlation_module.train_module

    def counting(workdir, recipe, name, device, data=None):
        if name == "find" and sum(n == "find" for _, n in trained) == 2 and not resumed:
            raise KeyboardInterrupt
        trained.append((workdir.root.name, name))
        return real(workdir, recipe, name, device, data)

    resumed = False
    correlation_module.train_module = pipeline_module.train_module = counting  # candidates; the base
    try:
        with pytest.raises(KeyboardInterrupt):
            run_correlation(*args, max_epochs=2, say=lambda m: None, nulls=1)
        first = list(trained)
        resumed = True
        report = run_correlation(*args, max_epochs=2, say=lambda m: None, nulls=1)
    finally:
        correlation_module.train_module = pipeline_module.train_module = real
    return root, report, first, trained[len(first):]


@pytest.mark.slow
def test_interrupted_report_resumes_without_retraining(interrupted_then_resumed):
    _, _, first, second = interrupted_then_resumed
    assert first == [("base", "encoder"), ("find-000", "find"), ("find-001", "find")]
    assert second == [("find-002", "find"), ("find-003", "find"), ("find-null-004", "find")]


@pytest.mark.slow
def test_report_holds_k_finite_pairs_and_both_figures(interrupted_then_resumed):
    root, report, _, _ = interrupted_then_resumed
    picked = [c for c in report["candidates"] if c["selected"]]
    assert len(picked) == 3
    for c in picked:
        assert all(math.isfinite(c[k])
                   for k in ("surrogate_loss", "final_loss", "surrogate_accuracy", "final_accuracy"))
    assert report["loss"]["n"] == 3 and math.isfinite(report["loss"]["pearson_r"])
    saved = json.loads((root / "reports" / "correlation.json").read_text())
    assert json.dumps(saved["loss"]) == json.dumps(report["loss"])  # NaN where r is undefined (n = 3 less 2)
    rows = list(csv.DictReader(io.StringIO((root / "reports" / "correlation.csv").read_text())))
    assert len(rows) == 5 and sum(r["selected"] == "True" for r in rows) == 3 and rows[4]["null"] == "True"
    # the null module (lr 1e-7, one epoch) is transplanted: its final loss is the plateau
    null = report["candidates"][4]
    assert null["lr"] == 1e-7 and null["epochs"] == 1 and report["plateau"] == pytest.approx(null["final_loss"])
    assert report["good_below"] == pytest.approx(0.95 * report["plateau"])
    for c in report["candidates"][:4]:
        assert all(k in c for k in ("gain", "gain_low", "gain_high", "variance", "mutual_information", "kept_gain"))
        assert c["kept_variance"] is True  # a threshold of 1 keeps every finite variance
        if "final_loss" in c:
            assert c["good"] == (c["final_loss"] < report["good_below"])
    assert set(report["criteria"]) == {"gain", "variance", "mutual_information", "surrogate_loss"}
    for name in ("correlation_variance.png", "correlation_loss.png"):
        with Image.open(root / "reports" / name) as image:
            assert image.size[0] > 300
    assert "Pearson r" in (root / "reports" / "correlation.md").read_text()


def test_bad_arguments():
    with pytest.raises(ModtrainError, match="need 2 ≤ select ≤ modules"):
        run_correlation("/tmp/unused", "nmn-typed", 3, 5, CPU)
    with pytest.raises(ModtrainError, match="trains find without a surrogate"):
        run_correlation("/tmp/unused", "e2e", 4, 3, CPU)


@pytest.mark.slow
def test_surrogate_and_final_losses_correlate_when_the_finds_differ(tiny_run, tmp_path, monkeypatch):
    """Finds of clearly different quality (the same settings, 1 to 10 epochs): the report must find
    that the better surrogate loss goes with the better final loss. With random draws on this tiny
    data the finds barely differ and the correlation is noise; bench/bench_correlation.py measures
    the paper's claim on the default data."""
    _, typed, _, _ = tiny_run
    ladder = [1, 3, 10]

    def draw(seed, index, max_epochs=20):
        return {"batch_size": 64, "lr": 0.01, "weight_decay": 0.0, "dropout": 0.0, "epochs": ladder[index % 3],
                "surrogate_rank": 16}

    monkeypatch.setattr(correlation_module, "draw_hyperparameters", draw)
    report = run_correlation(tmp_path / "correlation", "nmn-typed", 3, 2, CPU,
                             [f"data.source='{typed.data}'", "train.max_epochs=6", "train.device='cpu'"],
                             max_epochs=10, say=lambda m: None, transplant="all", nulls=1)
    moved = report["loss_transplanted"]
    assert moved["n"] == 3 and moved["pearson_r"] > 0  # every candidate transplanted
    gain = report["criteria"]["gain"]
    assert gain["kept"] + gain["discarded"] == 3 and gain["kept"] == sum(c["kept_gain"] for c in report["candidates"])
    assert gain["good"] + gain["bad"] == 3

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
from modtrain.reports.correlation import draw_hyperparameters, run_correlation, select_spread

CPU = torch.device("cpu")


def test_selection_drops_high_variance_and_spreads_over_the_loss_range():
    losses = [0.10, 0.12, 0.50, 0.52, 0.90, 0.95, 0.30, 0.70]
    variances = [0.001, 0.0005, 0.002, 0.0001, 0.0002, 0.0003, 0.01, 0.02]
    selected, discarded = select_spread(losses, variances, k=3, threshold=0.0025)
    assert discarded == [6, 7]
    # bins over [0.10, 0.95]: one per bin, the lowest variance in it
    assert selected == [1, 3, 4]


def test_selection_fills_an_empty_bin_with_the_module_nearest_its_centre():
    losses = [0.0, 0.05, 0.1, 0.95, 1.0]
    variances = [0.001, 0.002, 0.0005, 0.001, 0.002]
    selected, _ = select_spread(losses, variances, k=3, threshold=0.0025)
    # bins [0, 1/3): 2 (lowest variance); [1/3, 2/3): empty; [2/3, 1]: 3. The empty bin's centre
    # 0.5 takes the nearest unpicked module: 0.05 (index 1), nearer than 0.0 and 1.0.
    assert selected == [1, 2, 3]


def test_selection_with_fewer_trustworthy_modules_than_asked():
    selected, discarded = select_spread([0.3, 0.1, float("nan"), 0.2], [0.001, 0.001, 0.001, 0.9], k=3, threshold=0.0025)
    assert selected == [1, 0] and discarded == [2, 3]


def test_every_candidate_draws_from_its_own_generator():
    np.random.seed(123)
    first = [draw_hyperparameters(7, i) for i in range(20)]
    np.random.seed(456)  # the global RNG plays no part
    assert [draw_hyperparameters(7, i) for i in range(20)] == first
    assert len({json.dumps(h, sort_keys=True) for h in first}) == 20
    for h in first:
        assert 16 <= h["batch_size"] <= 512 and 1e-5 <= h["lr"] <= 1e-1
        assert 1e-10 <= h["weight_decay"] <= 1 and 0 <= h["dropout"] <= 0.9 and 1 <= h["epochs"] <= 20
        assert 0.003 <= h["surrogate_dropout"] <= 0.3 and h["surrogate_rank"] in (4, 8, 16, 32, 64)
    assert draw_hyperparameters(8, 0) != first[0]


@pytest.fixture(scope="module")
def interrupted_then_resumed(tiny_run, tmp_path_factory):
    """A report interrupted at its third candidate, then run again to the end."""
    _, typed, _, _ = tiny_run
    root = tmp_path_factory.mktemp("correlation")
    args = (root, "nmn-typed", 4, 3, CPU, [f"data.source='{typed.data}'", "train.max_epochs=2", "train.device='cpu'"])
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
            run_correlation(*args, max_epochs=2, say=lambda m: None)
        first = list(trained)
        resumed = True
        report = run_correlation(*args, max_epochs=2, say=lambda m: None)
    finally:
        correlation_module.train_module = pipeline_module.train_module = real
    return root, report, first, trained[len(first):]


@pytest.mark.slow
def test_interrupted_report_resumes_without_retraining(interrupted_then_resumed):
    _, _, first, second = interrupted_then_resumed
    assert first == [("base", "encoder"), ("find-000", "find"), ("find-001", "find")]
    assert second == [("find-002", "find"), ("find-003", "find")]


@pytest.mark.slow
def test_report_holds_k_finite_pairs_and_both_figures(interrupted_then_resumed):
    root, report, _, _ = interrupted_then_resumed
    picked = [c for c in report["candidates"] if c["selected"]]
    assert len(picked) == 3
    for c in picked:
        assert all(math.isfinite(c[k]) for k in ("surrogate_loss", "final_loss", "surrogate_accuracy", "final_accuracy"))
    assert report["loss"]["n"] == 3 and math.isfinite(report["loss"]["pearson_r"])
    saved = json.loads((root / "reports" / "correlation.json").read_text())
    assert saved["loss"] == report["loss"]
    rows = list(csv.DictReader(io.StringIO((root / "reports" / "correlation.csv").read_text())))
    assert len(rows) == 4 and sum(r["selected"] == "True" for r in rows) == 3
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
    """Finds of clearly different quality (the same settings, 1 to 12 epochs): the report must find
    that the better surrogate loss goes with the better final loss. With random draws on this tiny
    data the finds barely differ and the correlation is noise; bench/bench_correlation.py measures
    the paper's claim on the default data."""
    _, typed, _, _ = tiny_run
    ladder = [1, 2, 3, 5, 8, 12]

    def draw(seed, index, max_epochs=20):
        return {"batch_size": 64, "lr": 0.01, "weight_decay": 0.0, "dropout": 0.0, "epochs": ladder[index],
                "surrogate_dropout": 0.03, "surrogate_rank": 16}

    monkeypatch.setattr(correlation_module, "draw_hyperparameters", draw)
    report = run_correlation(tmp_path / "correlation", "nmn-typed", 6, 5, CPU,
                             [f"data.source='{typed.data}'", "train.max_epochs=10", "train.device='cpu'"],
                             max_epochs=12, say=lambda m: None)
    assert report["loss"]["n"] >= 4 and report["loss"]["pearson_r"] > 0
    check = report["threshold_check"]
    assert check["candidates"] == 6 and check["discarded"] == sum(c["discarded"] for c in report["candidates"])
    # the discarded are transplanted too, so that their final losses can be compared with the kept ones'
    assert check["discarded_finals"]["transplanted"] == sum(
        c["discarded"] and math.isfinite(c["surrogate_loss"]) for c in report["candidates"])
    assert check["calibrated_threshold"] >= check["variance_quartiles"][1]

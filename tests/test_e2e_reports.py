"""End-to-end baseline, the compare report and explain, on the tiny dataset."""
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from modtrain.card import load_module
from modtrain.errors import ModtrainError
from modtrain.layout import parse_layout
from modtrain.pipeline import run_end_to_end
from modtrain.recipe import Recipe
from modtrain.reports.compare import run_compare
from modtrain.reports.explain import explain, tree_text
from modtrain.workdir import Workdir

pytestmark = pytest.mark.slow  # trains on tiny data: 'pytest -m "not slow"' skips it

CPU = torch.device("cpu")
# two epochs: these tests check what the reports hold and how they are made, not what training reaches
FAST = ["train.max_epochs=2", "train.patience=2", "train.device='cpu'"]


def test_end_to_end_trains_every_module_and_assembles(tiny_run, tiny_overrides, tmp_path):
    _, typed, _, _ = tiny_run
    recipe = Recipe.load("e2e", [*tiny_overrides, f"data.source='{typed.data}'"])
    workdir = Workdir.for_recipe(recipe, tmp_path / "e2e")
    messages = []
    report = run_end_to_end(recipe, workdir, CPU, say=messages.append)
    cards = {name: json.loads((workdir.modules / f"{name}.json").read_text()) for name in recipe.modules}
    assert {c["training"] for c in cards.values()} == {"end-to-end"}
    assert len({c["job_key"] for c in cards.values()}) == 1
    assert cards["find"]["signature"]["output"] == "Heatmap"  # the e2e recipe is the gradient NMN
    for name in recipe.modules:
        load_module(workdir.modules, name)  # ordinary cards: the assembler loads them like modular ones
    val = report["splits"]["val"]
    assert val["accuracy"] > val["encoder_accuracy"], val
    assert json.loads((workdir.reports / "jobs.json").read_text())["train e2e"] > 0
    again = []
    run_end_to_end(recipe, workdir, CPU, say=again.append)
    assert "train e2e: up to date" in again


@pytest.fixture(scope="module")
def compared(tiny_run, tmp_path_factory):
    _, typed, _, _ = tiny_run
    root = tmp_path_factory.mktemp("compare")
    return root, run_compare(root, 2, CPU, FAST, data_dir=typed.data, say=lambda m: None)


def test_compare_report_has_every_cell_and_the_plot(compared):
    root, summary = compared
    assert list(summary["versions"]) == ["end-to-end", "modular", "modular + data types"]
    for label, version in summary["versions"].items():
        assert version["seeds"] == [0, 1]
        assert all(math.isfinite(x) for x in (version["accuracy"]["mean"], version["accuracy"]["std"]))
        assert set(version["by_type"]) == {"exist", "count", "query-attribute"}
        assert all(math.isfinite(s["mean"]) and math.isfinite(s["std"]) for s in version["by_type"].values())
        assert version["total_seconds"]["training"] > 0
    assert "train e2e" in summary["versions"]["end-to-end"]["seconds"]
    assert "cache encoder" in summary["versions"]["modular + data types"]["seconds"]
    assert "cache encoder" not in summary["versions"]["modular"]["seconds"]  # §5.4: no prior while training
    e2e = summary["versions"]["end-to-end"]
    for label, fractions in summary["retraining_vs_end_to_end"].items():
        version = summary["versions"][label]
        # each time is the mean over seeds of what the runs recorded, each fraction that over one e2e training
        for job, seconds in version["seconds"].items():
            recorded = [json.loads((Path(w) / "reports" / "jobs.json").read_text())[job] for w in version["workdirs"]]
            assert seconds == pytest.approx(sum(recorded) / len(recorded))
        for module in ("encoder", "find", "describe", "measure"):
            assert fractions[f"{module} alone"] == pytest.approx(version["seconds"][f"train {module}"]
                                                                 / e2e["total_seconds"]["training"])
        assert fractions["find, then its cache and what reads it (describe, measure)"] == pytest.approx(sum(
            version["seconds"].get(job, 0.0) for job in ("train find", "cache find", "train describe", "train measure"))
            / e2e["total_seconds"]["training"])
    markdown = (root / "reports" / "compare.md").read_text()
    assert "| modular + data types |" in markdown and "nan" not in markdown
    with Image.open(root / "reports" / "compare_time.png") as image:
        assert image.size == (800, 450)
    assert json.loads((root / "reports" / "compare.json").read_text())["split"] == "test"


def test_compare_reuses_trained_runs(compared, tiny_run):
    root, summary = compared
    _, typed, _, _ = tiny_run
    mtimes = {p: p.stat().st_mtime_ns for p in root.glob("*/seed*/modules/*.pt")}
    again = run_compare(root, 2, CPU, FAST, data_dir=typed.data, say=lambda m: None)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert again["versions"]["modular"]["accuracy"] == summary["versions"]["modular"]["accuracy"]


def test_compare_refuses_runs_on_other_data(compared, tiny_run):
    root, _ = compared
    _, typed, _, _ = tiny_run
    card_path = root / "modular" / "seed0" / "modules" / "measure.json"
    text = card_path.read_text()
    card = json.loads(text)
    card["data_fingerprint"] = "f" * 64
    card_path.write_text(json.dumps(card))
    try:
        with pytest.raises(ModtrainError, match=r"cannot compare: .*measure.json was trained on another dataset"):
            run_compare(root, 2, CPU, FAST, data_dir=typed.data, say=lambda m: None)
    finally:  # the module's other tests use these runs, in whatever order they run
        card_path.write_text(text)


def test_compare_fresh_retrains_instead_of_reusing(compared, tiny_run):
    root, _ = compared
    _, typed, _, _ = tiny_run
    card_path = root / "modular" / "seed0" / "modules" / "measure.json"
    card = json.loads(card_path.read_text())
    card["data_fingerprint"] = "f" * 64  # a run a plain rerun refuses (the test above)
    card_path.write_text(json.dumps(card))
    before = (root / "modular" / "seed0" / "modules" / "measure.pt").stat().st_mtime_ns
    summary = run_compare(root, 1, CPU, FAST, data_dir=typed.data, say=lambda m: None, fresh=True)
    assert summary["versions"]["modular"]["seeds"] == [0]
    assert json.loads(card_path.read_text())["data_fingerprint"] == summary["dataset"]["data_fingerprint"]
    assert (root / "modular" / "seed0" / "modules" / "measure.pt").stat().st_mtime_ns != before


def test_compare_adds_other_end_to_end_systems_under_the_same_protocol(compared, tiny_run):
    """--system adds FiLM (or Stack-NMN, LNMN) beside the three versions: same data, seeds and
    [train] table, trained end to end, evaluated by the assembler, never in the retraining table."""
    root, _ = compared
    _, typed, _, _ = tiny_run
    with pytest.raises(ModtrainError, match="unknown system\\(s\\) 'MAC'; valid: FiLM, Stack-NMN \\(ground truth\\)"):
        run_compare(root, 1, CPU, FAST, data_dir=typed.data, say=lambda m: None, systems=["MAC"])
    summary = run_compare(root, 1, CPU, FAST, data_dir=typed.data, say=lambda m: None,
                          systems=["FiLM", "end-to-end + data types"])
    assert list(summary["versions"]) == ["end-to-end", "modular", "modular + data types", "end-to-end + data types",
                                         "FiLM"]
    typed_e2e = summary["versions"]["end-to-end + data types"]
    assert typed_e2e["how"] == "end-to-end" and list(typed_e2e["seconds"]) == ["train e2e"]
    assert json.loads((Path(typed_e2e["workdirs"][0]) / "modules" / "find.json").read_text())["interface"] == "typed"
    film = summary["versions"]["FiLM"]
    assert film["how"] == "end-to-end" and film["seeds"] == [0] and list(film["seconds"]) == ["train e2e"]
    assert film["train"]["film"] == summary["versions"]["end-to-end"]["train"]["encoder"]  # one [train] table
    card = json.loads((Path(film["workdirs"][0]) / "modules" / "film.json").read_text())
    assert card["data_fingerprint"] == summary["dataset"]["data_fingerprint"]
    report = json.loads((Path(film["workdirs"][0]) / "reports" / "assemble.json").read_text())
    assert film["accuracy"]["mean"] == report["splits"]["test"]["accuracy"]
    assert "FiLM" not in summary["retraining_vs_end_to_end"]
    assert "| FiLM |" in (root / "reports" / "compare.md").read_text()


def test_explain_writes_one_png_per_question(tiny_run):
    recipe, workdir, _, _ = tiny_run
    paths = explain(workdir, recipe, CPU, [0, 3, 7], "val")
    assert [p.name for p in paths] == ["val_0.png", "val_3.png", "val_7.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.size == (1400, 900)
    with pytest.raises(ModtrainError, match="question 99999 is not in split 'val'"):
        explain(workdir, recipe, CPU, [99999], "val")


def test_tree_text():
    assert tree_text(parse_layout("describe[color](and(find[red],or(find[a],find[b])))")) == [
        "describe[color]", "└─ and", "   ├─ find[red]", "   └─ or", "      ├─ find[a]", "      └─ find[b]"]


def test_explain_draws_what_relate_reads_and_gives(clevr_run):
    from modtrain.assemble import load_assembly
    from modtrain.data import PreparedData
    from modtrain.reports.explain import attention_panels

    recipe, workdir, _, _ = clevr_run
    data = PreparedData(workdir.data)
    split = data.split("val")
    row = next(i for i in range(len(split)) if "relate[" in data.layouts[split.layout[i]].text)
    layout = data.layouts[split.layout[row]]
    _, executor, _ = load_assembly(workdir, recipe, CPU)
    features = torch.from_numpy(split.features().take([split.image_index[row]])).float()
    with torch.no_grad():
        panels = attention_panels(executor.trace(layout, features), executor.interface.attention)
    def label(node):
        return node.module if node.instance is None else f"{node.module}[{node.instance}]"

    reads = {f"{label(n)} reads {label(n.children[0])}": f"{label(n)} gives"
             for n in layout.nodes() if n.module == "relate"}
    titles = [t for t, _ in panels]
    assert titles[0] in reads and titles[1] == reads[titles[0]]  # a relate's input next to its output
    assert all(m.shape == (8, 8) for _, m in panels)
    (path,) = explain(workdir, recipe, CPU, [int(split.question_index[row])], "val")
    with Image.open(path) as image:
        assert image.size == (1400, 900)


def test_every_version_trains_on_one_shared_set_of_defaults(compared):
    root, summary = compared
    assert summary["protocol"] == {"name": "shared defaults", "trials_per_module": 0}
    settings = {json.dumps(train, sort_keys=True)
                for v in summary["versions"].values() for train in v["train"].values()}
    assert len(settings) == 1  # every module of every version, and end to end: the one [train] table
    for version in summary["versions"].values():
        for epochs in version["epochs"].values():
            assert all(1 <= e["best_epoch"] <= e["epochs"] for e in epochs.values())
    assert "Protocol: shared defaults" in (root / "reports" / "compare.md").read_text()


@pytest.mark.slow
def test_tuned_protocol_searches_every_version_with_the_same_budget(ray_local, tiny_run, tmp_path):
    _, typed, _, _ = tiny_run
    root = tmp_path / "tuned"
    # one two-epoch trial a module: the protocol is what is tested (every version searched with the
    # same budget, its seeds trained with what the search chose), not what the trials reach; batches
    # of 128 to 512 (the recipe searches from 16, ten times the steps an epoch on this data)
    batches = [f"search.{m}.batch_size='lograndint(128, 512)'" for m in ("encoder", "find", "describe", "measure",
                                                                        "e2e")]
    summary = run_compare(root, 1, CPU, ["train.max_epochs=2", "train.patience=2", "train.device='cpu'", *batches],
                          data_dir=typed.data, say=lambda m: None, tune=1)
    protocol = summary["protocol"]
    assert protocol["name"] == "tuned" and protocol["trials_per_module"] == 1
    assert set(protocol["search_trial_seconds"]["end-to-end"]) == {"e2e"}
    for label in ("modular", "modular + data types"):
        assert set(protocol["search_trial_seconds"][label]) == {"encoder", "find", "describe", "measure"}
        for module in ("find", "describe"):  # the seeds trained with the best trial's configuration
            search = json.loads((root / label.replace(" + ", "-").replace(" ", "-") / "search" / "tune" / module
                                 / "trials.json").read_text())
            assert len(search["trials"]) == 1
            assert summary["versions"][label]["train"][module]["lr"] == pytest.approx(search["best"]["config"]["lr"])
    assert "Protocol: tuned" in (root / "reports" / "compare.md").read_text()

"""Jobs derived from the plan: wiring, virtual datasets at the edges, every CLEVR program on tiny data."""
import json
import shutil

import h5py
import pytest
import torch
from modtrain.modules.describe import Describe

from modtrain.cache import EdgeCache, cached_edges, parametric_modules
from modtrain.card import load_card, load_module, save_module
from modtrain.data import PreparedData
from modtrain.errors import ModtrainError
from modtrain.io import sha256_json
from modtrain.job import Job, JobSpec, Wirer, joint_spec, module_spec, train_module, training_questions
from modtrain.layout import parse_layout
from modtrain.pipeline import run_pipeline
from modtrain.plan import make_plan
from modtrain.recipe import Recipe
from modtrain.registry import MODULES, register_module
from modtrain.types import get_interface
from modtrain.workdir import Workdir

CPU = torch.device("cpu")
RELATE_COUNT = "measure[count](and(find[a],relate[left](find[b])))"
COMPARE = "compare[equal_color](describe[color](find[a]),describe[color](and(find[b],find[c])))"
CHAIN = "describe[size](relate[left](relate[same_color](find[a])))"


def _plan(name="nmn-clevr"):
    return make_plan(Recipe.load(name))


def test_cached_edges_are_where_later_modules_read_a_frozen_subtree():
    plan = _plan()
    layout = parse_layout(RELATE_COUNT)  # pre-order: 0 measure, 1 and, 2 find[a], 3 relate, 4 find[b]
    assert [(i, str(t)) for i, t in cached_edges(layout, plan, "find")] == [(2, "find[a]"), (4, "find[b]")]
    assert [(i, str(t)) for i, t in cached_edges(layout, plan, "relate")] == [
        (1, "and(find[a],relate[left](find[b]))")]
    compare = parse_layout(COMPARE)  # 0 compare, 1 describe, 2 find[a], 3 describe, 4 and, 5 find[b], 6 find[c]
    assert [i for i, _ in cached_edges(compare, plan, "find")] == [2, 4]
    assert [i for i, _ in cached_edges(compare, plan, "describe")] == [1, 3]
    assert cached_edges(compare, plan, "measure") == []
    # a module the recipe lacks: nobody trains on the question, nothing is cached for it
    assert cached_edges(parse_layout(RELATE_COUNT), _plan("nmn-typed"), "find") == []


def _wirer(plan, module):
    return Wirer(module_spec(plan, module), plan, get_interface(plan.interface))


def test_each_module_runs_its_layouts_with_frozen_parts_given():
    plan = _plan()
    relate_count, compare, chain = parse_layout(RELATE_COUNT), parse_layout(COMPARE), parse_layout(CHAIN)
    # find: only layouts whose root reads it through and/or
    assert _wirer(plan, "find").wire(relate_count) is None and _wirer(plan, "find").wire(compare) is None
    find = _wirer(plan, "find").wire(parse_layout("measure[exist](and(find[a],find[b]))"))
    assert str(find.layout) == "and(find[a],find[b])" and find.root == "measure[exist]" and find.cuts == []
    # relate: through a surrogate at the root; find, frozen, from its cache
    relate = _wirer(plan, "relate").wire(relate_count)
    assert str(relate.layout) == "and(given:Mask[0],relate[left](given:Mask[1]))" and relate.root == "measure[count]"
    assert [(c.node, c.owner, c.column) for c in relate.cuts] == [(2, "find", "value"), (4, "find", "value")]
    assert str(_wirer(plan, "relate").wire(chain).layout) == "relate[left](relate[same_color](given:Mask[0]))"
    # with find recomputed from the features instead, find stays in the layout
    recomputing = Wirer(JobSpec(**{**module_spec(plan, "relate").__dict__, "recompute": ("find",)}), plan,
                        get_interface("typed")).wire(relate_count)
    assert str(recomputing.layout) == "and(find[a],relate[left](find[b]))" and recomputing.cuts == []
    # describe: the whole frozen subtree under it, as its attended vector from relate's cache
    describe = _wirer(plan, "describe").wire(chain)
    assert str(describe.layout) == "describe[size](given:Attended[0])"
    assert [(c.node, c.owner, c.column) for c in describe.cuts] == [(1, "relate", "attended")]
    # compare: both answers from describe's cache
    wired = _wirer(plan, "compare").wire(compare)
    assert str(wired.layout) == "compare[equal_color](given:AnswerLogits[0],given:AnswerLogits[1])"
    assert [(c.node, c.owner) for c in wired.cuts] == [(1, "describe"), (3, "describe")]
    # end to end around a frozen find: find's subtrees are given, everything else trains
    joint = Wirer(joint_spec(plan, "final", ("find",)), plan, get_interface("typed")).wire(relate_count)
    assert str(joint.layout) == "measure[count](and(given:Mask[0],relate[left](given:Mask[1])))"


@pytest.mark.slow
def test_all_family_pipeline_beats_the_prior_and_skips_nothing(clevr_run):
    recipe, _, report, messages = clevr_run
    assert [m for m in messages if m.endswith("...")] == [
        "train encoder ...", "cache encoder ...", "train find ...", "cache find ...", "train relate ...",
        "cache relate ...", "train describe ...", "train measure ...", "cache describe ...", "cache measure ...",
        "train compare ...", "assemble ..."]
    for split in ("val", "test"):
        s = report["splits"][split]
        assert s["skipped"] == {} and s["without_layout"] == 0
        assert set(s["by_type"]) == {"exist", "count", "compare-integer", "query-attribute", "compare-attribute"}
        assert s["accuracy"] > s["encoder_accuracy"] + 0.05, s


@pytest.mark.slow
def test_plan_counts_the_questions_each_module_trains_on(clevr_run):
    recipe, workdir, _, _ = clevr_run
    data = PreparedData(workdir.data)
    counts = training_questions(make_plan(recipe), recipe, data)
    split = data.split("train")
    layouts = [data.layouts[i] for i in split.layout]
    assert counts["encoder"] == len(split)
    # the rule, written out for this NMN: find under and/or only; relate where no compare is; ...
    below = [parametric_modules(lay.children[0]) if len(lay.children) == 1 else None for lay in layouts]
    assert counts["find"] == sum(b is not None and b == {"find"} for b in below)
    assert counts["relate"] == sum(b is not None and "relate" in b and b <= {"find", "relate"} for b in below)
    assert counts["describe"] == sum(lay.module == "describe" for lay in layouts)
    assert counts["compare"] == sum(lay.module == "compare" for lay in layouts) > 0
    cards = {m: load_card(workdir.modules, m) for m in recipe.modules}
    assert {m: c["metrics"]["train_questions"] for m, c in cards.items()} == counts
    assert set(cards["compare"]["inputs"]) == {"encoder", "find", "relate", "describe", "measure"}
    assert set(cards["relate"]["inputs"]) == {"encoder", "find"}


@pytest.fixture
def copied_clevr(clevr_run, tmp_path):
    recipe, workdir, _, _ = clevr_run
    root = tmp_path / "run"
    shutil.copytree(workdir.root, root, ignore=shutil.ignore_patterns("data"))
    return recipe, Workdir(root, workdir.data)


@pytest.mark.slow
def test_stale_relate_cache_is_refused(copied_clevr):
    recipe, workdir = copied_clevr
    relate, card = load_module(workdir.modules, "relate")
    with torch.no_grad():
        relate.w2.add_(0.01)
    save_module(workdir.modules, relate, {k: v for k, v in card.items() if k != "weights_sha256"})
    split = PreparedData(workdir.data).split("train")
    with pytest.raises(ModtrainError, match=r"stale cache .*caches/relate/train.h5: written by relate \w+, but "
                                            r".*relate.pt is now \w+; run 'modtrain cache relate'"):
        EdgeCache(workdir, make_plan(recipe), "relate", "train", split.fingerprint)
    with pytest.raises(ModtrainError, match=r"stale cache .*caches/relate/train.h5.*run 'modtrain cache relate'"):
        train_module(workdir, recipe, "measure", CPU)
    # describe's cache was computed with the old relate: stale too, naming relate
    with pytest.raises(ModtrainError, match=r"stale cache .*caches/describe/train.h5: computed with relate"):
        EdgeCache(workdir, make_plan(recipe), "describe", "train", split.fingerprint)


@pytest.mark.slow
def test_recomputing_find_equals_reading_its_cache(copied_clevr):
    recipe, workdir = copied_clevr
    recipe = recipe.with_overrides(["modules.relate.max_epochs=2"])
    plan = make_plan(recipe)
    cached_spec = module_spec(plan, "relate")
    assert cached_spec.recompute == ()  # the plan reads find's cache: measured faster (bench_clevr)
    spec = JobSpec(**{**cached_spec.__dict__, "recompute": ("find",)})
    cached = Job(workdir, recipe, CPU, cached_spec, plan=plan).run()["metrics"]
    shutil.rmtree(workdir.caches / "find")  # recomputing needs no cache of find
    recomputing = Job(workdir, recipe, CPU, spec, plan=plan)
    recomputed = recomputing.run()["metrics"]
    assert recomputing.needs_features and recomputed["epochs"] == 2
    for key in ("val_loss", "val_accuracy", "train_loss"):
        assert recomputed[key] == pytest.approx(cached[key], rel=1e-5)
    with pytest.raises(ModtrainError, match=r"caches/find/train.h5 not found; run 'modtrain cache find'"):
        Job(workdir, recipe, CPU, cached_spec, plan=plan).run()


class DescribeCopy(Describe):
    """describe under another name, registered only here."""


def _rename_module(source, target, old: str, new: str):
    """A copy of a prepared data folder whose layouts call module ``old`` ``new``."""
    shutil.copytree(source, target)
    vocab = json.loads((target / "vocab.json").read_text())
    vocab["layouts"] = [text.replace(f"{old}[", f"{new}[") for text in vocab["layouts"]]
    vocab["instances"][new] = vocab["instances"].pop(old)
    (target / "vocab.json").write_text(json.dumps(vocab))
    for path in target.glob("*.h5"):
        with h5py.File(path, "a") as f:
            f.attrs["vocab_sha256"] = sha256_json(vocab)
            f.attrs["data_fingerprint"] = sha256_json([sha256_json(vocab), f.attrs["questions_sha256"]])


@pytest.mark.slow
def test_a_module_registered_only_here_trains_caches_and_assembles(tiny_run, tiny_overrides, tmp_path):
    typed_recipe, typed, typed_report, _ = tiny_run
    register_module("describe_copy")(DescribeCopy)
    try:
        data = tmp_path / "data"
        _rename_module(typed.data, data, "describe", "describe_copy")
        raw = Recipe.load("nmn-typed", [*tiny_overrides, f"data.source='{data}'"]).raw
        raw["modules"] = {("describe_copy" if k == "describe" else k): v for k, v in raw["modules"].items()}
        raw["search"]["describe_copy"] = raw["search"].pop("describe")
        recipe = Recipe(raw, "test recipe")
        workdir = Workdir.for_recipe(recipe, tmp_path / "run")
        report = run_pipeline(recipe, workdir, CPU, say=lambda m: None)
        copy_card = load_card(workdir.modules, "describe_copy")
        assert copy_card["class"].endswith("DescribeCopy") and set(copy_card["inputs"]) == {"encoder", "find"}
        # the same code on the same questions: the same weights, the same answers
        assert copy_card["weights_sha256"] == load_card(typed.modules, "describe")["weights_sha256"]
        assert report["splits"]["val"]["accuracy"] == typed_report["splits"]["val"]["accuracy"]
        assert report["splits"]["val"]["skipped"] == {}
    finally:
        MODULES.pop("describe_copy", None)

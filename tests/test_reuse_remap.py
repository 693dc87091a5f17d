"""Module packages, fast part: which axis holds which vocabulary, and weights laid out in another
experiment's words (modtrain.reuse). The CLI's export and import are in test_reuse.py."""
from __future__ import annotations

import pytest
import torch

from modtrain.errors import ModtrainError
from modtrain.registry import MODULES, build_module, load_entries
from modtrain.reuse import remap_state, restore_frozen, vocabulary_axes

DIMS = {"features": 6, "height": 3, "width": 3, "answers": 5, "tokens": 7}
TOKENS = ["<NULL>", "<UNK>", "red", "cube", "what", "is", "the"]
ANSWERS = ["<UNK>", "yes", "no", "red", "cube"]


def trainable_names() -> list[str]:
    load_entries()
    return sorted(n for n, c in MODULES.items() if not c.parameter_free)


def build(name: str, instances: list[str], dims=DIMS, seed: int = 0, **hparams):
    torch.manual_seed(seed)
    has = MODULES[name].has_instances
    return build_module(name, "typed", dims, instances if has else [], **hparams)


def test_axes_of_the_hand_written_modules():
    assert vocabulary_axes("describe", "typed", DIMS, ["color", "shape"], {}) == {
        "weight": {0: ("instances", 1), 1: ("answers", 1)}, "bias": {0: ("instances", 1), 1: ("answers", 1)}}
    compare = vocabulary_axes("compare", "typed", DIMS, ["equal_color"], build("compare", ["a"]).hparams)
    assert compare["w1"] == {0: ("instances", 1), 1: ("answers", 3)}  # [left; right; left⊙right]
    assert compare["left"] == {0: ("instances", 1), 1: ("answers", 1)}
    assert vocabulary_axes("encoder", "typed", DIMS, [], build("encoder", []).hparams) == {
        "embed.weight": {0: ("tokens", 1)}, "classify.weight": {0: ("answers", 1)},
        "classify.bias": {0: ("answers", 1)}}


@pytest.mark.parametrize("name", trainable_names())
def test_every_module_maps_onto_a_shuffled_vocabulary_and_back(name):
    """Remapping to a permutation of every vocabulary and back gives the weights back exactly, and
    every entry moved (so no axis that holds a vocabulary went unnoticed)."""
    instances = ["a", "b", "c"]
    module = build(name, instances)
    with torch.no_grad():  # no entry equal to another by construction (zero biases would hide a missed axis)
        for value in module.state_dict().values():
            if value.is_floating_point():
                value.uniform_(0.5, 1.5)
    hparams = module.hparams
    axes = vocabulary_axes(name, "typed", DIMS, instances if module.has_instances else [], hparams)
    home = {"tokens": TOKENS, "answers": ANSWERS, "instances": instances}
    shuffled = {"tokens": TOKENS[::-1], "answers": ANSWERS[::-1], "instances": instances[::-1]}
    there = build(name, shuffled["instances"], seed=1, **hparams).state_dict()
    moved, new = remap_state(module.state_dict(), there, axes, home, shuffled)
    assert not any(m.any() for m in new.values())  # every instance known: nothing new
    back, _ = remap_state(moved, module.state_dict(), axes, shuffled, home)
    for key, value in module.state_dict().items():
        assert torch.equal(back[key], value), key
        if key in axes and value.numel() > 1:
            assert not torch.equal(moved[key], value), f"{key} holds a vocabulary but did not move"


def test_describe_remapped_to_other_words_answers_the_same_questions():
    """describe[color] at home and describe in a workdir whose answers and instances come in
    another order (and with words home never saw) give the same logits for the same answers."""
    home_instances, here_instances = ["shape", "color"], ["color", "size", "shape"]
    home_answers, here_answers = ["<UNK>", "red", "cube", "yes"], ["<UNK>", "yes", "big", "cube", "red"]
    dims_home = {**DIMS, "answers": len(home_answers)}
    dims_here = {**DIMS, "answers": len(here_answers)}
    module = build("describe", home_instances, dims_home)
    with torch.no_grad():
        module.bias.normal_()
    target = build("describe", here_instances, dims_here, seed=3)
    axes = vocabulary_axes("describe", "typed", dims_home, home_instances, module.hparams)
    state, new = remap_state(module.state_dict(), target.state_dict(), axes,
                             {"answers": home_answers, "instances": home_instances, "tokens": TOKENS},
                             {"answers": here_answers, "instances": here_instances, "tokens": TOKENS})
    target.load_state_dict(state)
    features = torch.rand(4, 6, 3, 3)
    attention = torch.rand(4, 3, 3)
    attended = (features * attention[:, None]).sum((2, 3)) / attention.sum((1, 2))[:, None]
    for word in ("color", "shape"):
        at_home = module(attended, torch.full((4,), home_instances.index(word)))
        here = target(attended, torch.full((4,), here_instances.index(word)))
        for answer in ("red", "cube", "yes", "<UNK>"):
            assert torch.allclose(here[:, here_answers.index(answer)], at_home[:, home_answers.index(answer)])
        assert torch.all(here[:, here_answers.index("big")] == 0)  # an answer home never saw: no say
    # size is new: its rows are the target's own start, and only they are marked new
    assert torch.equal(state["weight"][1], target.state_dict()["weight"][1])
    assert new["weight"][1].all() and not new["weight"][[0, 2]].any()


def test_an_unknown_question_word_reads_as_the_home_unk():
    module = build("encoder", [])
    here_tokens = ["<NULL>", "<UNK>", "sphere", "what", "red"]
    target = build("encoder", [], {**DIMS, "tokens": len(here_tokens)}, seed=5)
    axes = vocabulary_axes("encoder", "typed", DIMS, [], module.hparams)
    state, _ = remap_state(module.state_dict(), target.state_dict(), axes,
                           {"tokens": TOKENS, "answers": ANSWERS, "instances": []},
                           {"tokens": here_tokens, "answers": ANSWERS, "instances": []})
    embed = module.state_dict()["embed.weight"]
    assert torch.equal(state["embed.weight"][2], embed[TOKENS.index("<UNK>")])  # sphere: never seen
    assert torch.equal(state["embed.weight"][4], embed[TOKENS.index("red")])
    assert torch.equal(state["embed.weight"][3], embed[TOKENS.index("what")])


def test_dimensions_that_differ_are_refused():
    module = build("describe", ["color"])
    other = build("describe", ["color"], {**DIMS, "features": 9})
    axes = vocabulary_axes("describe", "typed", DIMS, ["color"], module.hparams)
    words = {"tokens": TOKENS, "answers": ANSWERS, "instances": ["color"]}
    with pytest.raises(ModtrainError, match="weight"):
        remap_state(module.state_dict(), other.state_dict(), axes, words, words)


def test_restore_frozen_keeps_only_the_new_rows_changed():
    module = build("measure", ["count", "exist"])
    start = {k: v.clone() for k, v in module.state_dict().items()}
    masks = {k: torch.zeros_like(v, dtype=torch.bool) for k, v in start.items()}
    for m in masks.values():
        m[1] = True  # exist is new
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    restore_frozen(module, start, masks)
    for key, value in module.state_dict().items():
        assert torch.equal(value[0], start[key][0]), key
        assert torch.equal(value[1], start[key][1] + 1.0), key


def write_package(folder, **changes):
    """A package folder of an untrained describe, with ``changes`` to its package.json."""
    import json

    from modtrain.card import describe_module, state_sha256
    from modtrain.reuse import FORMAT, FORMAT_VERSION

    module = build("describe", ["color"])
    state = module.state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "weights.pt")
    package = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": "describe",
               "card": {**describe_module(module), "weights_sha256": state_sha256(state)},
               "vocabulary": {"tokens": TOKENS, "answers": ANSWERS, "instances": ["color"]},
               "features": {"backbone": "clevr-cnn", "backbone_sha256": "a" * 64, "shape": [6, 3, 3]}, **changes}
    (folder / "package.json").write_text(json.dumps({k: v for k, v in package.items() if v is not None}))
    return state


def test_a_package_is_read_whole_or_refused_in_one_line(tmp_path):
    from modtrain.reuse import read_package

    state = write_package(tmp_path / "good")
    package, read = read_package(tmp_path / "good")
    assert package["name"] == "describe" and all(torch.equal(read[k], v) for k, v in state.items())
    cases = {"not-a-package": None, "format": {"format": "zip"}, "version": {"format_version": 99},
             "no-features": {"features": None}}
    expected = {"not-a-package": "is not a module package: package.json not found", "format": "not a modtrain module",
                "version": "format version 99", "no-features": "key 'features' is missing"}
    for case, changes in cases.items():
        if changes is not None:
            write_package(tmp_path / case, **changes)
        else:
            (tmp_path / case).mkdir()
        with pytest.raises(ModtrainError, match=expected[case]) as caught:
            read_package(tmp_path / case)
        assert "\n" not in str(caught.value)
    write_package(tmp_path / "changed")
    changed = torch.load(tmp_path / "changed" / "weights.pt", weights_only=True)
    changed["bias"] += 1
    torch.save(changed, tmp_path / "changed" / "weights.pt")
    with pytest.raises(ModtrainError, match="does not match the card"):
        read_package(tmp_path / "changed")
    (tmp_path / "good" / "weights.pt").write_bytes(b"truncated")
    with pytest.raises(ModtrainError, match="cannot be read"):
        read_package(tmp_path / "good")
    (tmp_path / "good" / "weights.pt").unlink()
    with pytest.raises(ModtrainError, match="incomplete"):
        read_package(tmp_path / "good")

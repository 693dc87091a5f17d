"""Stack-NMN: the differentiable stack, the soft network against discrete execution, layouts."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from modtrain.datasets.clevr import ClevrFolder, compact_program
from modtrain.modules.snmn import (
    MODULES,
    DiscreteExecutor,
    Part,
    Pointwise,
    StackNMN,
    mix,
    move_down,
    move_up,
    one_hot_layout,
    pop,
    program_layout,
    push,
    read,
    sharpen,
    write,
)

from modtrain.errors import ModtrainError


def _ptr(slot: int, size: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor([slot]), size).float()


def test_push_and_pop_move_the_pointer_with_guards_at_both_ends():
    assert move_up(_ptr(1)).tolist() == _ptr(2).tolist()
    assert move_up(_ptr(3)).tolist() == _ptr(3).tolist()      # top guard: a push at the top stays
    assert move_down(_ptr(2)).tolist() == _ptr(1).tolist()
    assert move_down(_ptr(0)).tolist() == _ptr(0).tolist()    # bottom guard
    soft = torch.tensor([[0.5, 0.0, 0.0, 0.5]])
    assert move_up(soft).tolist() == [[0.0, 0.5, 0.0, 0.5]]    # mass is kept: the top's stays
    assert move_down(soft).tolist() == [[0.5, 0.0, 0.5, 0.0]]
    assert move_up(torch.tensor([[0.0, 0.0, 0.5, 0.5]])).tolist() == [[0.0, 0.0, 0.0, 1.0]]    # both reach the top
    assert move_down(torch.tensor([[0.5, 0.5, 0.0, 0.0]])).tolist() == [[1.0, 0.0, 0.0, 0.0]]  # both the bottom
    stack = torch.zeros(1, 4, 2, 2)
    a, b = torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 2.0)
    stack, p = push(stack, _ptr(0), a)
    stack, p = push(stack, p, b)
    assert p.tolist() == _ptr(2).tolist() and stack[0, 1, 0, 0] == 1 and stack[0, 2, 0, 0] == 2
    top, p = pop(stack, p)
    assert top[0, 0, 0] == 2 and p.tolist() == _ptr(1).tolist() and read(stack, p)[0, 0, 0] == 1
    # a soft write blends what the slot held with the value
    blended = write(stack, torch.tensor([[0.0, 0.25, 0.0, 0.75]]), torch.full((1, 2, 2), 10.0))
    assert blended[0, 1, 0, 0] == pytest.approx(0.75 * 1 + 0.25 * 10) and blended[0, 3, 0, 0] == pytest.approx(7.5)


def test_sharpening():
    p = torch.tensor([[0.1, 0.6, 0.3]])
    assert sharpen(p, hard=True).tolist() == [[0.0, 1.0, 0.0]] and sharpen(p, hard=True).dtype == p.dtype
    soft = sharpen(p, hard=False)  # softmax(p / 0.2) = e^(0.5, 3, 1.5) / their sum
    total = math.exp(0.5) + math.exp(3) + math.exp(1.5)
    assert soft[0].tolist() == pytest.approx([math.exp(0.5) / total, math.exp(3) / total, math.exp(1.5) / total])


def _peaked_net(seed: int = 0, scale: float = 40.0) -> StackNMN:
    """A Stack-NMN whose maps are far from uniform. At initialization Find's, Transform's and
    Scene's maps are nearly flat, so reading a wrong slot or swapping two operands changes an
    answer by less than any useful tolerance. Here Find's output is set by hand (a fixed map per
    direction of the control vector, peaked on a cell or two of the grid), each step's control
    vector reads a word of its own, and the image's, Transform's and Scene's last convolutions are
    scaled up."""
    torch.manual_seed(seed)
    net = StackNMN(tokens=11, answers=7, features=6, dim=16, steps=8, stack=6, hard_pointer=True).eval()
    bank = torch.randn(16, 16)  # grid cells × control dimensions

    def find(image, c):  # peaked by the control vector, and reading the image like the real one
        return (scale * (c / c.norm(dim=1, keepdim=True)) @ bank.T).view(len(c), 4, 4) + image["x"].mean(1)

    net.ops.find = find  # Filter and the discrete executor call it too
    with torch.no_grad():
        net.controller.word.weight.mul_(scale)  # each step's text attention on a word of its own
        net.image[-1].weight.mul_(scale / 4)  # features that differ from cell to cell by more than 0.1
        for conv in (net.ops.tr_out, net.ops.scene_out):
            conv.weight.mul_(scale)
    return net


def _question(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 11, (3, 5), generator=g), torch.tensor([5, 3, 4]), torch.randn(3, 6, 4, 4, generator=g)


@pytest.mark.parametrize("layout", [
    ["Find", "Answer"],
    ["Find", "Filter", "Transform", "Answer"],
    ["Find", "Scene", "And", "Find", "Or", "Answer"],
    ["Find", "Find", "Transform", "Compare"],
    ["Find", "Find", "Find", "And", "Compare"],  # Compare under And: operand order and slots matter
    ["Find", "Answer", "Find", "Answer"],        # a second answer reads the first's memory
    ["Scene", "Answer", "NoOp", "NoOp"],  # NoOp after the answer keeps the memory
])
def test_soft_network_with_one_hot_weights_is_the_discrete_execution(layout):
    net = _peaked_net()
    tokens, lengths, features = _question()
    with torch.no_grad():
        soft, aux = net(tokens, lengths, features, module_weights=one_hot_layout(layout, 8, 3))
        executor = DiscreteExecutor(net)
        discrete = executor.run(layout, tokens, lengths, features)
    assert torch.allclose(soft, discrete, atol=1e-4)
    assert aux["tops"].shape == (3, 8, 4, 4) and aux["module_weights"].shape == (3, 8, len(MODULES))
    # the map on top of the stack after every step of the layout, as the list machine has it
    for t, top in enumerate(executor.tops):
        assert torch.allclose(aux["tops"][:, t], top, atol=1e-4), (t, layout[t])


def test_the_execution_test_can_tell_slots_operands_and_inputs_apart():
    """What the test above relies on: with these maps, a wrong slot, swapped operands, an Answer
    that ignores its map or its memory each move the answer logits far more than its tolerance."""
    net = _peaked_net()
    tokens, lengths, features = _question()
    with torch.no_grad():
        _, controls, _, _ = net.controller(tokens, lengths)
        ops, image = net.ops, net.prepare(net.image(features))
        c0, c1, c2 = controls[:, 0], controls[:, 1], controls[:, 2]
        a1, a2 = ops.find(image, c0), ops.find(image, c1)
        peak = torch.softmax(a1.flatten(1), 1).max(1).values
        assert (peak > 0.5).all(), peak  # attention on one cell of the grid, not spread over all 16
        memory = torch.randn(3, 16)

        def far(x, y):
            return (net.output(torch.cat([x, x], 1)) - net.output(torch.cat([y, y], 1))).abs().max() > 100 * 1e-4

        assert far(ops.compare(image, c2, a1, a2, memory), ops.compare(image, c2, a2, a1, memory))
        assert far(ops.answer(image, c2, ops.transform(image, c2, a1), memory),
                   ops.answer(image, c2, ops.transform(image, c2, a2), memory))
        assert far(ops.answer(image, c2, a1, memory), ops.answer(image, c2, a2, memory))
        assert far(ops.answer(image, c2, a1, memory), ops.answer(image, c2, a1, torch.zeros_like(memory)))
        assert far(ops.answer(image, c2, a1, memory), ops.answer(image, c1, a1, memory))
        assert far(ops.compare(image, c2, a1, a2, memory), ops.compare(image, c2, a1, a2, torch.zeros_like(memory)))


def test_the_modules_compute_their_formulas():
    """Each module's computation written out from its layers (Stack-NMN §3.2; Answer and Compare as
    the reference code's Describe modules), so that an operator or an operand changed inside one
    is caught even though the discrete execution calls the same functions."""
    from modtrain.modules.snmn import attend

    torch.manual_seed(0)
    net = StackNMN(tokens=11, answers=7, features=6, dim=16, steps=4, stack=4).eval()
    ops = net.ops
    x, c, memory = torch.randn(2, 16, 4, 4), torch.randn(2, 16), torch.randn(2, 16)
    a1, a2 = 5 * torch.randn(2, 4, 4), 5 * torch.randn(2, 4, 4)
    image = net.prepare(x)
    with torch.no_grad():
        find = ops.find_out(ops.find_in(x) * ops.find_c(c)[:, :, None, None]).squeeze(1)
        assert torch.allclose(ops.find(image, c), find, atol=1e-6)
        gate = (ops.tr_att(attend(a1, x)) * ops.tr_c(c))[:, :, None, None]
        assert torch.allclose(ops.transform(image, c, a1), ops.tr_out(ops.tr_in(x) * gate).squeeze(1), atol=1e-6)
        assert torch.allclose(ops.filter(image, c, a1), torch.minimum(a1, find), atol=1e-6)
        assert torch.allclose(ops.scene(image, c), ops.scene_out(x).squeeze(1), atol=1e-6)
        answer = ops.ans_out(torch.cat([c, memory, ops.ans_att(attend(a1, x)) * ops.ans_c(c)], 1))
        assert torch.allclose(ops.answer(image, c, a1, memory), answer, atol=1e-6)
        both = ops.cmp_a1(attend(a1, x)) * ops.cmp_a2(attend(a2, x)) * ops.cmp_c(c)
        assert torch.allclose(ops.compare(image, c, a1, a2, memory), ops.cmp_out(torch.cat([c, memory, both], 1)),
                              atol=1e-6)
    # attention: a softmax over the whole grid, then the weighted sum of the features
    peaked = torch.full((2, 4, 4), -1e4)
    peaked[0, 1, 2], peaked[1, 3, 0] = 0.0, 0.0
    assert torch.allclose(attend(peaked, x), torch.stack([x[0, :, 1, 2], x[1, :, 3, 0]]))
    assert torch.allclose(attend(torch.zeros(2, 4, 4), x), x.mean((2, 3)), atol=1e-6)
    # the layers the module docstring names: ELU inside the image projection and the output MLP
    assert [type(m).__name__ for m in net.image] == ["Conv2d", "ELU", "Conv2d"]
    assert [type(m).__name__ for m in net.output] == ["Linear", "ELU", "Linear"]
    assert [type(m).__name__ for m in net.controller.choose] == ["Linear", "ReLU", "Linear"]


def test_the_controller_reads_each_question_as_if_alone():
    """q is the BiLSTM's last forward and first backward states of the words alone (padding
    changes nothing), and a one-word question reads its word."""
    torch.manual_seed(0)
    net = StackNMN(tokens=11, answers=7, features=6, dim=16, steps=3, stack=4, embedding=8).eval()
    tokens = torch.tensor([[3, 4, 5, 0, 0], [3, 4, 5, 6, 7], [9, 0, 0, 0, 0]])
    with torch.no_grad():
        _, _, _, q = net.controller(tokens, torch.tensor([3, 5, 1]))
        for row, n in zip(range(3), (3, 5, 1)):
            out, (h, _) = net.controller.lstm(net.controller.embed(tokens[row:row + 1, :n]))
            assert torch.allclose(q[row], torch.cat([h[0, 0], h[1, 0]]), atol=1e-6), row
            assert torch.allclose(q[row, :8], out[0, -1, :8], atol=1e-6) and torch.allclose(q[row, 8:], out[0, 0, 8:],
                                                                                             atol=1e-6)
    assert net.controller.embed.embedding_dim == 8 and net.controller.embed.padding_idx == 0
    assert net.controller.per_step.abs().mean() < 1.0  # W1(t) starts at the scale 1/√d


def test_one_hot_layouts_pad_with_noop_and_refuse_what_does_not_fit():
    weights = one_hot_layout(["Find", "Answer"], 4)
    assert weights.shape == (1, 4, len(MODULES))
    assert weights.argmax(2).tolist() == [[MODULES.index("Find"), MODULES.index("Answer"), 0, 0]]
    assert MODULES[0] == "NoOp"
    assert one_hot_layout(["Find", "Find", "And", "Answer"], 4, batch=2).shape == (2, 4, len(MODULES))  # exactly T
    with pytest.raises(ModtrainError, match="layout of 5 modules is longer than the 4 steps"):
        one_hot_layout(["Find"] * 4 + ["Answer"], 4)


def test_each_step_moves_the_stack_as_its_module_says():
    """One step of each module from a stack holding two known maps (slots 1 and 2, pointer at 2),
    against the stack semantics written out by hand (Stack-NMN §3.1)."""
    net = _peaked_net()
    tokens, lengths, features = _question()
    with torch.no_grad():
        _, controls, _, _ = net.controller(tokens, lengths)
        ops, image = net.ops, net.prepare(net.image(features))
        c = controls[:, 0]
        first, second = ops.find(image, controls[:, 1]), ops.find(image, controls[:, 2])
        stack = torch.zeros(3, 6, 4, 4)
        stack[:, 1], stack[:, 2] = first, second
        pointer, memory = F.one_hot(torch.full((3,), 2), 6).float(), torch.randn(3, 16)
        out = net.step(image, c, stack, pointer, memory)
    slot = {name: int(p.argmax(1)[0]) for name, (_, p, _) in out.items()}
    assert slot == {"NoOp": 2, "Find": 3, "Scene": 3, "Transform": 2, "Filter": 2, "And": 1, "Or": 1,
                    "Answer": 1, "Compare": 0}
    assert torch.equal(out["Find"][0][:, 3], ops.find(image, c)) and torch.equal(out["Find"][0][:, 2], second)
    assert torch.equal(out["Scene"][0][:, 3], ops.scene(image, c))
    assert torch.allclose(out["Transform"][0][:, 2], ops.transform(image, c, second))
    assert torch.allclose(out["Filter"][0][:, 2], torch.minimum(second, ops.find(image, c)))
    assert torch.equal(out["And"][0][:, 1], torch.minimum(first, second))
    assert torch.equal(out["Or"][0][:, 1], torch.maximum(first, second))
    assert torch.allclose(out["Answer"][2], ops.answer(image, c, second, memory))
    assert torch.allclose(out["Compare"][2], ops.compare(image, c, first, second, memory))
    for name in ("NoOp", "Find", "Scene", "Transform", "Filter", "And", "Or"):
        assert torch.equal(out[name][2], memory), name  # only the answering modules write the memory


def test_word_attention_ignores_padding():
    torch.manual_seed(0)
    net = StackNMN(tokens=11, answers=7, features=6, dim=16, steps=3, stack=4)
    tokens = torch.tensor([[3, 4, 5, 0, 0], [3, 4, 5, 6, 7]])
    _, aux = net(tokens, torch.tensor([3, 5]), torch.randn(2, 6, 4, 4))
    assert aux["text_attention"][0, :, 3:].abs().max() == 0
    assert torch.allclose(aux["text_attention"].sum(2), torch.ones(2, 3))


def test_ground_truth_layouts_from_programs():
    count_red_cubes = compact_program(("scene",), ("filter_color", [0], ["red"]), ("filter_shape", [1], ["cube"]),
                                      ("count", [2]))
    assert program_layout(count_red_cubes, 4) == ["Find", "Answer", "NoOp", "NoOp"]  # a filter chain: one Find
    count_all = compact_program(("scene",), ("count", [0]))
    assert program_layout(count_all, 3) == ["Scene", "Answer", "NoOp"]
    # the color of the thing left of the unique large sphere: unique dropped, relate → Transform
    relate_query = compact_program(("scene",), ("filter_size", [0], ["large"]), ("filter_shape", [1], ["sphere"]),
                                   ("unique", [2]), ("relate", [3], ["left"]), ("filter_color", [4], ["red"]),
                                   ("unique", [5]), ("query_shape", [6]))
    assert program_layout(relate_query, 5) == ["Find", "Transform", "Filter", "Answer", "NoOp"]
    # a comparison reads the two attentions: its inputs' query nodes are spliced out
    same_color = compact_program(("scene",), ("filter_shape", [0], ["cube"]), ("unique", [1]), ("query_color", [2]),
                                 ("scene",), ("filter_shape", [4], ["sphere"]), ("unique", [5]), ("query_color", [6]),
                                 ("equal_color", [3, 7]))
    assert program_layout(same_color, 3) == ["Find", "Find", "Compare"]
    more = compact_program(("scene",), ("filter_color", [0], ["red"]), ("count", [1]), ("scene",),
                           ("filter_color", [3], ["blue"]), ("count", [4]), ("greater_than", [2, 5]))
    assert program_layout(more, 3) == ["Find", "Find", "Compare"]
    either = compact_program(("scene",), ("filter_color", [0], ["red"]), ("scene",), ("filter_shape", [2], ["cube"]),
                             ("union", [1, 3]), ("exist", [4]))
    assert program_layout(either, 4) == ["Find", "Find", "Or", "Answer"]
    with pytest.raises(ModtrainError, match="has 4 modules .* more than the 3 steps"):
        program_layout(either, 3)
    # the two inputs of And/Or and of Compare keep their order; intersect is And
    both = compact_program(("scene",), ("scene",), ("filter_color", [1], ["red"]), ("intersect", [0, 2]),
                           ("exist", [3]))
    assert program_layout(both, 4) == ["Scene", "Find", "And", "Answer"]
    fewer = compact_program(("scene",), ("filter_color", [0], ["red"]), ("count", [1]), ("scene",), ("count", [3]),
                            ("less_than", [2, 4]))
    assert program_layout(fewer, 3) == ["Find", "Scene", "Compare"]
    # same_* is a Transform; a filter chain runs through unique too; a function with no module is refused
    same = compact_program(("scene",), ("filter_shape", [0], ["cube"]), ("unique", [1]), ("same_color", [2]),
                           ("count", [3]))
    assert program_layout(same, 3) == ["Find", "Transform", "Answer"]
    chain = compact_program(("scene",), ("filter_shape", [0], ["cube"]), ("unique", [1]),
                            ("filter_color", [2], ["red"]), ("exist", [3]))
    assert program_layout(chain, 2) == ["Find", "Answer"]
    with pytest.raises(ModtrainError, match="program node 1: no Stack-NMN module for function 'paint'"):
        program_layout(compact_program(("scene",), ("paint", [0])), 3)


def test_stack_nmn_is_a_modtrain_module_that_answers_alone():
    from modtrain.registry import build_module, reads_features, run_prior

    module = build_module("snmn", "typed", {"tokens": 11, "answers": 7, "features": 6, "height": 4, "width": 4},
                          dim=16, steps=4, stack=4)
    assert module.net.hard_pointer is False and module.net.controller.embed.embedding_dim == 64  # the defaults
    hard = build_module("snmn", "typed", {"tokens": 11, "answers": 7, "features": 6, "height": 4, "width": 4},
                        dim=16, steps=4, stack=4, hard_pointer=True, embedding=8)
    assert hard.net.hard_pointer is True and hard.net.controller.embed.embedding_dim == 8
    assert reads_features(module) and module.output == "Prior"
    out = run_prior(module, torch.randint(1, 11, (3, 5)), torch.tensor([5, 2, 4]), torch.randn(3, 6, 4, 4))
    assert out.shape == (3, 7)
    assert module.explained["module_weights"].shape == (3, 4, len(MODULES))
    assert torch.allclose(module.explained["module_weights"].sum(2), torch.ones(3, 4))


@pytest.mark.slow
def test_layout_supervision_teaches_the_controller_the_programs_layouts(tiny_run, tmp_path):
    """snmn with layout_weight > 0 trains its module choice against each question's program layout:
    after 3 epochs the controller's argmax module matches the ground truth at most steps of the
    validation questions (an untrained controller matches about 1 in 9)."""
    import numpy as np

    from modtrain.card import load_module
    from modtrain.data import PreparedData
    from modtrain.e2e import train_end_to_end
    from modtrain.recipe import Recipe
    from modtrain.registry import module_class
    from modtrain.workdir import Workdir

    _, workdir, _, _ = tiny_run
    recipe = Recipe.load("snmn-gt", ["data.families='no-relate'", "train.max_epochs=3", "train.patience=3",
                                     "train.lr=0.002", "train.device='cpu'", "modules.snmn.dim=32",
                                     "modules.snmn.steps=6"])
    run = Workdir(tmp_path / "snmn", workdir.data)
    train_end_to_end(run, recipe, torch.device("cpu"))
    module, card = load_module(run.modules, "snmn", torch.device("cpu"))
    split = PreparedData(workdir.data).split("val")
    targets = module_class("snmn").layout_targets(workdir.data, split, card["hyperparameters"])
    rows = np.flatnonzero((targets >= 0).all(1))[:200]
    with torch.no_grad():
        module.eval()(torch.from_numpy(split.tokens[rows]).long(), torch.from_numpy(split.lengths[rows]).long(),
                      torch.from_numpy(split.features().take(split.image_index[rows])).float())
    chosen = module.explained["module_logits"].argmax(2).numpy()
    real = targets[rows] != MODULES.index("NoOp")  # the padding alone would be easy to match
    print("match", (chosen == targets[rows]).mean(), "on modules", (chosen == targets[rows])[real].mean())
    assert (chosen == targets[rows]).mean() > 0.6 and (chosen == targets[rows])[real].mean() > 0.5


def test_entropy_sharpening_starts_after_its_warm_up():
    from modtrain.modules.snmn import module_entropy

    from modtrain.registry import build_module, run_prior

    dims = {"tokens": 11, "answers": 7, "features": 6, "height": 4, "width": 4}
    module = build_module("snmn", "typed", dims, dim=16, steps=4, stack=4, sharpen_weight=0.5, sharpen_warmup=2)
    run_prior(module, torch.randint(1, 11, (3, 5)), torch.tensor([5, 2, 4]), torch.randn(3, 6, 4, 4))
    entropy = module_entropy(module.explained["module_weights"])
    assert entropy.item() > 0.5  # an untrained controller hesitates between modules
    assert module.sharpening_loss(1) == 0.0 and module.sharpening_loss(2) == 0.0
    assert module.sharpening_loss(3).item() == pytest.approx(0.5 * entropy.item())
    assert build_module("snmn", "typed", dims, dim=16, steps=4, stack=4).sharpening_loss(5) == 0.0
    # what the job adds to the answer's loss: the sharpening term (no layout targets in a scratch run)
    assert module.auxiliary_loss({}, 2) == 0.0
    assert module.auxiliary_loss({}, 3).item() == pytest.approx(0.5 * entropy.item())


def test_stack_nmn_asks_its_job_for_its_training_through_the_hooks(tiny_clevr, caplog):
    """Clipping and the weights' average; with layout supervision, each question's layout as a
    batch target and its cross-entropy added to the loss (questions without one left out)."""
    from modtrain.registry import build_module, run_prior

    class Split:  # what the layout targets read of a prepared split
        name = "val"

        def __len__(self):
            return len(ClevrFolder(tiny_clevr).load_questions("val"))

    dims = {"tokens": 11, "answers": 7, "features": 6, "height": 4, "width": 4}
    scratch = build_module("snmn", "typed", dims, dim=16, steps=4, stack=4, grad_clip=2.0, ema_decay=0.9)
    assert scratch.training_settings() == {"grad_clip": 2.0, "ema_decay": 0.9}
    assert scratch.question_targets(tiny_clevr, Split()) == {}  # no layout supervision
    supervised = build_module("snmn", "typed", dims, dim=16, steps=6, stack=4, layout_weight=0.5)
    targets = supervised.question_targets(tiny_clevr, Split())
    assert list(targets) == ["layout_target"] and targets["layout_target"].shape == (len(Split()), 6)
    assert targets["layout_target"].dtype == np.int64
    # each question's row: its program's layout where it fits in 6 steps, −1 everywhere if not
    fits = 0
    for row, question in zip(targets["layout_target"], ClevrFolder(tiny_clevr).load_questions("val")):
        try:
            expected = [MODULES.index(m) for m in program_layout(question.program, 6)]
        except ModtrainError:
            expected = [-1] * 6
        fits += expected[0] >= 0
        assert row.tolist() == expected
    assert 0 < fits < len(Split())  # some questions' layouts fit in 6 steps, some don't
    assert f"val: {len(Split()) - fits} questions' layouts are longer than 6 steps" in caplog.text
    supervised = build_module("snmn", "typed", dims, dim=16, steps=4, stack=4, layout_weight=0.5)
    run_prior(supervised, torch.randint(1, 11, (3, 5)), torch.tensor([5, 2, 4]), torch.randn(3, 6, 4, 4))
    target = torch.tensor([[1, 7, 0, 0], [-1, -1, -1, -1], [2, 2, 7, 0]])
    expected = 0.5 * F.cross_entropy(supervised.explained["module_logits"][[0, 2]].flatten(0, 1),
                                     target[[0, 2]].flatten())
    assert supervised.auxiliary_loss({"layout_target": target}, 1).item() == pytest.approx(expected.item())
    assert supervised.auxiliary_loss({"layout_target": torch.full((3, 4), -1)}, 1) == 0.0  # no layout in the batch
    noop = torch.zeros(3, 4, dtype=torch.long)  # NoOp (id 0) everywhere is a layout like any other
    expected = 0.5 * F.cross_entropy(supervised.explained["module_logits"].flatten(0, 1), noop.flatten())
    assert supervised.auxiliary_loss({"layout_target": noop}, 1).item() == pytest.approx(expected.item())
    assert supervised.auxiliary_loss({}, 1) == 0.0


def test_weights_of_an_older_stack_nmn_are_out_of_date_and_refused_in_one_line(tmp_path):
    """Answer and Compare changed shape (version 2): a job key holds the version, so an older card
    is out of date, and weights that do not fit the module are one clear error, not a torch trace."""
    import json

    from modtrain.card import card_path, load_module, save_module
    from modtrain.recipe import Recipe
    from modtrain.registry import build_module
    from modtrain.wiring import JobSpec, job_key
    from modtrain.workdir import Workdir

    class Data:  # what the key reads of the prepared data
        def fingerprint(self, *splits):
            return "same data"

        def split(self, name):  # no features file: the uniform order
            return type("Split", (), {"features_path": tmp_path / "no-features.h5"})()

    def key(name, recipe):
        spec = JobSpec("e2e", (name,), (), (), None, "end-to-end")
        return job_key(spec, Recipe.load(recipe), Data(), {}, Workdir(tmp_path / "w", tmp_path / "data"))

    assert key("snmn", "snmn-gt")["module_versions"] == {"snmn": 2}
    assert key("lnmn", "lnmn")["module_versions"] == {"lnmn": 2}
    assert "module_versions" not in key("film", "film")  # version 1: keys of older runs unchanged
    dims = {"tokens": 11, "answers": 7, "features": 6, "height": 4, "width": 4}
    module = build_module("snmn", "typed", dims, dim=16, steps=4, stack=4)
    modules = tmp_path / "modules"
    save_module(modules, module, {"name": "snmn"})
    card = json.loads(card_path(modules, "snmn").read_text())
    card["dimensions"]["answers"] = 9  # weights shaped for another module than the card builds
    card_path(modules, "snmn").write_text(json.dumps(card))
    with pytest.raises(ModtrainError, match=r"snmn.pt does not fit this modtrain's snmn \(size mismatch for "
                                            r".*\): trained by an older version of the module; retrain with "
                                            r"'modtrain train snmn'"):
        load_module(modules, "snmn")


def test_pointwise_is_a_one_by_one_convolution_with_its_parameters():
    torch.manual_seed(0)
    for out in (1, 5):
        layer, x = Pointwise(6, out), torch.randn(3, 6, 4, 5)
        assert list(layer.state_dict()) == ["weight", "bias"] and layer.weight.shape == (out, 6, 1, 1)
        assert torch.allclose(layer(x), F.conv2d(x, layer.weight, layer.bias), atol=1e-6)


def test_mix_is_the_weighted_sum_of_every_modules_stack_pointer_and_memory():
    """``mix`` never builds a module's stack; it must give Σ_m w_m·part_m.apply(stack) for any
    weights (here not summing to 1), with parts that share pointers and memories and parts that
    write nothing."""
    torch.manual_seed(0)
    b, slots, h, w, d = 3, 5, 4, 2, 7
    stack, memory, other_memory = torch.randn(b, slots, h, w), torch.randn(b, d), torch.randn(b, d)
    pointer, up = torch.softmax(torch.randn(b, slots), 1), torch.softmax(torch.randn(b, slots), 1)
    parts = [Part(pointer, memory), Part(up, memory, up, torch.randn(b, h, w)),
             Part(pointer, memory, pointer, torch.randn(b, h, w)), Part(up, other_memory),
             Part(up, memory, up, torch.randn(b, h, w))]
    weights = torch.rand(b, len(parts))
    expected = [sum(weights[:, m].view(-1, *[1] * (t.dim() - 1)) * part.apply(stack)[k] for m, part in enumerate(parts))
                for k, t in enumerate((stack, pointer, memory))]
    for got, want in zip(mix(parts, weights, stack), expected):
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
    nothing_written = mix([parts[0], parts[3]], weights[:, :2], stack)
    assert torch.allclose(nothing_written[0], stack * weights[:, :2].sum(1)[:, None, None, None])

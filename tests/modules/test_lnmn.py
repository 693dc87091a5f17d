"""LNMN: cells of learned structure on Stack-NMN's stack, and its alternating training."""
import pytest
import torch

from modtrain.modules.lnmn import (
    INVENTORIES, LNMN, OPERATIONS, AlternatingTrainer, Cell, Node, entropy_weight, module_entropy,
)


@pytest.mark.parametrize("index,expected", [
    (0, lambda a, b: torch.minimum(a, b)), (1, lambda a, b: torch.maximum(a, b)), (2, lambda a, b: a + b),
    (3, lambda a, b: a * b), (4, lambda a, b: a), (5, lambda a, b: b),
])
def test_a_node_with_one_hot_alpha_is_its_operation(index, expected):
    node = Node()
    with torch.no_grad():
        node.alpha.copy_(torch.full((6,), -1e4))
        node.alpha[index] = 0.0
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.allclose(node(a, b), expected(a, b))
    node.alpha.data.normal_()
    node.alpha.data[index] = 10.0
    node.hard = True  # inference with the argmax operation alone
    assert torch.equal(node(a, b), expected(a, b))
    node.hard = False
    node.removed = {OPERATIONS[index]}  # the operation zeroed out (LNMN Table 7): nothing of it is left
    assert not torch.allclose(node(a, b), expected(a, b))


def test_cells_and_inventories():
    x, c = torch.randn(2, 8, 3, 3), torch.randn(2, 8)
    a1, a2 = torch.randn(2, 3, 3), torch.randn(2, 3, 3)
    assert Cell(8, 1, answer=False)(x, c, [a1]).shape == (2, 3, 3)
    assert Cell(8, 2, answer=True)(x, c, [a1, a2], torch.zeros(2, 8)).shape == (2, 8)
    for size, counts in INVENTORIES.items():
        net = LNMN(tokens=9, answers=5, features=4, dim=8, steps=3, stack=4, inventory=size)
        assert len(net.module_names) == size == 1 + sum(counts)
        assert net.controller.choose[-1].out_features == size
        logits, aux = net(torch.randint(1, 9, (2, 4)), torch.tensor([4, 2]), torch.randn(2, 4, 3, 3))
        assert logits.shape == (2, 5) and aux["module_weights"].shape == (2, 3, size)


def test_an_alpha_step_never_changes_weights_and_a_weight_step_never_changes_alpha():
    torch.manual_seed(0)
    net = LNMN(tokens=9, answers=5, features=4, dim=8, steps=3, stack=4, inventory=9)
    structure = {id(p) for p in net.structure_parameters()}
    assert structure and all(id(p) not in structure for p in net.weight_parameters())
    assert len(structure) + len(net.weight_parameters()) == len(list(net.parameters()))
    trainer = AlternatingTrainer(net, weight_lr=1e-2, structure_lr=1e-2)
    batch = {"tokens": torch.randint(1, 9, (4, 5)), "lengths": torch.tensor([5, 4, 3, 5]),
             "features": torch.randn(4, 4, 3, 3), "answer": torch.randint(0, 5, (4,))}

    def snapshot(params):
        return [p.detach().clone() for p in params]

    weights, alphas = snapshot(net.weight_parameters()), snapshot(net.structure_parameters())
    trainer.structure_step(batch)
    assert all(torch.equal(a, b) for a, b in zip(weights, net.weight_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(alphas, net.structure_parameters()))
    weights, alphas = snapshot(net.weight_parameters()), snapshot(net.structure_parameters())
    trainer.weight_step(batch, epoch=0)
    assert all(torch.equal(a, b) for a, b in zip(alphas, net.structure_parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(weights, net.weight_parameters()))


def test_regularizers():
    assert entropy_weight(0) == 1.0 and entropy_weight(10) == 0.5 and entropy_weight(20) == 0.0
    assert entropy_weight(25) == -0.5 and entropy_weight(40) == -1.0
    assert entropy_weight(4, 8, 12) == 0.5 and entropy_weight(10, 8, 12) == -0.5 and entropy_weight(12, 8, 12) == -1.0
    uniform = torch.full((2, 3, 4), 0.25)
    assert module_entropy(uniform).item() == pytest.approx(torch.log(torch.tensor(4.0)).item())
    net = LNMN(tokens=9, answers=5, features=4, dim=8, steps=2, stack=4, inventory=9)
    nodes = len(net.structure_parameters())
    with torch.no_grad():
        for a in net.structure_parameters():
            a.zero_()
    assert net.sparsity().item() == pytest.approx(nodes / 6 ** 0.5)  # uniform: ‖·‖₂/‖·‖₁ = 1/√6
    with torch.no_grad():
        for a in net.structure_parameters():
            a.copy_(torch.tensor([50.0, 0, 0, 0, 0, 0]))
    assert net.sparsity().item() == pytest.approx(nodes, rel=1e-4)  # one-hot: 1 per node


@pytest.mark.slow
def test_lnmn_trains_weights_and_structure_alternately_in_a_modtrain_job(tiny_run, tmp_path):
    """The job holds a search split out of training, and α moves (it trains only on the search
    batches: the weight optimizer never holds it)."""
    from modtrain.card import load_card, load_module
    from modtrain.data import PreparedData
    from modtrain.e2e import train_end_to_end
    from modtrain.job import Job, joint_spec
    from modtrain.plan import make_plan
    from modtrain.registry import build_module
    from modtrain.recipe import Recipe
    from modtrain.workdir import Workdir

    _, workdir, _, _ = tiny_run
    recipe = Recipe.load("lnmn", ["data.families='no-relate'", "train.max_epochs=2", "train.patience=2",
                                  "train.device='cpu'", "modules.lnmn.dim=16", "modules.lnmn.steps=4",
                                  "modules.lnmn.structure_lr=0.01"])
    run = Workdir(tmp_path / "lnmn", workdir.data)
    train_end_to_end(run, recipe, torch.device("cpu"))
    module, _ = load_module(run.modules, "lnmn", torch.device("cpu"))
    data = PreparedData(workdir.data)
    fresh = build_module("lnmn", "typed", data.dims(), **recipe.module_hparams("lnmn"))
    # α starts within 1e-2 of 0 (1e-3 noise); the α steps moved it far from there
    assert max(a.abs().max().item() for a in fresh.structure_parameters()) < 0.01
    assert max(a.abs().max().item() for a in module.structure_parameters()) > 0.05
    job = Job(run, recipe, torch.device("cpu"), joint_spec(make_plan(recipe, end_to_end=True), "e2e"))
    job._setup_data()
    trainable = data.split("train").trainable().sum()
    assert len(job.search_rows) == round(0.1 * trainable) and len(job.train_rows) + len(job.search_rows) == trainable
    assert not set(job.search_rows) & set(job.train_rows)
    # α's optimizer and the search batches' stream are checkpointed: a resumed job continues them
    job._setup_model()
    job._setup_optimizer()
    job.epoch = 1
    job._after_step(1, 1)
    saved = job._extra_state()
    following = job.search_batches.integers(1 << 30)
    resumed = Job(run, recipe, torch.device("cpu"), joint_spec(make_plan(recipe, end_to_end=True), "e2e"))
    resumed._setup_data()
    resumed._setup_model()
    resumed._setup_optimizer()
    resumed._restore_extra_state(saved)
    assert resumed.search_batches.integers(1 << 30) == following
    state = resumed.structure_optimizer.state_dict()["state"]
    assert state and all(torch.equal(v["exp_avg"], saved["structure_optimizer"]["state"][k]["exp_avg"])
                         for k, v in state.items())
    assert load_card(run.modules, "lnmn")["metrics"]["val_accuracy"] > 0
    # report cells on it: every module, an accuracy per removed operation, the files
    from modtrain.reports.cells import cells_report

    report = cells_report(run, "val", limit=300)
    assert set(report["modules"]) == set(module.net.cells) and len(report["accuracy"]) == 2 + len(OPERATIONS)
    assert report["accuracy"]["learned"] == pytest.approx(load_card(run.modules, "lnmn")["metrics"]["val_accuracy"],
                                                          abs=0.1)
    assert all(len(m["ig_by_operation"]) == len(OPERATIONS) for m in report["modules"].values())
    assert (run.reports / "cells_alpha.png").stat().st_size > 0 and (run.reports / "cells.md").exists()
    # explain draws the controller's module weights and the top of the stack, one PNG per question
    from modtrain.reports.explain import explain

    question = int(data.split("val").question_index[0])
    paths = explain(run, recipe, torch.device("cpu"), [question], "val")
    assert [p.name for p in paths] == [f"val_{question}.png"] and paths[0].stat().st_size > 10_000


def test_expressions_of_cells_from_their_argmax_operations():
    from modtrain.reports.cells import expression

    def set_ops(cell, *ops):
        with torch.no_grad():
            for node, op in zip(cell.nodes, ops):
                node.alpha.copy_(torch.full((6,), -5.0))
                node.alpha[OPERATIONS.index(op)] = 5.0
        return cell

    # LNMN Table 6's first attention module: conv_2(choose_2(min(conv_1(I), a), W_1 c)) = conv_2(W_1 c)
    assert expression(set_ops(Cell(4, 1, answer=False), "min", "choose_2")) == "conv_2(W_1 c)"
    assert expression(set_ops(Cell(4, 2, answer=False), "choose_2", "max", "product")) == \
        "conv_2((max(a_2, conv_1(I)) ⊙ W_1 c))"
    assert expression(set_ops(Cell(4, 1, answer=True), "product", "min")) == \
        "W_2[Σ min((conv_1(I) ⊙ a), W_1 c), W_1 c, f_mem]"

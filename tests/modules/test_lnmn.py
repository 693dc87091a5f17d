"""LNMN: cells of learned structure on Stack-NMN's stack, and its alternating training (LNMN
Algorithm 2) through the training hooks of a modtrain job."""
import shutil

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from modtrain.modules.lnmn import (
    INVENTORIES,
    LNMN,
    OPERATIONS,
    Cell,
    LNMNModule,
    MixedOperations,
    Node,
    entropy_weight,
    mix_operations,
    module_entropy,
    operation,
)

from modtrain.errors import ModtrainError
from modtrain.registry import build_module

CPU = torch.device("cpu")


@pytest.mark.parametrize("index,expected", [
    (0, lambda a, b: torch.minimum(a, b)), (1, lambda a, b: torch.maximum(a, b)), (2, lambda a, b: a + b),
    (3, lambda a, b: a * b), (4, lambda a, b: a), (5, lambda a, b: b),
])
def test_a_node_with_one_hot_alpha_is_its_operation(index, expected):
    torch.manual_seed(index)  # the same inputs whatever ran before
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
    assert node.weights().tolist() == F.one_hot(torch.tensor(index), 6).float().tolist()
    assert node.weights().dtype == node.alpha.dtype
    node.hard = False
    node.removed = {OPERATIONS[index]}  # the operation zeroed out (LNMN Table 7): nothing of it is left
    assert not torch.allclose(node(a, b), expected(a, b))
    with torch.no_grad():
        node.alpha.copy_(torch.full((6,), -1e4))
        node.alpha[index] = 0.0
    assert torch.allclose(node(a, b), torch.zeros_like(a))  # its one-hot weight is gone: nothing is left
    node.removed = {OPERATIONS[(index + 1) % 6]}  # another operation removed: this one is untouched
    assert torch.allclose(node(a, b), expected(a, b))


@pytest.mark.parametrize("shapes", [
    ((2, 3, 4, 4), (2, 1, 4, 4)),   # a 3-input cell's first node: features and a map over the channels
    ((2, 3, 4, 4), (2, 3, 1, 1)),   # its second: the text over the grid
    ((2, 1, 4, 4), (2, 3, 4, 4)),   # a 4-input cell's second node: the full input second
    ((2, 1, 4, 4), (2, 1, 4, 4)),   # its first: two maps
    ((2, 1, 4, 4), (2, 3, 1, 1)),   # neither is the output's shape (autograd sums the gradient)
    ((2, 3, 4, 4), (3, 1, 1)),      # fewer dimensions
    ((2, 3, 5, 4), (2, 1, 1, 4), (3, 1, 1)),     # cells run as one: a coefficient per cell (dimension 1)
    ((2, 3, 5, 4), (2, 3, 5, 1), (3, 1, 1)),
    ((2, 1, 1, 4), (2, 1, 1, 4), (3, 1, 1)),     # two maps and a coefficient per cell
    ((2, 3, 5, 4), (5, 1), (1, 1, 1)),           # the smaller input has fewer dimensions than a coefficient
])
def test_the_closed_form_is_the_weighted_sum_of_the_six_operations_value_and_gradients(shapes):
    """mix_operations (A·x1 + B·x2 + C·|x1 − x2| + D·x1·x2 with a hand-written backward) against
    Σ_o w_o·o(x1, x2) written out with min and max, in float64: the value and the gradients of
    both inputs and of the weights, with every subset of them asked for."""
    torch.manual_seed(0)
    x1, x2 = torch.randn(*shapes[0], dtype=torch.float64), torch.randn(*shapes[1], dtype=torch.float64)
    per = shapes[2] if len(shapes) > 2 else ()
    weights = torch.softmax(torch.randn(6, *per, dtype=torch.float64), 0) + torch.rand(6, *per, dtype=torch.float64)
    grad = torch.randn(torch.broadcast_shapes(x1.shape, x2.shape, per), dtype=torch.float64)
    for needs in ((True, True, True), (True, False, False), (False, True, False), (False, False, True)):
        inputs = [t.clone().requires_grad_(n) for t, n in zip((x1, x2, weights), needs)]
        ours = mix_operations(inputs[2], inputs[0], inputs[1])
        (ours * grad).sum().backward()
        ours_grads = [t.grad for t in inputs]
        reference_inputs = [t.clone().requires_grad_(n) for t, n in zip((x1, x2, weights), needs)]
        a, b, w = reference_inputs
        reference = sum(w[k] * operation(name, a, b) for k, name in enumerate(OPERATIONS))
        (reference * grad).sum().backward()
        assert torch.allclose(ours, reference)
        for got, want, n in zip(ours_grads, (t.grad for t in reference_inputs), needs):
            assert (got is None) == (not n)
            if n:
                assert got.shape == want.shape and torch.allclose(got, want), needs
    big, small = (x1, x2) if x1.numel() >= x2.numel() else (x2, x1)
    coefficients = torch.randn(4, *per, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(MixedOperations.apply, (big.clone().requires_grad_(),
                                                            small.clone().requires_grad_(), coefficients))


def test_a_fresh_node_mixes_its_operations_about_equally():
    torch.manual_seed(0)
    weights = torch.stack([Node().weights() for _ in range(50)])
    assert (weights - 1 / 6).abs().max() < 1e-2 and weights.std(0).max() > 0  # near uniform, not exactly


def test_cells_and_inventories():
    with pytest.raises(ModtrainError, match="a cell reads 1 or 2 attention maps, not 3"):
        Cell(8, 3, answer=False)
    with pytest.raises(ModtrainError, match="LNMN inventory 10: valid: 9, 11, 14 modules"):
        LNMN(tokens=9, answers=5, features=4, dim=8, steps=3, stack=4, inventory=10)
    net = LNMN(tokens=9, answers=5, features=4, dim=8, steps=3, stack=4, embedding=6, hard_pointer=True)
    assert net.module_names == ("NoOp", "attention3_0", "attention3_1", "attention3_2", "attention3_3",
                                "attention4_0", "attention4_1", "answer3_0", "answer4_0")  # 9 by default
    assert [(c.maps, c.answer) for c in net.cells.values()] == [(1, False)] * 4 + [(2, False)] * 2 + [(1, True),
                                                                                                      (2, True)]
    assert net.hard_pointer and net.controller.embed.embedding_dim == 6 and net.cell3_pops  # popping by default
    net.set_hard(True)
    assert all(node.hard is True for cell in net.cells.values() for node in cell.nodes)
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


def _module(**hparams) -> LNMNModule:
    return build_module("lnmn", "typed", {"tokens": 9, "answers": 5, "features": 4},
                        **{"dim": 8, "steps": 3, "stack": 4, "embedding": 8, **hparams})


def _batch(size: int = 4) -> dict:
    return {"tokens": torch.randint(1, 9, (size, 5)), "lengths": torch.randint(1, 6, (size,)),
            "features": torch.randn(size, 4, 3, 3), "answer": torch.randint(0, 5, (size,))}


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _same(before, params) -> bool:
    return all(torch.equal(a, b) for a, b in zip(before, params))


def test_the_module_runs_its_network_in_float32_under_autocast():
    """The LSTM and the stack stay in float32 even inside an autocast region (the job's on CUDA):
    the module's answer is its network's, as computed without autocast."""
    torch.manual_seed(0)
    module = _module().eval()
    batch = _batch()
    with torch.no_grad():
        plain = module.constrain(module.net(batch["tokens"], batch["lengths"], batch["features"])[0])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = module(batch["tokens"], batch["lengths"], batch["features"])
    assert inside.dtype == torch.float32 and torch.allclose(inside, plain, atol=1e-6)


def test_the_module_passes_its_settings_to_its_network_and_optimizers():
    module = _module(hard_pointer=True, cell3_pops=False, hard_operations=True, embedding=6, structure_lr=0.02)
    assert module.net.hard_pointer and not module.net.cell3_pops and module.net.controller.embed.embedding_dim == 6
    assert all(node.hard for cell in module.net.cells.values() for node in cell.nodes)
    assert not any(node.hard for cell in _module().net.cells.values() for node in cell.nodes)
    assert _module().net.cell3_pops is True and _module().net.hard_pointer is False
    assert _module(grad_clip=3.0, ema_decay=0.5).training_settings() == {"grad_clip": 3.0, "ema_decay": 0.5}
    weights = module.configure_optimizers(lr=0.003, weight_decay=0.25)
    assert [(g["lr"], g["weight_decay"], g["betas"]) for g in weights.param_groups] == [(0.003, 0.25, (0.9, 0.999))]
    assert [(g["lr"], g["weight_decay"], g["betas"]) for g in module.structure_optimizer.param_groups] == \
        [(0.02, 1e-3, (0.5, 0.999))]  # LNMN §4


def test_the_alpha_steps_loss_is_the_search_batchs_nll_plus_the_sparsity_term():
    torch.manual_seed(0)
    module = _module(sparsity_weight=0.3)
    batch = _batch()
    module.eval()  # the same forward twice
    logits = module(batch["tokens"], batch["lengths"], batch["features"])
    expected = F.cross_entropy(logits, batch["answer"]) - 0.3 * module.net.sparsity()
    assert module.search_loss(batch).item() == pytest.approx(expected.item(), rel=1e-5)
    # a large λ_op: the α step makes the nodes sparser
    strong = _module(sparsity_weight=100.0, structure_lr=0.05)
    strong.configure_optimizers(lr=1e-3, weight_decay=0.0)
    before = strong.net.sparsity().item()
    for _ in range(3):
        strong.after_step(_batch())
    assert strong.net.sparsity().item() > before


def test_the_weight_step_never_changes_alpha_and_the_alpha_step_never_changes_weights():
    torch.manual_seed(0)
    module = _module(structure_lr=1e-2)
    structure = {id(p) for p in module.structure_parameters()}
    assert structure and all(id(p) not in structure for p in module.weight_parameters())
    assert len(structure) + len(module.weight_parameters()) == len(list(module.parameters()))
    # the loop's optimizer holds the weights alone; α has its own, made with it
    weights_optimizer = module.configure_optimizers(lr=1e-2, weight_decay=0.0)
    assert [id(p) for g in weights_optimizer.param_groups for p in g["params"]] == \
        [id(p) for p in module.weight_parameters()]
    assert {id(p) for g in module.structure_optimizer.param_groups for p in g["params"]} == structure
    batch = _batch()
    # a weight step as the loop takes it: its backward reaches α too, but only the weights move
    weights, alphas = _snapshot(module.weight_parameters()), _snapshot(module.structure_parameters())
    weights_optimizer.zero_grad(set_to_none=True)
    logits = module(batch["tokens"], batch["lengths"], batch["features"])
    (F.cross_entropy(logits, batch["answer"]) + module.auxiliary_loss(batch, epoch=1)).backward()
    assert all(p.grad is not None for p in module.structure_parameters())
    weights_optimizer.step()
    assert _same(alphas, module.structure_parameters()) and not _same(weights, module.weight_parameters())
    # the α step on a held-out batch: only α moves, and no gradient of the weights is left behind
    weights, alphas = _snapshot(module.weight_parameters()), _snapshot(module.structure_parameters())
    module.after_step(_batch())
    assert _same(weights, module.weight_parameters()) and not _same(alphas, module.structure_parameters())
    assert all(p.grad is None for p in module.weight_parameters())


def test_the_alpha_step_ignores_the_gradient_the_weight_step_left_on_alpha():
    torch.manual_seed(0)
    clean, dirty = _module(structure_lr=1e-2), _module(structure_lr=1e-2)
    dirty.load_state_dict(clean.state_dict())
    for module in (clean, dirty):
        module.configure_optimizers(lr=1e-2, weight_decay=0.0)
    for p in dirty.parameters():
        p.grad = torch.full_like(p, 100.0)
    batch, initial = _batch(), _snapshot(clean.structure_parameters())
    clean.after_step(batch)
    dirty.after_step(batch)
    assert not _same(initial, clean.structure_parameters())
    assert _same(_snapshot(clean.structure_parameters()), dirty.structure_parameters())


def test_the_search_split_is_a_fraction_of_the_training_rows_drawn_from_the_seed():
    module = _module(search_fraction=0.1)
    rows = np.arange(100, 400)
    search = module.hold_out(rows, seed=0)
    assert len(search) == 30 and set(search) <= set(rows) and np.array_equal(search, np.unique(search))
    assert np.array_equal(module.hold_out(rows, 0), search) and not np.array_equal(module.hold_out(rows, 1), search)
    assert len(module.hold_out(np.arange(3), 0)) == 1  # never empty: α always has questions to learn from
    for fraction in (0.0, 1.0):  # no search split, or no training questions left
        with pytest.raises(ModtrainError, match="search_fraction"):
            _module(search_fraction=fraction)


def test_the_checkpoint_restores_alphas_optimizer(caplog):
    torch.manual_seed(0)
    module = _module()
    module.configure_optimizers(lr=1e-2, weight_decay=0.0)
    module.after_step(_batch())
    saved = module.extra_state()
    resumed = _module()
    resumed.configure_optimizers(lr=1e-2, weight_decay=0.0)
    resumed.load_extra_state(saved)
    state = resumed.structure_optimizer.state_dict()["state"]
    assert state and all(torch.equal(v["exp_avg"], saved["structure_optimizer"]["state"][k]["exp_avg"])
                         for k, v in state.items())
    older = _module()  # a checkpoint of an older modtrain, without it: α's Adam starts over, and says so
    older.configure_optimizers(lr=1e-2, weight_decay=0.0)
    older.load_extra_state({})
    assert older.structure_optimizer.state_dict()["state"] == {} and "starts over" in caplog.text


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
    from modtrain.recipe import Recipe
    from modtrain.workdir import Workdir

    _, workdir, _, _ = tiny_run
    recipe = Recipe.load("lnmn", ["data.families='no-relate'", "train.max_epochs=2", "train.patience=2",
                                  "train.device='cpu'", "train.batch_size=64", "train.lr=0.002",
                                  "modules.lnmn.dim=16", "modules.lnmn.steps=4",
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
    assert len(job.held_out_rows) == round(0.1 * trainable)
    assert (len(job.train_rows) + len(job.held_out_rows) == trainable
            and not set(job.held_out_rows) & set(job.train_rows))
    # α's optimizer and the search batches' stream are checkpointed: a resumed job continues them
    job._setup_model()
    job._setup_optimizer()
    job.epoch = 1
    job._after_step(1, 1)
    saved = job._extra_state()
    following = job.held_out_batches.integers(1 << 30)
    resumed = Job(run, recipe, torch.device("cpu"), joint_spec(make_plan(recipe, end_to_end=True), "e2e"))
    resumed._setup_data()
    resumed._setup_model()
    resumed._setup_optimizer()
    resumed._restore_extra_state(saved)
    assert resumed.held_out_batches.integers(1 << 30) == following
    state = resumed.modules["lnmn"].structure_optimizer.state_dict()["state"]
    assert state and all(torch.equal(v["exp_avg"], saved["module"]["structure_optimizer"]["state"][k]["exp_avg"])
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


# -- in a modtrain job, on tiny data ---------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(tiny_clevr, tmp_path_factory):
    """The tiny CLEVR folder, prepared, with random image features."""
    from modtrain.datasets.clevr import ClevrFolder
    from modtrain.datasets.prepare import prepare

    data = tmp_path_factory.mktemp("lnmn") / "data"
    shutil.copytree(tiny_clevr, data)
    (data / "features").mkdir()
    folder = ClevrFolder(data)
    for split in folder.splits():
        with h5py.File(data / "features" / f"{split}.h5", "w") as f:
            f.create_dataset("features", data=np.random.default_rng(0).random((folder.num_images(split), 4, 3, 3),
                                                                               np.float32))
    prepare(data)
    return data


def _job(root, data):
    from modtrain.job import Job, joint_spec
    from modtrain.plan import make_plan
    from modtrain.recipe import Recipe
    from modtrain.workdir import Workdir

    recipe = Recipe.load("lnmn", ["train.max_epochs=2", "train.patience=2", "train.batch_size=32", "train.device='cpu'",
                                  "modules.lnmn.dim=8", "modules.lnmn.steps=3", "modules.lnmn.stack=4",
                                  "modules.lnmn.embedding=8", "modules.lnmn.structure_lr=0.01",
                                  "modules.lnmn.search_fraction=0.2"])
    plan = make_plan(recipe, end_to_end=True)
    return Job(Workdir(root, data), recipe, CPU, joint_spec(plan, "e2e"), plan=plan)


@pytest.mark.slow
def test_a_job_alternates_weight_steps_on_training_rows_and_alpha_steps_on_the_search_split(prepared, tmp_path,
                                                                                          monkeypatch):
    """LNMN Algorithm 2 in a real job: every weight step (α unchanged) is followed by an α step
    (the weights unchanged) on a batch of the search split, which no weight step sees."""
    steps = []  # (optimizer, whether the weights moved, whether α moved)
    configure = LNMNModule.configure_optimizers

    def recording(self, lr, weight_decay):
        weights = configure(self, lr, weight_decay)
        for name, optimizer in (("weights", weights), ("alpha", self.structure_optimizer)):
            def before(optimizer, args, kwargs, name=name):
                steps.append((name, _snapshot(self.weight_parameters()), _snapshot(self.structure_parameters())))

            def after(optimizer, args, kwargs):
                name, weights, alphas = steps[-1]
                steps[-1] = (name, not _same(weights, self.weight_parameters()),
                             not _same(alphas, self.structure_parameters()))
            optimizer.register_step_pre_hook(before)
            optimizer.register_step_post_hook(after)
        return weights
    monkeypatch.setattr(LNMNModule, "configure_optimizers", recording)
    job = _job(tmp_path / "run", prepared)
    loads, load = [], job._load

    def recording_load(split, rows):
        if split == "train":
            loads.append(rows.copy())
        return load(split, rows)
    job._load = recording_load
    job.run()
    search, batches = set(job.held_out_rows), -(-len(job.train_rows) // 32)
    assert len(search) == round(0.2 * (len(job.train_rows) + len(search))) and not search & set(job.train_rows)
    assert [name for name, _, _ in steps] == ["weights", "alpha"] * (2 * batches)
    assert all(weights and not alphas for name, weights, alphas in steps if name == "weights")
    assert all(alphas and not weights for name, weights, alphas in steps if name == "alpha")
    # a training batch, then a batch of the search split, step after step
    assert len(loads) == len(steps)
    assert all(not set(rows) & search for rows in loads[0::2]) and all(set(rows) <= search for rows in loads[1::2])


def _last_checkpoint(job) -> dict:
    """Run the job; its checkpoint after the last epoch (the live weights, their average, α's Adam)."""
    last = {}
    job.on_epoch = lambda metrics, path: last.update(torch.load(path, weights_only=False))
    job.run()
    return last


def _killed_after_epoch_1(job) -> None:
    def stop(metrics, path):
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt
    job.on_epoch = stop
    with pytest.raises(KeyboardInterrupt):
        job.run()


@pytest.mark.slow
def test_a_resumed_job_continues_alpha_and_its_search_batches_exactly(prepared, tmp_path):
    from modtrain.card import state_sha256

    whole = _last_checkpoint(_job(tmp_path / "whole", prepared))
    killed = _job(tmp_path / "resumed", prepared)
    _killed_after_epoch_1(killed)
    (tmp_path / "other" / "modules").mkdir(parents=True)
    shutil.copy(killed.checkpoint_path(), tmp_path / "other" / "modules")
    resumed = _last_checkpoint(_job(tmp_path / "resumed", prepared))
    assert state_sha256(resumed["model"]) == state_sha256(whole["model"])
    assert state_sha256(resumed["average"]["average"]) == state_sha256(whole["average"]["average"])
    # what kept them equal: the checkpoint's α optimizer and stream of search batches
    forgetting = _job(tmp_path / "other", prepared)
    forgetting._restore_extra_state = lambda saved: None
    other = _last_checkpoint(forgetting)
    alphas = [k for k in whole["model"] if k.endswith(".alpha")]
    assert alphas and not all(torch.equal(whole["model"][k], other["model"][k]) for k in alphas)


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


def _one_hot_ops(cell: Cell, *ops: str) -> Cell:
    with torch.no_grad():
        for node, op in zip(cell.nodes, ops):
            node.alpha.copy_(torch.full((6,), -1e4))
            node.alpha[OPERATIONS.index(op)] = 0.0
    return cell


def test_each_cell_is_the_expression_of_its_one_hot_operations():
    """A cell's nodes in their order, with their inputs in their order (LNMN §3.1), written out by
    hand: node 1 of a 3-input cell is (conv_1(I), a), node 2 (node 1, W_1 c); a 4-input cell's
    node 1 is (a_1, a_2), node 2 (node 1, conv_1(I)), node 3 (node 2, W_1 c)."""
    torch.manual_seed(0)
    x, c, memory = torch.randn(2, 8, 3, 3), torch.randn(2, 8), torch.randn(2, 8)
    a1, a2 = torch.randn(2, 3, 3), torch.randn(2, 3, 3)
    cell = Cell(8, 1, answer=False)
    image, text = cell.conv1(x), cell.text(c)[:, :, None, None].expand(-1, -1, 3, 3)

    def attention(cell, h):
        return cell.out(h).squeeze(1)

    assert torch.allclose(_one_hot_ops(cell, "choose_1", "choose_1")(x, c, [a1]), attention(cell, image))
    assert torch.allclose(_one_hot_ops(cell, "choose_2", "choose_1")(x, c, [a1]),
                          attention(cell, a1[:, None].expand(-1, 8, -1, -1)))
    assert torch.allclose(_one_hot_ops(cell, "min", "choose_2")(x, c, [a1]), attention(cell, text))
    assert torch.allclose(_one_hot_ops(cell, "sum", "product")(x, c, [a1]),
                          attention(cell, (image + a1[:, None]) * text))
    cell = Cell(8, 2, answer=False)
    image, text = cell.conv1(x), cell.text(c)[:, :, None, None]
    assert torch.allclose(_one_hot_ops(cell, "choose_1", "choose_1", "choose_1")(x, c, [a1, a2]),
                          attention(cell, a1[:, None].expand(-1, 8, -1, -1)))
    assert torch.allclose(_one_hot_ops(cell, "choose_2", "choose_1", "choose_1")(x, c, [a1, a2]),
                          attention(cell, a2[:, None].expand(-1, 8, -1, -1)))
    assert torch.allclose(_one_hot_ops(cell, "min", "sum", "product")(x, c, [a1, a2]),
                          attention(cell, (torch.minimum(a1, a2)[:, None] + image) * text))
    assert torch.allclose(_one_hot_ops(cell, "max", "choose_2", "choose_1")(x, c, [a1, a2]), attention(cell, image))
    cell = Cell(8, 1, answer=True)
    image, text = cell.conv1(x), cell.text(c)
    assert torch.allclose(_one_hot_ops(cell, "choose_2", "choose_1")(x, c, [a1], memory),
                          cell.out(torch.cat([a1.sum((1, 2))[:, None].expand(-1, 8), text, memory], 1)))
    assert torch.allclose(_one_hot_ops(cell, "max", "product")(x, c, [a1], memory),
                          cell.out(torch.cat([(torch.maximum(image, a1[:, None]) * text[:, :, None, None]).sum((2, 3)),
                                              text, memory], 1)), atol=1e-5)
    cell = Cell(8, 2, answer=True)
    assert torch.allclose(_one_hot_ops(cell, "choose_1", "choose_1", "choose_1")(x, c, [a1, a2], memory),
                          cell.out(torch.cat([a1.sum((1, 2))[:, None].expand(-1, 8), cell.text(c), memory], 1)))


@pytest.mark.parametrize("pops,hard,inventory", [(True, False, 9), (False, False, 9), (True, True, 9),
                                                  (True, False, 14)])
def test_each_cell_pops_its_maps_and_pushes_its_output(pops, hard, inventory):
    """One step of each cell from a stack holding two maps (slots 1 and 2, pointer at 2): a 3-input
    attention cell pops its map and pushes its output (LNMN §3.1), or with ``cell3_pops`` false
    keeps it and pushes on top; from the empty stack it pushes to slot 1 either way. A 4-input
    attention cell pops two and pushes one; answer cells pop their maps and write the memory.
    The step runs a group's cells as one (soft operations) or one by one (``hard``): each cell's
    output must be its own ``Cell.forward``'s, with α far from uniform and different in every node
    (a coefficient given to the wrong cell or node would show)."""
    torch.manual_seed(0)
    net = LNMN(tokens=9, answers=5, features=4, dim=8, steps=2, stack=5, inventory=inventory,
               **({} if pops else {"cell3_pops": False}))  # popping is the default
    with torch.no_grad():
        for alpha in net.structure_parameters():
            alpha.normal_(0, 2)
    net.set_hard(hard)
    x, c, memory = torch.randn(2, 8, 3, 3), torch.randn(2, 8), torch.randn(2, 8)
    first, second = torch.randn(2, 3, 3), torch.randn(2, 3, 3)
    stack = torch.zeros(2, 5, 3, 3)
    stack[:, 1], stack[:, 2] = first, second
    image = net.prepare(x)
    with torch.no_grad():
        out = net.step(image, c, stack, F.one_hot(torch.full((2,), 2), 5).float(), memory)
        empty = net.step(image, c, torch.zeros(2, 5, 3, 3), F.one_hot(torch.zeros(2, dtype=torch.long), 5).float(),
                         memory)
    cells = net.cells
    for name, cell in cells.items():
        new_stack, pointer, new_memory = out[name]
        slot = pointer.argmax(1).tolist()
        if cell.answer:
            assert slot == ([1, 1] if cell.maps == 1 else [0, 0]) and torch.equal(new_stack, stack)
            maps = [second] if cell.maps == 1 else [first, second]
            assert torch.allclose(new_memory, cell(x, c, maps, memory)), name
            continue
        assert torch.equal(new_memory, memory), name
        if cell.maps == 2:
            assert slot == [1, 1] and torch.allclose(new_stack[:, 1], cell(x, c, [first, second])), name
            continue
        output = cell(x, c, [second])
        if pops:
            assert slot == [2, 2] and torch.equal(new_stack[:, 1], first), name
            assert torch.allclose(new_stack[:, 2], output), name
        else:
            assert slot == [3, 3] and torch.equal(new_stack[:, 1:3], stack[:, 1:3]), name
            assert torch.allclose(new_stack[:, 3], output), name
        empty_stack, empty_pointer, _ = empty[name]
        assert empty_pointer.argmax(1).tolist() == [1, 1]
        assert torch.allclose(empty_stack[:, 1], cell(x, c, [torch.zeros(2, 3, 3)])), name


def test_the_regularizers_push_the_way_the_paper_says():
    """The weight step's term is −λ_w·H(w): while λ_w > 0 minimizing it raises the controller's
    entropy (exploration), once λ_w < 0 it lowers it (LNMN §3.2). The α step's term is
    −λ_op·Σ‖σ(α)‖₂/‖σ(α)‖₁: a gradient step on it makes every node's σ(α) sparser."""
    torch.manual_seed(0)
    module = _module(entropy_zero_epoch=2.0, entropy_end_epoch=4.0, sparsity_weight=0.5)
    batch = _batch()
    module(batch["tokens"], batch["lengths"], batch["features"])
    entropy = module_entropy(module.explained["module_weights"])
    assert module.auxiliary_loss(batch, epoch=1).item() == pytest.approx(-entropy.item())        # λ_w = +1
    assert module.auxiliary_loss(batch, epoch=2).item() == pytest.approx(-0.5 * entropy.item())  # λ_w = 0.5
    assert module.auxiliary_loss(batch, epoch=5).item() == pytest.approx(entropy.item())         # λ_w = −1
    assert module.structure_loss().item() == pytest.approx(-0.5 * module.net.sparsity().item())
    with torch.no_grad():
        for a in module.structure_parameters():
            a.normal_()
    before = module.net.sparsity().item()
    module.structure_loss().backward()
    with torch.no_grad():
        for a in module.structure_parameters():
            a -= 0.5 * a.grad
    assert module.net.sparsity().item() > before + 0.01

"""A module that answers alone asks for what its training needs through its training hooks
(``NMNModule``): here one registered only in this file, which ``Job`` trains without knowing it."""
import shutil

import h5py
import numpy as np
import pytest
import torch
import torch._dynamo
from modtrain.datasets.clevr import ClevrFolder
from modtrain.datasets.prepare import prepare
from torch import nn

from modtrain.card import load_card
from modtrain.job import Job, joint_spec
from modtrain.plan import make_plan
from modtrain.recipe import Recipe
from modtrain.registry import MODULES, NMNModule, register_module
from modtrain.workdir import Workdir

CPU = torch.device("cpu")
CLIP = 0.05


class Guess(NMNModule):
    """Answer logits from the question's words alone, and an answer bias (``shift``) that only
    its own step trains, on the questions it holds out; every call of a hook is recorded."""

    inputs = ("Tokens",)
    output = "Prior"
    defaults = {"width": 8}
    needs = ("tokens", "answers")
    calls: list[tuple] = []  # (hook, what it was given), in order, for every module built

    def __init__(self, interface, dims, instances, hparams):
        super().__init__(interface, dims, instances, hparams)
        self.embed = nn.Embedding(self.dims["tokens"], hparams["width"], padding_idx=0)
        self.out = nn.Linear(hparams["width"], self.dims["answers"])
        self.shift = nn.Parameter(torch.zeros(self.dims["answers"]))
        self.own_steps = 0

    def forward(self, tokens, lengths):
        return self.constrain(self.out(self.embed(tokens).mean(1)) + self.shift)

    def question_targets(self, data_root, split):
        self.calls.append(("question_targets", split.name))
        return {"row": np.arange(len(split)), "answer_again": split.answer.astype(np.int64)}

    def hold_out(self, rows, seed):
        self.calls.append(("hold_out", rows.copy()))
        return rows[::4]

    def configure_optimizers(self, lr, weight_decay):
        self.calls.append(("configure_optimizers", (lr, weight_decay)))
        self.shift_optimizer = torch.optim.SGD([self.shift], lr=0.1)
        weights = torch.optim.Adam([*self.embed.parameters(), *self.out.parameters()], lr=lr)

        def seen(optimizer, args, kwargs):  # the gradient the weight step takes, clipped or not
            norm = torch.cat([p.grad.flatten() for g in optimizer.param_groups for p in g["params"]]).norm()
            self.calls.append(("weight step", (norm.item(), self.shift.detach().clone())))
            self.calls.append(("shift's gradient", None if self.shift.grad is None else self.shift.grad.clone()))
        weights.register_step_pre_hook(seen)
        return weights

    def training_settings(self):
        self.calls.append(("training_settings", None))
        return {"grad_clip": CLIP}

    def auxiliary_loss(self, batch, epoch):
        self.calls.append(("auxiliary_loss", (epoch, batch["row"].numpy().copy(),
                                              torch.equal(batch["answer_again"], batch["answer"]))))
        return 0.01 * self.out.weight.pow(2).sum()

    def after_step(self, held_out):
        before = self.shift.detach().clone()
        self.shift_optimizer.zero_grad(set_to_none=True)
        logits = self(held_out["tokens"], held_out["lengths"])
        torch.nn.functional.cross_entropy(logits, held_out["answer"]).backward()
        self.shift_optimizer.step()
        self.calls.append(("shift's gradient", self.shift.grad.clone()))
        self.own_steps += 1
        self.calls.append(("after_step", (held_out["row"].numpy().copy(), before, self.shift.detach().clone())))

    def extra_state(self):
        return {"own_steps": self.own_steps}

    def load_extra_state(self, saved):
        self.calls.append(("load_extra_state", dict(saved)))
        self.own_steps = saved["own_steps"]


@pytest.fixture
def guess():
    register_module("guess")(Guess)
    Guess.calls = []
    try:
        yield Guess
    finally:
        MODULES.pop("guess", None)


@pytest.fixture(scope="module")
def prepared(tiny_clevr, tmp_path_factory):
    """The tiny CLEVR folder, prepared, with random image features."""
    data = tmp_path_factory.mktemp("hooks") / "data"
    shutil.copytree(tiny_clevr, data)
    (data / "features").mkdir()
    folder = ClevrFolder(data)
    for split in folder.splits():
        with h5py.File(data / "features" / f"{split}.h5", "w") as f:
            f.create_dataset("features", data=np.random.default_rng(0).random((folder.num_images(split), 4, 3, 3),
                                                                               np.float32))
    prepare(data)
    return data


def _recipe(max_epochs: int, *settings: str) -> Recipe:
    raw = Recipe.load("film", [f"train.max_epochs={max_epochs}", f"train.patience={max_epochs}", "train.batch_size=32",
                               "train.lr=0.01", "train.weight_decay=0", "train.device='cpu'", *settings]).raw
    raw.update(name="guess", modules={"guess": {"width": 8}})
    raw.pop("search")
    return Recipe(raw, "test recipe")


def _job(recipe: Recipe, root, data) -> Job:
    plan = make_plan(recipe, end_to_end=True)
    return Job(Workdir(root, data), recipe, CPU, joint_spec(plan, "e2e"), plan=plan)


def test_a_module_registered_only_here_is_trained_through_its_hooks(guess, prepared, tmp_path):
    job = _job(_recipe(2), tmp_path / "run", prepared)
    card = job.run()
    assert card["name"] == "guess" and load_card(tmp_path / "run" / "modules", "guess")["metrics"]["epochs"] == 2
    module, calls = job.modules["guess"], guess.calls
    hooks = [name for name, _ in calls]
    # the data: each split's targets; a quarter of the training rows held out of the weight steps
    assert hooks[:3] == ["question_targets", "question_targets", "hold_out"]
    assert [given for name, given in calls[:2]] == ["train", "val"]
    trainable = calls[2][1]
    held_out = trainable[::4]
    assert (np.array_equal(job.held_out_rows, held_out)
            and np.array_equal(job.train_rows, np.setdiff1d(trainable, held_out)))
    # the optimizer it made, with the recipe's settings, is the loop's; and the loop clips as asked
    assert hooks[3:5] == ["configure_optimizers", "training_settings"]
    assert calls[3][1] == (0.01, 0.0)
    steps = [given for name, given in calls if name == "weight step"]
    batches = -(-len(job.train_rows) // 32)
    assert len(steps) == 2 * batches and all(norm <= CLIP + 1e-6 for norm, _ in steps)
    assert max(norm for norm, _ in steps) > CLIP * 0.99  # clipped to it: the gradients are larger
    # every step: the weight step with the auxiliary loss, on training rows alone, then the module's own
    # step on a batch of the held-out rows
    per_step = [name for name in hooks if name in ("auxiliary_loss", "weight step", "after_step")]
    assert per_step == ["auxiliary_loss", "weight step", "after_step"] * (2 * batches)
    auxiliary = [given for name, given in calls if name == "auxiliary_loss"]
    assert [epoch for epoch, _, _ in auxiliary] == [1] * batches + [2] * batches
    assert all(aligned for _, _, aligned in auxiliary)  # the targets are the batch's own rows'
    for epoch in (1, 2):
        rows = np.concatenate([r for e, r, _ in auxiliary if e == epoch])
        assert np.array_equal(np.sort(rows), job.train_rows)  # each training row once per epoch, none held out
    own = [given for name, given in calls if name == "after_step"]
    for rows, _, _ in own:
        assert len(rows) == min(32, len(held_out)) and set(rows) <= set(held_out)
    # the shift, outside the loop's optimizer: the weight steps' backward never reaches it (no
    # gradient computed to be thrown away), the weight steps leave it, the module's own steps move it
    grads = [grad for name, grad in calls if name == "shift's gradient"]  # weight step, own step, weight step, ...
    assert grads[0] is None and all(torch.equal(grads[k], grads[k + 1]) for k in range(1, len(grads) - 1, 2))
    assert module.own_steps == len(own) == len(steps)
    for (_, at_weight_step), (_, before, after) in zip(steps, own):
        assert torch.equal(at_weight_step, before) and not torch.equal(before, after)
    assert all(torch.equal(after, steps[k + 1][1]) for k, (_, _, after) in enumerate(own[:-1]))


def _last_weights(job: Job) -> dict[str, torch.Tensor]:
    """Run the job; the weights after its last epoch (the card keeps the best epoch's)."""
    last = {}

    def keep(metrics, path):
        last.update(torch.load(path, weights_only=False)["model"])
    job.on_epoch = keep
    job.run()
    return last


def _killed_after_epoch_1(job: Job) -> None:
    def stop(metrics, path):
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt
    job.on_epoch = stop
    with pytest.raises(KeyboardInterrupt):
        job.run()


@pytest.mark.slow
def test_a_resumed_job_gives_the_module_its_extra_state_and_the_same_held_out_batches(guess, prepared, tmp_path):
    """Killed after epoch 1 of 2, then resumed: the same weights as one run, the module's own
    steps continuing where they stopped."""
    whole = _last_weights(_job(_recipe(2), tmp_path / "whole", prepared))
    first = _job(_recipe(2), tmp_path / "resumed", prepared)
    _killed_after_epoch_1(first)
    (tmp_path / "other" / "modules").mkdir(parents=True)
    shutil.copy(first.checkpoint_path(), tmp_path / "other" / "modules")
    steps_of_epoch_1 = first.modules["guess"].own_steps
    guess.calls.clear()
    resumed = _job(_recipe(2), tmp_path / "resumed", prepared)
    last = _last_weights(resumed)
    assert ("load_extra_state", {"own_steps": steps_of_epoch_1}) in guess.calls
    assert resumed.modules["guess"].own_steps == 2 * steps_of_epoch_1
    assert whole.keys() == last.keys() and all(torch.equal(whole[k], last[k]) for k in whole)
    # the checkpoint's stream of held-out batches is what kept them equal: without it, the
    # module's own steps of epoch 2 see other rows
    forgetting = _job(_recipe(2), tmp_path / "other", prepared)
    forgetting._restore_extra_state = lambda saved: None
    other = _last_weights(forgetting)
    assert not torch.equal(whole["guess.shift"], other["guess.shift"])


def test_a_job_with_train_compile_runs_its_modules_compiled_to_the_same_weights(guess, prepared, tmp_path):
    """``train.compile`` compiles each module the job calls (here with torch's "eager" backend,
    which traces and runs the traced graph as is: fast enough for a test, and bit-identical), and
    the weights are those of the eager job; "off" compiles nothing."""
    plain = _job(_recipe(1), tmp_path / "plain", prepared)
    eager = _last_weights(plain)
    assert plain.modules["guess"]._compiled_call_impl is None
    torch._dynamo.reset()
    traced = _job(_recipe(1, "train.compile='eager'"), tmp_path / "traced", prepared)
    compiled = _last_weights(traced)
    assert traced.modules["guess"]._compiled_call_impl is not None
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # traced, not run eagerly
    assert eager.keys() == compiled.keys() and all(torch.equal(eager[k], compiled[k]) for k in eager)
    with pytest.raises(Exception, match="compile"):
        _recipe(1, "train.compile='fast'")

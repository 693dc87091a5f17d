"""What a module can ask of the training loop (Stack-NMN's training): global-norm gradient
clipping, and a moving average of the weights that is validated and kept."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from modtrain.recipe import TrainSection
from modtrain.train import TrainingLoop, WeightAverage
from modtrain.workdir import Workdir


class Toy(TrainingLoop):
    """A linear classifier on fixed random data, through the real loop."""

    def __init__(self, root: Path, settings: dict, max_epochs: int = 3):
        self.name, self.seed, self.device, self.settings = "toy", 0, torch.device("cpu"), settings
        self.workdir = Workdir(root / "work", root / "data")
        self.config = TrainSection(lr=0.5, batch_size=16, max_epochs=max_epochs, patience=10, device="cpu")
        self.key = {"data_fingerprint": "toy"}
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(96, 5, generator=generator) * 30  # large inputs: large gradients
        self.y = (self.x[:, 0] > 0).long() + (self.x[:, 1] > 0).long()
        self.norms: list[float] = []
        self.steps: list[dict] = []

    def _setup_data(self):
        self.train_rows, self.val_rows = np.arange(64), np.arange(64, 96)

    def _setup_model(self):
        self.model = nn.Linear(5, 3)

    def _setup_optimizer(self):
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.config.lr)

        def seen(optimizer, args, kwargs):  # the gradient the optimizer steps with
            self.norms.append(torch.cat([p.grad.flatten() for p in self.model.parameters()]).norm().item())
        self.optimizer.register_step_pre_hook(seen)

    def _after_step(self, epoch, batch):
        self.steps.append({k: v.clone() for k, v in self.model.state_dict().items()})

    def _training_settings(self):
        return self.settings

    def _load(self, split, rows):
        return {"x": self.x[rows], "answer": self.y[rows]}

    def _forward(self, batch):
        return F.log_softmax(self.model(batch["x"]), dim=1)

    def _save(self, key_hash, state):
        return {"weights": {k: v.clone() for k, v in self.model.state_dict().items()}, "state": state}


def test_gradients_are_clipped_to_the_global_norm_the_module_asks_for(tmp_path):
    free = Toy(tmp_path / "free", {})
    free.run()
    assert max(free.norms) > 5  # without clipping, the steps take gradients far above the bound
    clipped = Toy(tmp_path / "clipped", {"grad_clip": 1.0})
    clipped.run()
    assert len(clipped.norms) == len(free.norms) and max(clipped.norms) <= 1.0 + 1e-5
    assert max(clipped.norms) > 0.99  # clipped to it, not zeroed


def test_the_moving_average_is_what_is_validated_and_kept(tmp_path):
    toy = Toy(tmp_path / "ema", {"ema_decay": 0.9})
    result = toy.run()
    # recompute the average from the weights after every step, with TensorFlow's warm-up
    initial = Toy(tmp_path / "init", {})
    torch.manual_seed(0)
    initial._setup_model()
    average = {k: v.clone() for k, v in initial.model.state_dict().items()}
    averages = []
    for n, weights in enumerate(toy.steps, 1):
        decay = min(0.9, (1 + n) / (10 + n))
        average = {k: decay * average[k] + (1 - decay) * weights[k] for k in average}
        averages.append(average)
    best = result["state"]["best_metrics"]["epoch"]
    kept = averages[best * 4 - 1]  # 64 rows in batches of 16: 4 steps per epoch
    assert all(torch.allclose(result["weights"][k], kept[k], atol=1e-6) for k in kept)
    assert not torch.allclose(result["weights"]["weight"], toy.steps[best * 4 - 1]["weight"])
    # the validation metrics are the average's
    toy.model.load_state_dict(kept)
    assert toy._validate()["val_accuracy"] == pytest.approx(result["state"]["best_metrics"]["val_accuracy"])


def test_weight_average_swaps_in_and_back():
    model = nn.Linear(2, 2)
    average = WeightAverage(model, 0.5)
    own = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update(model)  # n = 1: decay min(0.5, 2/11)
    expected = own + (1 - 2 / 11) * 1.0
    with average.applied(model):
        assert torch.allclose(model.weight, expected)
    assert torch.allclose(model.weight, own + 1.0)
    saved = average.state_dict()
    other = WeightAverage(nn.Linear(2, 2), 0.5)
    other.load_state_dict(saved)
    assert other.updates == 1 and torch.allclose(other.average["weight"], expected)


def test_a_resumed_job_continues_the_average_exactly(tmp_path):
    """Killed after epoch 2 of 3 (the checkpoint kept), then resumed: the same result as one run."""
    whole = Toy(tmp_path / "whole", {"ema_decay": 0.9, "grad_clip": 2.0}).run()
    first = Toy(tmp_path / "resumed", {"ema_decay": 0.9, "grad_clip": 2.0}, max_epochs=2)
    first.checkpoint_path = lambda: tmp_path / "resumed.ckpt"
    first.on_epoch = lambda metrics, path: (_ for _ in ()).throw(KeyboardInterrupt) if metrics["epoch"] == 2 else None
    with pytest.raises(KeyboardInterrupt):
        first.run()
    second = Toy(tmp_path / "resumed", {"ema_decay": 0.9, "grad_clip": 2.0}, max_epochs=3)
    second.checkpoint_path = lambda: tmp_path / "resumed.ckpt"
    resumed = second.run()
    assert all(torch.equal(whole["weights"][k], resumed["weights"][k]) for k in whole["weights"])


def test_divergence_and_the_logged_loss_are_the_answers_alone(tmp_path):
    """An auxiliary term (LNMN's −λ_w·entropy) can make the total loss negative: the loop judges
    divergence, and logs the training loss, on the answer's loss alone."""
    class Negative(Toy):
        def _auxiliary_loss(self, batch):
            return -100.0 + 0 * self.model.weight.sum()

    result = Negative(tmp_path / "negative", {}, max_epochs=2).run()  # not "diverged"
    plain = Toy(tmp_path / "plain", {}, max_epochs=2).run()  # the same steps: the term has no gradient
    losses = [m["train_loss"] for m in result["state"]["history"]]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert losses == [m["train_loss"] for m in plain["state"]["history"]]

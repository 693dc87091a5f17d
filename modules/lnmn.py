"""LNMN (Pahuja et al., "Structure Learning for Neural Module Networks"): Stack-NMN whose modules
are generic *cells* whose structure is learned (LNMN §3).

- A node mixes six elementwise operations of its two inputs by softmax(α): min, max, sum,
  product, choose_1, choose_2 (LNMN §3.1); with ``hard`` the argmax operation alone (LNMN Table 2's
  "hard-max for operation weights, for inference only").
- A 3-input cell (image features I, text c, one attention map a): node 1 (conv_1(I), a), node 2
  (node 1, W_1 c). A 4-input cell (I, c, a_1, a_2): node 1 (a_1, a_2), node 2 (node 1, conv_1(I)),
  node 3 (node 2, W_1 c). Attention maps are broadcast over the feature channels.
- Attention cells end in a 1×1 convolution to one channel. Answer cells sum the last node over
  the grid and give the memory W_2[v; W_1 c; memory] (LNMN §3.1.2).
- Inventories (LNMN Table 3; a NoOp in all): 9 modules = 4 attention-3, 2 attention-4, 1 answer-3,
  1 answer-4; 11 = 4, 2, 2, 2; 14 = 5, 4, 2, 2.
- On the stack, every cell pops its input maps, and an attention cell pushes its output (LNMN
  §3.1): a 3-input attention cell replaces the top (from the empty stack it pushes, as Find does:
  the pop stays at the bottom guard), a 4-input one pops two and pushes one, an answer cell pops
  its one or two maps, and NoOp keeps everything, the memory included. The authors' code writes a
  3-input cell's output in place with the pointer unchanged; that differs from pop-then-push only
  at the bottom guard. With ``cell3_pops = false`` a 3-input cell keeps its input and pushes on
  top of it instead (modtrain's earlier choice): only then can two attention maps be on the stack
  for a 4-input cell, since nothing else pushes. It is a setting, not the default, because the
  paper's cells pop.
- Sizes are scaled down for this CPU (d = 64, T = 12, L = 8, word embedding 64, against the
  authors' d = 512, T = 9, L = 8, embedding 300); the optimizer is theirs (``recipes/lnmn.toml``:
  Adam 1e-4 for the weights, batch 32; α as below).
- Training alternates a weight step on a training batch with an α step on a batch of a separate
  search split (LNMN Algorithm 2): ``weight_parameters`` and ``structure_parameters`` are disjoint.
  The weight step adds −λ_w·mean_t H(w^(t)), the controller's entropy, with λ_w annealed from +1 to −1
  (``entropy_weight``). The α step adds −λ_op·Σ‖σ(α)‖₂/‖σ(α)‖₁ (``sparsity``). Both are taken as
  batch means.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from modtrain.modules.snmn import StackNMN, module_entropy, move_down, move_up, read, write
from torch import nn

from modtrain.errors import ModtrainError

OPERATIONS = ("min", "max", "sum", "product", "choose_1", "choose_2")
INVENTORIES = {9: (4, 2, 1, 1), 11: (4, 2, 2, 2), 14: (5, 4, 2, 2)}


def operation(name: str, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    if name == "min":
        return torch.minimum(x1, x2)
    if name == "max":
        return torch.maximum(x1, x2)
    if name == "sum":
        return x1 + x2
    if name == "product":
        return x1 * x2
    return x1 if name == "choose_1" else x2


class Node(nn.Module):
    """softmax(α)-weighted sum of the six operations of two inputs."""

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(len(OPERATIONS)) + 1e-3 * torch.randn(len(OPERATIONS)))
        self.hard = False
        self.removed: set[str] = set()  # operations zeroed out (LNMN Table 7)

    def weights(self) -> torch.Tensor:
        if self.hard:
            return F.one_hot(self.alpha.argmax(), len(OPERATIONS)).to(self.alpha.dtype)
        w = torch.softmax(self.alpha, 0)
        if self.removed:
            keep = torch.tensor([o not in self.removed for o in OPERATIONS], dtype=w.dtype, device=w.device)
            w = w * keep
        return w

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        if self.hard:
            return operation(OPERATIONS[int(self.alpha.argmax())], x1, x2)
        # Σ w_o·o(x1, x2) in closed form: min and max are (x1 + x2 ∓ |x1 − x2|) / 2, so the six
        # operations cost one abs, one product and three scalings (min/max's own backward passes
        # were most of LNMN's time); the value and every gradient are the weighted sum's.
        w_min, w_max, w_sum, w_product, w_1, w_2 = self.weights()
        mean = (w_min + w_max) / 2 + w_sum
        return (mean + w_1) * x1 + (mean + w_2) * x2 + (w_max - w_min) / 2 * (x1 - x2).abs() + w_product * (x1 * x2)


class Cell(nn.Module):
    """A generic module with 3 inputs (one attention map) or 4 (two), giving an attention map or memory."""

    def __init__(self, dim: int, maps: int, answer: bool):
        super().__init__()
        if maps not in (1, 2):
            raise ModtrainError(f"a cell reads 1 or 2 attention maps, not {maps}")
        self.maps, self.answer = maps, answer
        self.nodes = nn.ModuleList(Node() for _ in range(maps + 1))
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.text = nn.Linear(dim, dim)                                # W_1
        self.out = nn.Linear(3 * dim, dim) if answer else nn.Conv2d(dim, 1, 1)

    def forward(self, x, c, maps: list[torch.Tensor], memory: torch.Tensor | None = None,
                projected: torch.Tensor | None = None) -> torch.Tensor:
        """``projected``: conv_1(x), when the caller computed it once for every step."""
        image = self.conv1(x) if projected is None else projected
        text = self.text(c)[:, :, None, None]
        spread = [m[:, None] for m in maps]  # attention maps broadcast over the channels
        if self.maps == 1:
            h = self.nodes[1](self.nodes[0](image, spread[0]), text)
        else:
            h = self.nodes[2](self.nodes[1](self.nodes[0](spread[0], spread[1]), image), text)
        h = torch.broadcast_to(h, image.shape)  # a hard choose_2 of the text alone is the text everywhere
        if self.answer:
            return self.out(torch.cat([h.sum((2, 3)), self.text(c), memory], dim=1))
        return self.out(h).squeeze(1)


class LNMN(StackNMN):
    """Stack-NMN with cells for modules: NoOp, then the inventory's attention-3, attention-4,
    answer-3 and answer-4 cells, in that order."""

    def __init__(self, tokens: int, answers: int, features: int, dim: int = 128, steps: int = 12,
                 stack: int = 8, hard_pointer: bool = False, embedding: int = 128, inventory: int = 9,
                 cell3_pops: bool = True):
        if inventory not in INVENTORIES:
            raise ModtrainError(f"LNMN inventory {inventory}: valid: {', '.join(map(str, INVENTORIES))} modules")
        kinds = [("attention", 1), ("attention", 2), ("answer", 1), ("answer", 2)]
        specs = [(f"{kind}{maps + 2}_{i}", maps, kind == "answer")
                 for (kind, maps), n in zip(kinds, INVENTORIES[inventory]) for i in range(n)]
        self.module_names = ("NoOp", *[name for name, _, _ in specs])
        self.cell3_pops = cell3_pops
        super().__init__(tokens, answers, features, dim, steps, stack, hard_pointer, embedding)
        del self.ops  # Stack-NMN's hand-designed modules: replaced by the cells
        self.cells = nn.ModuleDict({name: Cell(dim, maps, answer) for name, maps, answer in specs})

    def prepare(self, x: torch.Tensor):
        """The image and every cell's conv_1 of it (computed once per question, not per step)."""
        return {"x": x, **{name: cell.conv1(x) for name, cell in self.cells.items()}}

    def step(self, image, c, stack, pointer, memory):
        x, out = image["x"], {"NoOp": (stack, pointer, memory)}
        top = read(stack, pointer)
        below = move_down(pointer)
        second = read(stack, below)
        pushed = move_up(below if self.cell3_pops else pointer)  # a 3-input cell's pop (or not), then its push
        for name, cell in self.cells.items():
            if cell.answer:
                maps = [top] if cell.maps == 1 else [second, top]
                out[name] = (stack, below if cell.maps == 1 else move_down(below),
                             cell(x, c, maps, memory, image[name]))
            elif cell.maps == 1:
                out[name] = (write(stack, pushed, cell(x, c, [top], projected=image[name])), pushed, memory)
            else:
                out[name] = (write(stack, below, cell(x, c, [second, top], projected=image[name])), below, memory)
        return out

    def structure_parameters(self) -> list[nn.Parameter]:
        """The α of every node: what the architecture step trains."""
        return [node.alpha for cell in self.cells.values() for node in cell.nodes]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Everything else: what the weight step trains."""
        structure = {id(p) for p in self.structure_parameters()}
        return [p for p in self.parameters() if id(p) not in structure]

    def set_hard(self, hard: bool) -> None:
        """Inference with each node's argmax operation alone (LNMN Table 2)."""
        for cell in self.cells.values():
            for node in cell.nodes:
                node.hard = hard

    def sparsity(self) -> torch.Tensor:
        """Σ over nodes of ‖σ(α)‖₂ / ‖σ(α)‖₁: 1 for a one-hot σ(α), 1/√6 for a uniform one."""
        return sum(torch.softmax(a, 0).norm(2) / torch.softmax(a, 0).norm(1) for a in self.structure_parameters())


def entropy_weight(epoch: float, zero_at: float = 20, end_at: float = 30) -> float:
    """λ_w of LNMN §3.2: from +1 to 0 linearly over the first ``zero_at`` epochs (20), then to −1
    at ``end_at`` (30). A shorter training can scale both (the module's ``entropy_zero_epoch`` and
    ``entropy_end_epoch``) so that it still ends sharpening."""
    if epoch <= zero_at:
        return 1.0 - epoch / zero_at
    return max(-1.0, -(epoch - zero_at) / (end_at - zero_at))


# -- as a modtrain module ------------------------------------------------------------------------------

from modtrain.modules.snmn import EMA_DECAY  # noqa: E402

from modtrain.registry import NMNModule, register_module  # noqa: E402  (after the network it wraps)
from modtrain.values import Range  # noqa: E402

log = logging.getLogger(__name__)


@register_module("lnmn")
class LNMNModule(NMNModule):
    """LNMN as a modtrain module, trained end to end like Stack-NMN (``recipes/lnmn.toml``), by
    LNMN Algorithm 2 through the training hooks (``NMNModule``): the job holds ``search_fraction``
    of the training questions out as the search split (never the reported validation set); the
    weight steps (Adam with the recipe's settings, α left out) add the entropy term, and after
    each one the module takes an α step of its own on a batch of the search split, with the
    sparsity term, both as batch means. The weight steps are clipped and averaged as Stack-NMN's
    (``grad_clip``, ``ema_decay``); α's Adam is checkpointed with the job."""

    inputs = ("Tokens", "Features")
    output = "Prior"
    version = 2  # 2: 3-input attention cells pop their input (the paper's stack)
    defaults = {"dim": 64, "steps": 12, "stack": 8, "embedding": 64, "hard_pointer": False, "inventory": 9,
                "structure_lr": 3e-4, "sparsity_weight": 1.0, "search_fraction": 0.1, "hard_operations": False,
                "grad_clip": 8.0, "ema_decay": 0.999,  # LNMN trains on Stack-NMN's code: its clipping and average
                "entropy_zero_epoch": 20.0, "entropy_end_epoch": 30.0,  # λ_w's schedule (LNMN §3.2)
                "cell3_pops": True}  # a 3-input attention cell pops its input (LNMN §3.1); false: keeps it
    limits = {"ema_decay": EMA_DECAY, "search_fraction": Range(low=0.0, high=1.0, low_open=True, high_open=True),
              "entropy_zero_epoch": Range(low=0.0, low_open=True), "entropy_end_epoch": Range(low=0.0, low_open=True)}
    needs = ("tokens", "answers", "features")

    def __init__(self, interface, dims, instances, hparams):
        super().__init__(interface, dims, instances, hparams)
        self.net = LNMN(self.dims["tokens"], self.dims["answers"], self.dims["features"], hparams["dim"],
                        hparams["steps"], hparams["stack"], bool(hparams["hard_pointer"]), hparams["embedding"],
                        int(hparams["inventory"]), bool(hparams["cell3_pops"]))
        self.net.set_hard(bool(hparams["hard_operations"]))
        self.explained: dict | None = None
        self.structure_optimizer: torch.optim.Optimizer | None = None  # α's, made with the weights'

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(tokens.device.type, enabled=False):
            logits, self.explained = self.net(tokens, lengths, features.float())
        return self.constrain(logits)

    def structure_parameters(self) -> list[nn.Parameter]:
        return self.net.structure_parameters()

    def weight_parameters(self) -> list[nn.Parameter]:
        return self.net.weight_parameters()  # the module holds nothing but its network

    # -- training hooks (LNMN Algorithm 2) ------------------------------------------------------

    def hold_out(self, rows: np.ndarray, seed: int) -> np.ndarray:
        """The search split: ``search_fraction`` of the training questions (at least one)."""
        order = np.random.default_rng([seed, 7]).permutation(rows)
        return np.sort(order[:max(1, int(round(self.hparams["search_fraction"] * len(order))))])

    def configure_optimizers(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """The weights' Adam with the recipe's settings; α's: Adam 3e-4 (``structure_lr``), β (0.5,
        0.999), weight decay 1e-3 (LNMN §4)."""
        self.structure_optimizer = torch.optim.Adam(self.structure_parameters(), lr=self.hparams["structure_lr"],
                                                    betas=(0.5, 0.999), weight_decay=1e-3)
        return torch.optim.Adam(self.weight_parameters(), lr=lr, weight_decay=weight_decay)

    def training_settings(self) -> dict[str, float]:
        return {"grad_clip": self.hparams["grad_clip"], "ema_decay": self.hparams["ema_decay"]}

    def auxiliary_loss(self, batch: dict, epoch: int) -> torch.Tensor:
        """−λ_w(epoch) × the mean entropy of the batch's module weights (λ_w: +1 → 0 at
        ``entropy_zero_epoch`` → −1 at ``entropy_end_epoch``)."""
        weight = entropy_weight(epoch - 1, self.hparams["entropy_zero_epoch"], self.hparams["entropy_end_epoch"])
        return -weight * module_entropy(self.explained["module_weights"])

    def after_step(self, held_out: dict) -> None:
        """The α step on a batch of the search split: its answers' NLL − λ_op × Σ ‖σ(α)‖₂/‖σ(α)‖₁."""
        self.zero_grad(set_to_none=True)  # the weight step's backward reached α too
        self.search_loss(held_out).backward()
        self.structure_optimizer.step()
        for p in self.weight_parameters():  # the α step leaves no gradient of the weights behind
            p.grad = None

    def search_loss(self, held_out: dict) -> torch.Tensor:
        """The α step's loss on a search batch: the answers' mean NLL plus the sparsity term."""
        logits = self(held_out["tokens"], held_out["lengths"], held_out["features"])
        return F.nll_loss(F.log_softmax(logits, dim=-1).float(), held_out["answer"]) + self.structure_loss()

    def structure_loss(self) -> torch.Tensor:
        """−λ_op × Σ ‖σ(α)‖₂/‖σ(α)‖₁ (the sparsity term of the α step)."""
        return -self.hparams["sparsity_weight"] * self.net.sparsity()

    def extra_state(self) -> dict:
        return {"structure_optimizer": self.structure_optimizer.state_dict()}

    def load_extra_state(self, saved: dict) -> None:
        if "structure_optimizer" not in saved:  # a checkpoint of an older modtrain: α's Adam starts over
            log.warning("the checkpoint holds no optimizer of LNMN's α; its state starts over")
            return
        self.structure_optimizer.load_state_dict(saved["structure_optimizer"])

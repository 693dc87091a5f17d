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
- For speed on a CPU (``bench/bench_speed.py``), a node's six operations are one closed form with
  a backward of its own (``MixedOperations``), and a step runs the cells that read one map as one
  and those that read two as one (``LNMN.step_parts``); the tests hold both to ``Cell.forward`` and
  to the weighted sum of the six operations written out.
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
from modtrain.modules.snmn import Part, Pointwise, StackNMN, module_entropy, move_down, move_up, read
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


# Σ_o w_o·o(x1, x2) = A·x1 + B·x2 + C·|x1 − x2| + D·x1·x2: min and max are (x1 + x2 ∓ |x1 − x2|) / 2.
# The rows give (A, B, C, D) from the six weights (min, max, sum, product, choose_1, choose_2).
_COEFFICIENTS = torch.tensor([[0.5, 0.5, 1.0, 0.0, 1.0, 0.0],    # A
                              [0.5, 0.5, 1.0, 0.0, 0.0, 1.0],    # B
                              [-0.5, 0.5, 0.0, 0.0, 0.0, 0.0],   # C
                              [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])   # D


def _joint(shape: torch.Size, other: torch.Size) -> tuple[int, ...]:
    """The broadcast of two shapes (torch.broadcast_shapes took 40 µs a call)."""
    n = max(len(shape), len(other))
    shape, other = (1,) * (n - len(shape)) + tuple(shape), (1,) * (n - len(other)) + tuple(other)
    return tuple(max(p, q) for p, q in zip(shape, other))


class MixedOperations(torch.autograd.Function):
    """A·x1 + B·x2 + C·|x1 − x2| + D·x1·x2 and its gradients in a few passes over the full tensor.

    Autograd of the expression written out takes ~9 passes over the (B, d, H, W) tensor forward
    and ~25 backward (a product, a sum of products for each scalar's gradient, the broadcast
    input's reductions); this takes 4 and ~10: the terms that do not need the full tensor are
    combined on the smaller input first (x·(A + D·y) + B·y), and the coefficients' gradients are
    read off reductions the inputs' gradients need anyway. ``big`` is the larger input, of the
    output's shape where the step runs (``other`` broadcasts against it; where neither has the
    output's shape, autograd sums ``big``'s gradient to its shape); ``coefficients`` is (A, B, C, D)
    for (big, other), stacked on its first dimension: four scalars, or four tensors that broadcast
    against the inputs (one coefficient per cell when several cells run as one)."""

    @staticmethod
    def forward(ctx, big, other, coefficients):
        a, b, c, d = coefficients.unbind()
        difference = big - other
        out = torch.addcmul(b * other, big, a + d * other)
        out.addcmul_(difference.abs(), c)
        ctx.save_for_backward(big, other, coefficients, difference)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        big, other, coefficients, difference = ctx.saved_tensors
        a, b, c, d = coefficients.unbind()
        signed = grad * difference.sign()                              # g·sign(x1 − x2)
        grad_big = grad_other = grad_coefficients = None
        if ctx.needs_input_grad[0]:
            grad_big = torch.addcmul(grad * (a + d * other), signed, c)
        needs_other, needs_coefficients = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        if needs_other or needs_coefficients:
            joint = _joint(other.shape, a.shape)                       # what ``other`` and a coefficient span
            grad_sum = grad.sum_to_size(joint)                         # Σ g over the rest
            grad_big_sum = (grad * big).sum_to_size(joint)             # Σ g·x1 likewise
            if needs_other:
                grad_other = (b * grad_sum + d * grad_big_sum - c * signed.sum_to_size(joint)).sum_to_size(other.shape)
            if needs_coefficients:
                def total(t):
                    return t.sum() if a.dim() == 0 else t.sum_to_size(a.shape)
                grad_coefficients = torch.stack([total(grad_big_sum), total(grad_sum * other),
                                                 total(signed * difference), total(grad_big_sum * other)])
                grad_coefficients = grad_coefficients.to(coefficients.dtype)
        return grad_big, grad_other, grad_coefficients


def mix_terms(coefficients: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """A·x1 + B·x2 + C·|x1 − x2| + D·x1·x2 for ``coefficients`` (A, B, C, D) stacked on the first
    dimension, through ``MixedOperations`` with the larger input first."""
    if x2.numel() > x1.numel():
        x1, x2, coefficients = x2, x1, coefficients[[1, 0, 2, 3]]  # A and B trade places
    return MixedOperations.apply(x1, x2, coefficients)


def mix_operations(weights: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Σ_o w_o·o(x1, x2) over the six operations, in closed form (``mix_terms``); the value and
    every gradient are the weighted sum's. ``weights`` (6,), or (6, ...) per cell."""
    return mix_terms(mix_coefficients(weights), x1, x2)


def mix_coefficients(weights: torch.Tensor) -> torch.Tensor:
    """(A, B, C, D) of ``mix_terms`` from the six operations' weights (6, ...), in their dtype."""
    return torch.tensordot(_COEFFICIENTS.to(weights), weights, 1)


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
        # the closed form: the six operations cost one abs and one product (min/max's own backward
        # passes, then the written-out form's, were most of LNMN's time)
        return mix_operations(self.weights(), x1, x2)


class Cell(nn.Module):
    """A generic module with 3 inputs (one attention map) or 4 (two), giving an attention map or memory."""

    def __init__(self, dim: int, maps: int, answer: bool):
        super().__init__()
        if maps not in (1, 2):
            raise ModtrainError(f"a cell reads 1 or 2 attention maps, not {maps}")
        self.maps, self.answer = maps, answer
        self.nodes = nn.ModuleList(Node() for _ in range(maps + 1))
        self.conv1 = Pointwise(dim, dim)
        self.text = nn.Linear(dim, dim)                                # W_1
        self.out = nn.Linear(3 * dim, dim) if answer else Pointwise(dim, 1)

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
        # the cells that run as one in a step: by the maps they read, attention cells first
        self.groups = {maps: [name for name, m, answer in sorted(specs, key=lambda spec: spec[2]) if m == maps]
                       for maps in (1, 2)}

    def prepare(self, x: torch.Tensor):
        """The image and every cell's conv_1 of it, computed once per question (not per step), for
        the cells of each group (``groups``: those reading one map, those reading two) in one
        product; and what the steps read of each group's parameters: its text projections W_1
        stacked, its nodes' coefficients (``mix_terms``) and its attention cells' conv_2."""
        b, _, h, w = x.shape
        image = {"x": x, "hard": self.hard()}  # read by every step: asked once
        for maps, names in self.groups.items():
            cells = [self.cells[name] for name in names]
            weight = torch.cat([cell.conv1.weight.flatten(1) for cell in cells])
            bias = torch.cat([cell.conv1.bias for cell in cells])
            projected = (torch.matmul(weight, x.flatten(2)) + bias[:, None]).view(b, len(cells), -1, h * w)
            image[maps] = projected                                      # (B, K, d, H·W)
            image.update((name, projected[:, k].view(b, -1, h, w)) for k, name in enumerate(names))
            if image["hard"]:
                continue  # the cells run one by one, each with its argmax operations
            attention = [cell for cell in cells if not cell.answer]
            image["text", maps] = (torch.cat([cell.text.weight for cell in cells]),
                                   torch.cat([cell.text.bias for cell in cells]))
            image["nodes", maps] = [  # (A, B, C, D) per cell, for each node
                mix_coefficients(torch.stack([cell.nodes[i].weights() for cell in cells], 1)).view(4, 1, -1, 1, 1)
                for i in range(maps + 1)]
            image["out", maps] = (torch.cat([cell.out.weight.flatten(1) for cell in attention])[:, None],
                                  torch.cat([cell.out.bias for cell in attention])[:, None])
        return image

    def hard(self) -> bool:
        """Whether a node runs its argmax operation alone (``set_hard``)."""
        return any(node.hard for cell in self.cells.values() for node in cell.nodes)

    def step_parts(self, image, c, stack, pointer, memory):
        """Every cell's step. The cells of a group run as one: their nodes on (B, K, d, H·W)
        tensors with a coefficient per cell, their attention maps in one product; each cell
        computes what ``Cell.forward`` does (tests/modules/test_lnmn.py holds the two equal)."""
        out = {"NoOp": Part(pointer, memory)}
        top = read(stack, pointer)
        below = move_down(pointer)
        second = read(stack, below)
        below_two = move_down(below)
        pushed = move_up(below if self.cell3_pops else pointer)  # a 3-input cell's pop (or not), then its push

        def part(cell, value):
            if cell.answer:
                return Part(below if cell.maps == 1 else below_two, value)
            at = pushed if cell.maps == 1 else below
            return Part(at, memory, at, value)

        if image["hard"]:
            for name, cell in self.cells.items():
                maps = [top] if cell.maps == 1 else [second, top]
                out[name] = part(cell, cell(image["x"], c, maps, memory, image[name]))
            return out
        b, h, w = top.shape
        flat_top = top.view(b, 1, 1, h * w)
        for maps, names in self.groups.items():
            text = F.linear(c, *image["text", maps]).view(b, len(names), -1, 1)         # (B, K, d, 1)
            nodes = image["nodes", maps]
            if maps == 1:
                x = mix_terms(nodes[1], mix_terms(nodes[0], image[maps], flat_top), text)
            else:
                pair = mix_terms(nodes[0], second.view(b, 1, 1, h * w), flat_top)
                x = mix_terms(nodes[2], mix_terms(nodes[1], pair, image[maps]), text)
            weight, bias = image["out", maps]
            attention = len(weight)                         # the group's attention cells come first
            maps_out = (torch.matmul(weight, x[:, :attention]).squeeze(2) + bias).view(b, attention, h, w)
            summed = x[:, attention:].sum(3)
            for k, name in enumerate(names):
                cell = self.cells[name]
                if cell.answer:
                    j = k - attention
                    value = cell.out(torch.cat([summed[:, j], text[:, k, :, 0], memory], dim=1))
                else:
                    value = maps_out[:, k]
                out[name] = part(cell, value)
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
        self.zero_grad(set_to_none=True)  # whatever a backward left on α or the weights
        # α's gradient alone: the weights' would be discarded (the α step leaves none behind)
        self.search_loss(held_out).backward(inputs=self.structure_parameters())
        self.structure_optimizer.step()

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

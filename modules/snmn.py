"""Stack-NMN (Hu et al., ECCV 2018): a controller chooses a soft mixture of modules at each of T
steps, and the modules communicate through a differentiable stack of attention maps ("Stack-NMN"
in the papers folder: controller, stack, modules).

- Controller: a length-masked BiLSTM encodes the question (h_s per word, q the two final states);
  at step t, u = W2[W1(t)·q + b1; c(t−1)] + b2 with a W1(t) of its own per step, the module
  weights are softmax(MLP(u)), and the control vector c_t is the text attention
  softmax_s(W3(u ⊙ h_s)) (padding masked out) applied to h_s.
- Stack: L attention maps (logits over the H × W grid) and a soft pointer, a distribution over the
  L slots. Push moves the pointer up and writes there, pop reads there and moves it down; the top
  and bottom slots guard the ends (a push at the top or a pop at the bottom stays). After each step
  the pointer is sharpened: hard (one-hot of its argmax) or soft (softmax of pointer / 0.2).
- Modules run every step; the stack, the pointer and the memory become their average by the module
  weights (``mix``: in one batched product, without building each module's stack). Every module
  but the answering ones carries the memory forward (NoOp included: the reference code's NoOp
  zeroed it, so an answer followed by NoOp padding was lost); Answer and
  Compare write it from [c_t; the previous memory; W(c_t) ⊙ the attended features] (the reference
  code's Describe modules), so a second answer can build on the first. The output is an MLP on
  [q; memory].
- Deliberate differences from the reference code, kept for this CPU or for the typed stack: no
  l2-normalisation inside the modules; Answer and Compare pop their maps (the reference's CLEVR
  setting keeps them); sizes are scaled down (d = 64, T = 12, L = 8, word embedding 64, against
  d = 512, T = 9, L = 8 (its CLEVR VQA setting), embedding 300). Its optimizer (Adam 1e-4, weight
  decay 1e-5, batch 64, clipping at 8, weight average 0.999) is ``recipes/snmn-*.toml``'s.

The per-module computations are plain functions of their inputs (``find``, ``transform``, ...), so
``DiscreteExecutor`` can run a layout with a Python list as the stack: with one-hot module weights
and a hard pointer the soft network computes exactly that (tests/modules/test_snmn.py).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modtrain.errors import ModtrainError

MODULES = ("NoOp", "Find", "Transform", "Filter", "And", "Or", "Scene", "Answer", "Compare")
ANSWERING = ("Answer", "Compare")
SOFT_TEMPERATURE = 0.2


# -- the stack -------------------------------------------------------------------------------------

def move_up(pointer: torch.Tensor) -> torch.Tensor:
    """The pointer one slot up (push); at the top slot it stays (top guard)."""
    moved = torch.zeros_like(pointer)
    moved[:, 1:] = pointer[:, :-1]
    moved[:, -1] += pointer[:, -1]
    return moved


def move_down(pointer: torch.Tensor) -> torch.Tensor:
    """The pointer one slot down (pop); at the bottom slot it stays (bottom guard)."""
    moved = torch.zeros_like(pointer)
    moved[:, :-1] = pointer[:, 1:]
    moved[:, 0] += pointer[:, 0]
    return moved


def read(stack: torch.Tensor, pointer: torch.Tensor) -> torch.Tensor:
    """The map at the pointer: (B, L, H, W), (B, L) → (B, H, W)."""
    return (stack * pointer[:, :, None, None]).sum(1)


def write(stack: torch.Tensor, pointer: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` written at the pointer (softly: slot l keeps 1 − pointer_l of what it held)."""
    p = pointer[:, :, None, None]
    return value[:, None] * p + stack * (1 - p)


def push(stack, pointer, value):
    pointer = move_up(pointer)
    return write(stack, pointer, value), pointer


def pop(stack, pointer):
    return read(stack, pointer), move_down(pointer)


class Part(NamedTuple):
    """One module's step: the pointer and memory it leaves, and the map it writes (``value``, at
    ``at``; None for a module that writes nothing). Modules that share a pointer or a memory
    share the tensor itself: ``mix`` weighs each distinct tensor once."""
    pointer: torch.Tensor
    memory: torch.Tensor
    at: torch.Tensor | None = None
    value: torch.Tensor | None = None

    def apply(self, stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the module's stack, its pointer, its memory)."""
        return (stack if self.value is None else write(stack, self.at, self.value)), self.pointer, self.memory


def _weighted(tensors: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Σ_m weights[:, m] · tensors[m], each distinct tensor multiplied once by its summed weight."""
    groups: list[tuple[torch.Tensor, list[int]]] = []
    for m, tensor in enumerate(tensors):
        same = [ms for seen, ms in groups if seen is tensor]  # by identity ("is": torch.compile traces it)
        if same:
            same[0].append(m)
        else:
            groups.append((tensor, [m]))
    total = None
    for tensor, ms in groups:
        w = weights[:, ms[0]] if len(ms) == 1 else weights[:, ms].sum(1)
        term = w.view(-1, *[1] * (tensor.dim() - 1)) * tensor
        total = term if total is None else total + term
    return total


def mix(parts: list[Part], weights: torch.Tensor, stack: torch.Tensor):
    """The modules' average by ``weights`` (B, M): Σ_m w_m·(stack, pointer, memory) of each
    ``part.apply(stack)``, computed without each module's stack. A written stack is
    value ⊗ at + stack ⊙ (1 − at), so the average is stack ⊙ (Σ_m w_m − Σ_writers w_m·at_m) +
    Σ_writers (w_m·at_m) ⊗ value_m: one batched product for every writing module."""
    writers = [(m, part) for m, part in enumerate(parts) if part.value is not None]
    pointer, memory = _weighted([p.pointer for p in parts], weights), _weighted([p.memory for p in parts], weights)
    if not writers:
        return stack * weights.sum(1)[:, None, None, None], pointer, memory
    b, slots, h, w = stack.shape
    at = torch.stack([weights[:, m, None] * part.at for m, part in writers], 1)           # (B, K, L)
    values = torch.stack([part.value for _, part in writers], 1).reshape(b, len(writers), h * w)
    keep = weights.sum(1, keepdim=True) - at.sum(1)                                     # (B, L)
    mixed = torch.baddbmm((stack * keep[:, :, None, None]).view(b, slots, h * w), at.transpose(1, 2), values)
    return mixed.view(b, slots, h, w), pointer, memory


def sharpen(pointer: torch.Tensor, hard: bool) -> torch.Tensor:
    if hard:
        return F.one_hot(pointer.argmax(1), pointer.shape[1]).to(pointer.dtype)
    return torch.softmax(pointer / SOFT_TEMPERATURE, dim=1)


def attend(attention: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Σ softmax(attention) ⊙ features over the grid: (B, H, W), (B, D, H, W) → (B, D)."""
    weights = torch.softmax(attention.flatten(1), dim=1).view_as(attention)
    return (features * weights[:, None]).sum((2, 3))


# -- the network -----------------------------------------------------------------------------------

class Pointwise(nn.Conv2d):
    """A 1 × 1 convolution computed as one matrix product over the grid: the same parameters (and
    state dict) as ``nn.Conv2d(in, out, 1)``, the same value up to rounding. On this CPU at the
    recipes' sizes (64 channels, an 8 × 8 grid, batches of 32–64) the convolution's forward and
    backward took 2.2× as long for 64 → 64 channels and 1.2× for 64 → 1 (mkldnn's reorders)."""

    def __init__(self, channels: int, out: int):
        super().__init__(channels, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        flat = torch.matmul(self.weight.view(self.out_channels, self.in_channels), x.flatten(2))
        return (flat + self.bias[:, None]).view(b, self.out_channels, h, w)


class Controller(nn.Module):
    """Question encoder and layout controller: module weights and a control vector per step."""

    def __init__(self, tokens: int, dim: int, steps: int, embedding: int = 128, modules: int = len(MODULES)):
        super().__init__()
        self.steps, self.dim = steps, dim
        self.embed = nn.Embedding(tokens, embedding, padding_idx=0)
        self.lstm = nn.LSTM(embedding, dim // 2, batch_first=True, bidirectional=True)
        self.per_step = nn.Parameter(torch.randn(steps, dim, dim) / dim ** 0.5)  # W1(t)
        self.per_step_bias = nn.Parameter(torch.zeros(dim))
        self.mix = nn.Linear(2 * dim, dim)                                      # W2, b2
        self.choose = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, modules))
        self.word = nn.Linear(dim, 1)                                           # W3
        self.c0 = nn.Parameter(torch.zeros(dim))

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor):
        """(module logits (B, T, M), control vectors (B, T, D), text attention (B, T, S), q (B, D))."""
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(tokens), lengths.clamp(min=1).cpu(),
                                                   batch_first=True, enforce_sorted=False)
        out, (h, _) = self.lstm(packed)
        words, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=tokens.shape[1])
        q = torch.cat([h[0], h[1]], dim=1)
        mask = torch.arange(tokens.shape[1], device=tokens.device)[None] < lengths.to(tokens.device)[:, None]
        c = self.c0.expand(len(tokens), -1)
        logits, controls, attentions = [], [], []
        for t in range(self.steps):
            u = self.mix(torch.cat([q @ self.per_step[t] + self.per_step_bias, c], dim=1))
            logits.append(self.choose(u))
            scores = self.word(u[:, None] * words).squeeze(2).masked_fill(~mask, float("-inf"))
            attention = torch.softmax(scores, dim=1)
            c = (attention[:, :, None] * words).sum(1)
            controls.append(c)
            attentions.append(attention)
        return torch.stack(logits, 1), torch.stack(controls, 1), torch.stack(attentions, 1), q


class StackModules(nn.Module):
    """The modules' computations, each a function of its inputs (no stack in here). What depends
    on the image alone (Find's and Transform's projections, Scene's map) is computed once per
    question by ``prepare``, not at every step: the steps read it from ``image``."""

    def __init__(self, dim: int):
        super().__init__()
        self.find_in, self.find_c, self.find_out = Pointwise(dim, dim), nn.Linear(dim, dim), Pointwise(dim, 1)
        self.tr_in, self.tr_att, self.tr_c = Pointwise(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.tr_out = Pointwise(dim, 1)
        self.scene_out = Pointwise(dim, 1)
        self.ans_att, self.ans_c, self.ans_out = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(3 * dim, dim)
        self.cmp_a1, self.cmp_a2, self.cmp_c = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.cmp_out = nn.Linear(3 * dim, dim)

    def prepare(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": x, "find": self.find_in(x), "transform": self.tr_in(x), "scene": self.scene_out(x).squeeze(1)}

    def find(self, image, c):
        return self.find_out(image["find"] * self.find_c(c)[:, :, None, None]).squeeze(1)

    def transform(self, image, c, a, attended: torch.Tensor | None = None):
        """``attended``: attend(a, x), when the step computed it for another module too."""
        attended = attend(a, image["x"]) if attended is None else attended
        gate = (self.tr_att(attended) * self.tr_c(c))[:, :, None, None]
        return self.tr_out(image["transform"] * gate).squeeze(1)

    def filter(self, image, c, a, found: torch.Tensor | None = None):
        """``found``: find(image, c), when the step computed it for Find."""
        return torch.minimum(a, self.find(image, c) if found is None else found)  # Filter is And(a, Find())

    def scene(self, image, c):
        return image["scene"]

    def answer(self, image, c, a, memory, attended: torch.Tensor | None = None):
        """The new memory from [c; memory; W(c) ⊙ the features attended by ``a``]."""
        attended = attend(a, image["x"]) if attended is None else attended
        return self.ans_out(torch.cat([c, memory, self.ans_att(attended) * self.ans_c(c)], dim=1))

    def compare(self, image, c, a1, a2, memory, attended: tuple[torch.Tensor, torch.Tensor] | None = None):
        """The new memory from [c; memory; W(c) ⊙ the features attended by ``a1`` and by ``a2``]."""
        first, second = (attend(a1, image["x"]), attend(a2, image["x"])) if attended is None else attended
        both = self.cmp_a1(first) * self.cmp_a2(second) * self.cmp_c(c)
        return self.cmp_out(torch.cat([c, memory, both], dim=1))


class StackNMN(nn.Module):
    """The whole Stack-NMN: features (B, C, H, W) and a question → answer logits."""

    module_names: tuple[str, ...] = MODULES

    def __init__(self, tokens: int, answers: int, features: int, dim: int = 128, steps: int = 12,
                 stack: int = 8, hard_pointer: bool = False, embedding: int = 128):
        super().__init__()
        self.steps, self.stack_size, self.hard_pointer = steps, stack, hard_pointer
        self.controller = Controller(tokens, dim, steps, embedding, len(self.module_names))
        self.image = nn.Sequential(nn.Conv2d(features, dim, 3, padding=1), nn.ELU(), nn.Conv2d(dim, dim, 3, padding=1))
        self.ops = StackModules(dim)
        self.output = nn.Sequential(nn.Linear(2 * dim, dim), nn.ELU(), nn.Linear(dim, answers))

    def prepare(self, x: torch.Tensor):
        """What the steps read of the image (computed once per question)."""
        return self.ops.prepare(x)

    def step(self, image, c, stack, pointer, memory):
        """Every module on the stack: {module: (stack, pointer, memory)}."""
        return {name: part.apply(stack) for name, part in self.step_parts(image, c, stack, pointer, memory).items()}

    def step_parts(self, image, c, stack, pointer, memory) -> dict[str, "Part"]:
        """Every module's step as a ``Part``: what it writes where, its pointer and its memory.
        Find's map and the features attended by the top and the second map are computed once
        for every module that reads them."""
        ops = self.ops
        top, below = read(stack, pointer), move_down(pointer)
        second, up = read(stack, below), move_up(pointer)
        found, attended = ops.find(image, c), attend(top, image["x"])
        both = (attend(second, image["x"]), attended)  # what Compare reads: the second map's, the top's
        return {
            "NoOp": Part(pointer, memory),
            "Find": Part(up, memory, up, found),
            "Scene": Part(up, memory, up, ops.scene(image, c)),
            "Transform": Part(pointer, memory, pointer, ops.transform(image, c, top, attended)),
            "Filter": Part(pointer, memory, pointer, ops.filter(image, c, top, found)),
            "And": Part(below, memory, below, torch.minimum(second, top)),
            "Or": Part(below, memory, below, torch.maximum(second, top)),
            "Answer": Part(below, ops.answer(image, c, top, memory, attended)),
            "Compare": Part(move_down(below), ops.compare(image, c, second, top, memory, both)),
        }

    def forward(self, tokens, lengths, features, module_weights: torch.Tensor | None = None):
        """Answer logits and what explains them: module weights (B, T, M), module logits, text
        attention (B, T, S), the top of the stack after each step (B, T, H, W). ``module_weights``
        replaces the controller's choice (the discrete-execution test, layout-forced runs)."""
        logits, controls, text, q = self.controller(tokens, lengths)
        weights = torch.softmax(logits, dim=2) if module_weights is None else module_weights
        x = self.image(features)
        b, _, h, w = x.shape
        stack = x.new_zeros(b, self.stack_size, h, w)
        pointer = F.one_hot(torch.zeros(b, dtype=torch.long, device=x.device), self.stack_size).to(x.dtype)
        memory = x.new_zeros(b, x.shape[1])
        image, tops = self.prepare(x), []
        for t in range(self.steps):
            parts = self.step_parts(image, controls[:, t], stack, pointer, memory)
            stack, pointer, memory = mix([parts[m] for m in self.module_names], weights[:, t], stack)
            pointer = sharpen(pointer, self.hard_pointer)
            tops.append(read(stack, pointer))
        answer = self.output(torch.cat([q, memory], dim=1))
        return answer, {"module_weights": weights, "module_logits": logits, "text_attention": text,
                        "tops": torch.stack(tops, 1)}


class DiscreteExecutor:
    """A layout run with a Python list as the stack, calling the same module computations: what
    the soft network must compute with one-hot module weights and a hard pointer."""

    def __init__(self, net: StackNMN):
        self.net = net
        self.tops: list[torch.Tensor] = []  # the map on top after each step of the last run (zeros: empty)

    def run(self, layout: list[str], tokens, lengths, features) -> torch.Tensor:
        _, controls, _, q = self.net.controller(tokens, lengths)
        x = self.net.image(features)
        ops, image = self.net.ops, self.net.prepare(x)
        stack: list[torch.Tensor] = []
        memory = x.new_zeros(len(x), x.shape[1])
        self.tops = []
        for t, module in enumerate(layout):
            c = controls[:, t]
            if module in ("Find", "Scene"):
                stack.append(ops.find(image, c) if module == "Find" else ops.scene(image, c))
            elif module in ("Transform", "Filter"):
                stack[-1] = (ops.transform(image, c, stack[-1]) if module == "Transform"
                             else ops.filter(image, c, stack[-1]))
            elif module in ("And", "Or"):
                a2, a1 = stack.pop(), stack.pop()
                stack.append(torch.minimum(a1, a2) if module == "And" else torch.maximum(a1, a2))
            elif module == "Answer":
                memory = ops.answer(image, c, stack.pop(), memory)
            elif module == "Compare":
                a2, a1 = stack.pop(), stack.pop()
                memory = ops.compare(image, c, a1, a2, memory)
            self.tops.append(stack[-1] if stack else x.new_zeros(len(x), *x.shape[2:]))
        return self.net.output(torch.cat([q, memory], dim=1))


def module_entropy(module_weights: torch.Tensor) -> torch.Tensor:
    """Mean over steps (and the batch) of the entropy of the controller's module weights."""
    return -(module_weights * module_weights.clamp_min(1e-12).log()).sum(-1).mean()


def one_hot_layout(layout: list[str], steps: int, batch: int = 1) -> torch.Tensor:
    """Module weights (batch, steps, M) that choose ``layout``'s modules (NoOp after it)."""
    if len(layout) > steps:
        raise ModtrainError(f"layout of {len(layout)} modules is longer than the {steps} steps")
    ids = [MODULES.index(m) for m in layout] + [0] * (steps - len(layout))
    return F.one_hot(torch.tensor(ids), len(MODULES)).float().expand(batch, -1, -1)


# -- ground-truth layouts from CLEVR programs --------------------------------------------------------

def program_layout(program, steps: int) -> list[str]:
    """The Stack-NMN layout of a CLEVR program (the reference code's rules): post-order from the
    root; ``unique`` dropped; a filter chain on ``scene`` is one Find, on anything else one Filter;
    ``scene`` alone is Scene; relate and same_* are Transform; intersect/union are And/Or;
    query_*, exist, count are Answer; a comparison is Compare, with its inputs' query/count nodes
    spliced out (Compare reads the two attentions). Padded with NoOp to ``steps``; a layout longer
    than ``steps`` is refused."""
    nodes = list(program)

    def visit(i: int) -> list[str]:
        node = nodes[i]
        f = node.function
        if f == "unique":
            return visit(node.inputs[0])
        if f == "scene":
            return ["Scene"]
        if f.startswith("filter_"):
            j = node.inputs[0]
            while nodes[j].function.startswith("filter_") or nodes[j].function == "unique":
                j = nodes[j].inputs[0]  # a chain of filters is one module
            return ["Find"] if nodes[j].function == "scene" else [*visit(j), "Filter"]
        if f == "relate" or f.startswith("same_"):
            return [*visit(node.inputs[0]), "Transform"]
        if f in ("intersect", "union"):
            return [*visit(node.inputs[0]), *visit(node.inputs[1]), "And" if f == "intersect" else "Or"]
        if f.startswith("query_") or f in ("exist", "count"):
            return [*visit(node.inputs[0]), "Answer"]
        if f.startswith("equal_") or f in ("less_than", "greater_than"):
            spliced = [nodes[j].inputs[0] if nodes[j].function.startswith("query_") or nodes[j].function == "count"
                       else j for j in node.inputs]
            return [*visit(spliced[0]), *visit(spliced[1]), "Compare"]
        raise ModtrainError(f"program node {i}: no Stack-NMN module for function {f!r}")

    layout = visit(len(nodes) - 1)
    if len(layout) > steps:
        raise ModtrainError(f"the program's Stack-NMN layout has {len(layout)} modules ({' '.join(layout)}), more "
                            f"than the {steps} steps; raise steps")
    return layout + ["NoOp"] * (steps - len(layout))


# -- as a modtrain module ------------------------------------------------------------------------------

from modtrain.registry import NMNModule, register_module  # noqa: E402  (after the network it wraps)
from modtrain.values import Range  # noqa: E402

EMA_DECAY = Range(low=0.0, high=1.0, high_open=True)  # the weight average's decay (Stack-NMN, LNMN)


@register_module("snmn")
class StackNMNModule(NMNModule):
    """Stack-NMN as a modtrain module: question + image → answer logits, trained end to end like
    FiLM (a recipe with ``snmn`` as its only module; the assembler evaluates it like any system).
    ``layout_weight`` 0 is the paper's "scratch" setting; above 0 the job adds that times the
    cross-entropy of the controller's module choice against the ground-truth layout of each
    question's CLEVR program (``program_layout``; questions without one are left out of it).

    Stack-NMN's training, as module settings (a [train] key would change every card's job key):
    gradients clipped to global norm ``grad_clip``, the weights' moving average (``ema_decay``)
    validated and kept, and for scratch runs the entropy sharpening loss: after
    ``sharpen_warmup`` epochs, ``sharpen_weight`` × the mean entropy of the module weights. The
    job asks for all of it through the training hooks (``NMNModule``)."""

    inputs = ("Tokens", "Features")
    output = "Prior"
    version = 2  # 2: Answer and Compare read the memory and the control vector
    defaults = {"dim": 64, "steps": 12, "stack": 8, "embedding": 64, "hard_pointer": False, "layout_weight": 0.0,
                "grad_clip": 8.0, "ema_decay": 0.999, "sharpen_weight": 0.0, "sharpen_warmup": 0}
    limits = {"sharpen_warmup": Range(low=0), "ema_decay": EMA_DECAY}
    needs = ("tokens", "answers", "features")

    def __init__(self, interface, dims, instances, hparams):
        super().__init__(interface, dims, instances, hparams)
        self.net = StackNMN(self.dims["tokens"], self.dims["answers"], self.dims["features"], hparams["dim"],
                            hparams["steps"], hparams["stack"], bool(hparams["hard_pointer"]), hparams["embedding"])
        self.explained: dict | None = None  # the last batch's module weights, text attention, tops

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        with torch.autocast(tokens.device.type, enabled=False):  # the LSTM and the stack in float32
            logits, self.explained = self.net(tokens, lengths, features.float())
        return self.constrain(logits)

    # -- training hooks -------------------------------------------------------------------------

    def question_targets(self, data_root, split) -> dict[str, np.ndarray]:
        """``layout_target``: each question's ground-truth layout, with layout supervision only."""
        if self.hparams["layout_weight"] <= 0:
            return {}
        return {"layout_target": self.layout_targets(data_root, split, self.hparams)}

    def training_settings(self) -> dict[str, float]:
        return {"grad_clip": self.hparams["grad_clip"], "ema_decay": self.hparams["ema_decay"]}

    def auxiliary_loss(self, batch: dict, epoch: int) -> torch.Tensor | float:
        """The sharpening term, and the layout loss of the batch's questions that have a layout."""
        loss = self.sharpening_loss(epoch)
        target = batch.get("layout_target")
        if target is None or not (target >= 0).any():
            return loss
        return loss + self.layout_loss(target)

    def sharpening_loss(self, epoch: int) -> torch.Tensor | float:
        """The entropy sharpening term (0 during the warm-up epochs and when ``sharpen_weight`` is 0)."""
        if self.hparams["sharpen_weight"] <= 0 or epoch <= self.hparams["sharpen_warmup"]:
            return 0.0
        return self.hparams["sharpen_weight"] * module_entropy(self.explained["module_weights"])

    def layout_loss(self, target: torch.Tensor) -> torch.Tensor:
        """``layout_weight`` × cross-entropy of the last batch's module choice against ``target``
        (B, steps) module ids, −1 where a question has no ground-truth layout."""
        logits = self.explained["module_logits"]
        return self.hparams["layout_weight"] * F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-1)

    @staticmethod
    def layout_targets(data_root, split, hparams: dict) -> np.ndarray:
        """(questions, steps) ground-truth module ids of a prepared split, from its CLEVR programs
        (rows in questions-file order); −1 for a question without a program or whose layout is
        longer than ``steps`` (counted in a warning)."""
        import logging

        from modtrain.datasets.folders import open_folder

        folder = open_folder(data_root)
        if folder.kind != "clevr":
            raise ModtrainError(f"{data_root}: layout supervision (snmn layout_weight > 0) needs CLEVR programs; "
                                f"this is a {folder.kind} folder: set modules.snmn.layout_weight = 0")
        steps = hparams["steps"]
        out = np.full((len(split), steps), -1, np.int64)
        too_long = 0
        for i, question in enumerate(folder.load_questions(split.name)):
            if question.program is None:
                continue
            try:
                out[i] = [MODULES.index(m) for m in program_layout(question.program, steps)]
            except ModtrainError:
                too_long += 1
        if too_long:
            logging.getLogger(__name__).warning("%s: %d questions' layouts are longer than %d steps: no layout "
                                                "supervision for them", split.name, too_long, steps)
        return out

"""One registry and one factory for modules and surrogates.

Modules register by name (``@register_module("find")``) and are built through
``build_module``; every registered entry gets the type-conformance test for free.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from modtrain.errors import ModtrainError
from modtrain.types import DataType, Interface, get_interface
from modtrain.values import Range, check_hyperparameters

if TYPE_CHECKING:  # the training hooks' annotations
    from pathlib import Path

    import numpy as np

    from modtrain.data import SplitData

MODULES: dict[str, type["NMNModule"]] = {}
SURROGATES: dict[str, type[nn.Module]] = {}


class NMNModule(nn.Module):
    """A module with a typed signature, an instance vocabulary and hyperparameters.

    ``inputs`` and ``output`` name data types (``Attention`` stands for the interface's
    attention type). ``forward`` takes the inputs in signature order and, for modules with
    instances, a LongTensor of per-sample instance ids; it returns the output with its
    type's hard constraint applied.
    """

    name: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]
    output: ClassVar[str]
    has_instances: ClassVar[bool] = False
    # No parameters: never trained, never in a recipe's [modules]; always available to layouts.
    parameter_free: ClassVar[bool] = False
    # Cheap enough that a job which reads the module's inputs anyway recomputes it, frozen,
    # instead of reading its virtual dataset (the plan says where it does).
    recompute: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}
    # Valid values of hyperparameters that the rule for their kind does not cover (modtrain.values)
    limits: ClassVar[dict[str, Range]] = {}
    # Dimensions the module needs: features (C), height, width, answers (A), tokens (V).
    needs: ClassVar[tuple[str, ...]] = ()
    # Raised when a change to the module makes weights trained before it unusable or different in
    # meaning: a job key holds every version above 1, so cards of an older version are out of date.
    version: ClassVar[int] = 1

    def __init__(self, interface: Interface, dims: dict[str, int], instances: list[str], hparams: dict[str, Any]):
        super().__init__()
        self.interface = interface
        self.dims = {k: int(dims[k]) for k in self.needs}
        self.instances = list(instances)
        self._instance_index = {n: i for i, n in enumerate(self.instances)}
        self.hparams = hparams

    def signature(self) -> tuple[tuple[DataType, ...], DataType]:
        """Input and output data types under this module's interface."""
        return tuple(self.interface.resolve(t) for t in self.inputs), self.interface.resolve(self.output)

    def constrain(self, raw: torch.Tensor) -> torch.Tensor:
        """Apply the output type's hard constraint (paper §3.2)."""
        return self.signature()[1].constrain(raw)

    def instance_ids(self, names: list[str], where: str = "") -> list[int]:
        """Ids of instance names, with a clear error for one the module was not trained on."""
        index = self._instance_index
        ids = []
        for n in names:
            if n not in index:
                raise ModtrainError(
                    f"{where + ': ' if where else ''}{self.name}[{n}] is not an instance of module "
                    f"{self.name}; its instances: {', '.join(self.instances) or 'none'}"
                )
            ids.append(index[n])
        return ids

    @property
    def trainable(self) -> bool:
        return any(True for _ in self.parameters())

    # -- training hooks ----------------------------------------------------------------------
    # What a module that answers alone asks of its training beyond the answer's loss and Adam. A
    # job that trains such a module by itself, end to end and without a layout (FiLM, Stack-NMN,
    # LNMN), calls these on it and on no other module: for the data (question_targets, hold_out),
    # for the optimizer (configure_optimizers, training_settings), at every step (auxiliary_loss,
    # after_step) and at every checkpoint (extra_state, load_extra_state). The defaults ask nothing.

    def question_targets(self, data_root: Path, split: SplitData) -> dict[str, np.ndarray]:
        """Per-question arrays of a split (rows in the split's order) the job adds to every batch,
        each under its name, for ``auxiliary_loss`` to read."""
        return {}

    def hold_out(self, rows: np.ndarray, seed: int) -> np.ndarray:
        """Which of the training rows (``seed``: the job's) the job keeps out of the weight steps,
        to hand them to ``after_step`` instead, a batch after every step."""
        return rows[:0]

    def configure_optimizers(self, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        """The optimizer of the weight steps, with the recipe's settings. A module that steps
        other parameters itself (``after_step``) leaves them out and makes their optimizer here."""
        return torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)

    def training_settings(self) -> dict[str, float]:
        """What the loop does around the weight steps: ``grad_clip`` (the global norm gradients
        are clipped to) and ``ema_decay`` (an exponential moving average of the weights is
        validated and kept); 0 or absent: neither."""
        return {}

    def auxiliary_loss(self, batch: dict[str, Any], epoch: int) -> torch.Tensor | float:
        """A loss added to the answer's in the weight step of ``batch``, which the module has just
        answered (epochs count from 1). The loop judges divergence, and logs, the answer's alone."""
        return 0.0

    def after_step(self, held_out: dict[str, Any] | None) -> None:
        """After every weight step, with a batch of the rows ``hold_out`` kept, loaded as the
        training batches are (None when it kept none)."""

    def extra_state(self) -> dict[str, Any]:
        """What else a checkpoint must hold for the training to resume exactly (the state of the
        optimizers made in ``configure_optimizers``)."""
        return {}

    def load_extra_state(self, saved: dict[str, Any]) -> None:
        """Restores what ``extra_state`` returned, from a checkpoint."""


def reads_features(module: NMNModule) -> bool:
    """Whether a module that gives the prior also reads the image (FiLM does; the encoder does not)."""
    return "Features" in module.inputs


def run_prior(module: NMNModule, tokens: torch.Tensor, lengths: torch.Tensor,
              features: torch.Tensor | None = None) -> torch.Tensor:
    """The prior of a batch: from the question, and the image features where the module reads them."""
    if not reads_features(module):
        return module(tokens, lengths)
    if features is None:
        raise ModtrainError(f"module {module.name} reads the image features, but none were given")
    return module(tokens, lengths, features)


def pick_instance(per_instance: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
    """From (B, n_instances, ...) outputs computed for every instance, each sample's own.

    For modules with few instances this beats gathering a weight matrix per sample, whose
    backward scatters B copies into the parameters (measured ~4× slower on a CPU).
    """
    return per_instance[torch.arange(len(instance), device=instance.device), instance]


# Which feature channels a module's instances read (find, describe): "auto" reads an attribute's
# own channels where the features say which serve it (``attribute_channels``), every channel
# otherwise; "all" always every channel; "attribute" requires the features to say.
CHANNELS = Range(choices=("auto", "all", "attribute"))


def attribute_channel_mask(module: NMNModule, dims: dict, attribute_of) -> torch.Tensor | None:
    """(instances, C) 0/1 mask of the feature channels each instance of ``module`` reads, or None
    for every channel. ``dims["attribute_channels"]`` (from the features file: attribute → [start,
    stop)) says which channels serve which attribute; ``attribute_of(instance)`` names an
    instance's attribute (None: it reads every channel). The module keeps the map in its
    dimensions, so its card rebuilds the same mask."""
    choice, groups = module.hparams["channels"], dims.get("attribute_channels")
    if choice == "all" or (choice == "auto" and not groups):
        return None
    if not groups:
        raise ModtrainError(f"module {module.name}: channels='attribute' needs features that say which channels "
                            f"serve which attribute (clevr-cnn pretrained with --pretrain-split, recipe key "
                            f"data.pretrain_split); these do not. Use channels='auto' or 'all'")
    module.dims["attribute_channels"] = groups
    mask = torch.ones(len(module.instances), module.dims["features"])
    for i, instance in enumerate(module.instances):
        attribute = attribute_of(instance)
        if attribute in groups:
            start, stop = groups[attribute]
            mask[i] = 0
            mask[i, start:stop] = 1
    return mask


class ChannelWeights:
    """For a module whose instances weigh the feature channels (find, describe): ``self.weight``
    (instances first, channels last) and the ``mask`` of the channels each instance reads."""

    def init_channel_weights(self, weight: torch.Tensor, dims: dict, attribute_of) -> None:
        """Make ``weight`` the module's parameter, masked by ``attribute_channel_mask``: the channels an
        instance does not read start at 0 and stay 0 (masked in every forward, ``masked_weight``), so
        the weights alone are the function, whatever reads them."""
        mask = attribute_channel_mask(self, dims, attribute_of)
        if mask is not None:  # (instances, 1, ..., channels), as the weight
            mask = mask.view(mask.shape[0], *[1] * (weight.dim() - 2), mask.shape[1])
        self.register_buffer("mask", mask, persistent=False)
        self.weight = nn.Parameter(weight if mask is None else weight * mask)

    def masked_weight(self) -> torch.Tensor:
        """Every instance's weights over the channels it reads."""
        return self.weight if self.mask is None else self.weight * self.mask


def register_module(name: str):
    """Class decorator: make a module buildable by name."""
    def wrap(cls):
        cls.name = name
        MODULES[name] = cls
        return cls
    return wrap


def register_surrogate(name: str):
    """Class decorator: make a surrogate buildable by name."""
    def wrap(cls):
        cls.name = name
        SURROGATES[name] = cls
        return cls
    return wrap


def load_entries() -> None:
    """Import every module and surrogate, so the registries are complete."""
    # Importing the packages runs their @register decorators.
    import modtrain.modules  # noqa: F401
    import modtrain.surrogates  # noqa: F401


def module_class(name: str) -> type[NMNModule]:
    """The registered class called ``name``."""
    load_entries()
    if name not in MODULES:
        raise ModtrainError(f"unknown module {name!r}; valid: {', '.join(sorted(MODULES))}")
    return MODULES[name]


def parameter_free_names() -> list[str]:
    """Registered modules without parameters (and, or, ...): usable in every layout, never trained."""
    load_entries()
    return sorted(name for name, cls in MODULES.items() if cls.parameter_free)


def resolve_hparams(defaults: dict[str, Any], given: dict[str, Any], what: str,
                    limits: dict[str, Range] | None = None) -> dict[str, Any]:
    """Defaults overridden by ``given``, each value checked; an unknown key is an error listing the valid ones."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ModtrainError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for {what}; valid: {', '.join(sorted(defaults)) or 'none'}"
        )
    return {**defaults, **check_hyperparameters(defaults, given, limits or {}, what)}


def build_module(name: str, interface: Interface | str, dims: dict[str, int], instances: list[str] = (),
                 **hparams: Any) -> NMNModule:
    """Build a registered module from its interface, dimensions, instances and hyperparameters."""
    cls = module_class(name)
    interface = get_interface(interface) if isinstance(interface, str) else interface
    missing = [k for k in cls.needs if k not in dims]
    if missing:
        raise ModtrainError(f"module {name} needs dimension(s) {', '.join(missing)}")
    if cls.has_instances and not instances:
        raise ModtrainError(f"module {name} needs at least one instance")
    return cls(interface, dims, list(instances), resolve_hparams(cls.defaults, hparams, f"module {name}", cls.limits))


def surrogate_class(name: str) -> type[nn.Module]:
    """The registered surrogate called ``name``."""
    load_entries()
    if name not in SURROGATES:
        raise ModtrainError(f"unknown surrogate {name!r}; valid: {', '.join(sorted(SURROGATES))}")
    return SURROGATES[name]

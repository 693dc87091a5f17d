"""Module cards: ``NAME.pt`` (weights only) beside ``NAME.json`` (everything else).

A card is enough to rebuild and load its module anywhere, so trained modules form a
library that later experiments reuse (docs/design.md, "Module cards").
"""
from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Any

import torch

from modtrain import __version__
from modtrain.errors import ModtrainError, first_line
from modtrain.io import atomic_path, read_json, write_json
from modtrain.registry import NMNModule, build_module


def card_path(modules_dir: Path, name: str) -> Path:
    return Path(modules_dir) / f"{name}.json"


def weights_path(modules_dir: Path, name: str) -> Path:
    return Path(modules_dir) / f"{name}.pt"


def describe_module(module: NMNModule) -> dict[str, Any]:
    """The card fields that rebuild a module: class, interface, signature, instances, ..."""
    inputs, output = module.signature()
    return {
        "name": module.name,
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "interface": module.interface.name,
        "signature": {"inputs": [t.name for t in inputs], "output": output.name},
        "instances": module.instances,
        "hyperparameters": module.hparams,
        "dimensions": module.dims,
        "parameters": sum(p.numel() for p in module.parameters()),
    }


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hash of a state dict's names, dtypes, shapes and values (torch.save's bytes vary per save)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.float().numpy().tobytes())
    return digest.hexdigest()


def weights_sha256(modules_dir: Path, name: str) -> str | None:
    """The weights hash a module's card records (None if it is not trained)."""
    path = card_path(modules_dir, name)
    return read_json(path, "module card").get("weights_sha256") if path.exists() else None


def save_module(modules_dir: Path, module: NMNModule, card: dict[str, Any]) -> dict[str, Any]:
    """Write weights, then the card (both atomically); return the card as written."""
    weights = weights_path(modules_dir, module.name)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    with atomic_path(weights) as tmp:
        torch.save(state, tmp)
    full = {**describe_module(module), **card, "weights_sha256": state_sha256(state),
            "modtrain_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    write_json(card_path(modules_dir, module.name), full)
    return full


def load_card(modules_dir: Path, name: str) -> dict[str, Any]:
    path = card_path(modules_dir, name)
    if not path.exists():
        raise ModtrainError(f"no trained module {name!r}: {path} not found; run 'modtrain train {name}'")
    return read_json(path, "module card")


def load_weights(modules_dir: Path, name: str, card: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A module's weights, checked against its card: a missing, truncated or corrupt file, or one
    that other weights replaced, is one error naming the file and the command that rebuilds it."""
    weights = weights_path(modules_dir, name)
    fix = f"retrain with 'modtrain train {name}' (or 'modtrain run')"
    if not weights.exists():
        raise ModtrainError(f"{weights} not found, but its card {card_path(modules_dir, name)} is; {fix}")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or not a torch file: the same to the user
        raise ModtrainError(f"{weights} cannot be read ({str(e).splitlines()[0][:80]}); {fix}") from None
    if not isinstance(state, dict) or state_sha256(state) != card["weights_sha256"]:
        raise ModtrainError(f"{weights} does not match its card {card_path(modules_dir, name)} "
                            f"(sha256 differs); {fix}")
    return state


def load_module(modules_dir: Path, name: str, device: torch.device | str = "cpu") -> tuple[NMNModule, dict]:
    """Rebuild a module from its card and load its weights (checked against the card's hash)."""
    card = load_card(modules_dir, name)
    state = load_weights(modules_dir, name, card)
    module = build_module(card["name"], card["interface"], card["dimensions"], card["instances"],
                          **card["hyperparameters"])
    try:
        module.load_state_dict(state)
    except RuntimeError as e:  # weights of an older version of the module, or of other dimensions
        detail = first_line(str(e).partition(":\n")[2] or str(e))  # below torch's "Error(s) in loading ..."
        raise ModtrainError(f"{weights_path(modules_dir, name)} does not fit this modtrain's {card['name']} "
                            f"({detail[:160]}): trained by an older version of the module; retrain with "
                            f"'modtrain train {name}' (or 'modtrain run')") from None
    return module.to(device).eval(), card


def trained_cards(modules_dir: Path) -> list[dict[str, Any]]:
    """Every card in a modules folder."""
    return [read_json(p, "module card") for p in sorted(Path(modules_dir).glob("*.json"))]

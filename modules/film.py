"""FiLM (Perez et al., AAAI 2018): the monolithic baseline of the depth experiment (paper §5.6).

A GRU reads the question; each residual block modulates its image features feature-wise,
γ ⊙ x + β, with (γ, β) predicted from the question. Two coordinate channels (x and y in
[−1, 1]) are appended before every block's first convolution and before the classifier, as in
FiLM, so that spatial relations can be read. The classifier pools the last block's map and
gives answer logits.

In modtrain it is a module whose output is the answer prior (like the encoder, it answers
every question on its own) but that also reads the image: a recipe with ``film`` as its only
module trains it end to end on the questions alone, with no layout, and the assembler
evaluates it like any other system (``recipes/film.toml``).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from modtrain.registry import NMNModule, register_module


def coordinates(height: int, width: int) -> torch.Tensor:
    """(2, H, W): x then y, each from −1 to 1 across the map."""
    ys = torch.linspace(-1.0, 1.0, height)
    xs = torch.linspace(-1.0, 1.0, width)
    y, x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([x, y])


class FiLMBlock(nn.Module):
    """[x; coords] → 1×1 conv → ReLU (r) → 3×3 conv → BN (no affine) → γ ⊙ · + β → ReLU → + r."""

    def __init__(self, channels: int):
        super().__init__()
        self.project = nn.Conv2d(channels + 2, channels, 1)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels, affine=False)

    def forward(self, x: torch.Tensor, coords: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        r = torch.relu(self.project(torch.cat([x, coords], 1)))
        y = self.norm(self.conv(r))
        return torch.relu(gamma[:, :, None, None] * y + beta[:, :, None, None]) + r


@register_module("film")
class FiLM(NMNModule):
    """Question + image → answer logits, trained end to end (a baseline, not a layout module)."""

    inputs = ("Tokens", "Features")
    output = "Prior"
    defaults = {"embedding": 64, "hidden": 128, "channels": 64, "blocks": 4, "classifier": 256, "dropout": 0.0}
    needs = ("tokens", "answers", "features", "height", "width")

    def __init__(self, interface, dims, instances, hparams):
        super().__init__(interface, dims, instances, hparams)
        channels, blocks = hparams["channels"], hparams["blocks"]
        self.embed = nn.Embedding(self.dims["tokens"], hparams["embedding"], padding_idx=0)
        self.gru = nn.GRU(hparams["embedding"], hparams["hidden"], batch_first=True)
        # Δγ and β per block and channel; γ = 1 + Δγ, so an untrained block passes its input through
        self.modulate = nn.Linear(hparams["hidden"], 2 * blocks * channels)
        self.stem = nn.Sequential(nn.Conv2d(self.dims["features"] + 2, channels, 3, padding=1),
                                  nn.BatchNorm2d(channels), nn.ReLU())
        self.blocks = nn.ModuleList(FiLMBlock(channels) for _ in range(blocks))
        self.head = nn.Sequential(nn.Conv2d(channels + 2, hparams["classifier"], 1),
                                  nn.BatchNorm2d(hparams["classifier"]), nn.ReLU())
        self.classify = nn.Sequential(nn.Linear(hparams["classifier"], hparams["classifier"]), nn.ReLU(),
                                      nn.Dropout(hparams["dropout"]),
                                      nn.Linear(hparams["classifier"], self.dims["answers"]))
        self.register_buffer("coords", coordinates(self.dims["height"], self.dims["width"]), persistent=False)

    def modulation(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(γ, β) of every block: each (B, blocks, channels)."""
        with torch.autocast(tokens.device.type, enabled=False):  # the GRU in float32, as the encoder's LSTM
            packed = pack_padded_sequence(self.embed(tokens).float(), lengths.cpu().clamp(min=1),
                                          batch_first=True, enforce_sorted=False)
            _, hidden = self.gru(packed)
        shape = (len(tokens), self.hparams["blocks"], 2, self.hparams["channels"])
        film = self.modulate(hidden[-1]).view(shape)
        return 1.0 + film[:, :, 0], film[:, :, 1]

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.modulation(tokens, lengths)
        coords = self.coords.to(features.dtype).expand(len(features), -1, -1, -1)
        x = self.stem(torch.cat([features, coords], 1))
        for i, block in enumerate(self.blocks):
            x = block(x, coords, gamma[:, i], beta[:, i])
        pooled = self.head(torch.cat([x, coords], 1)).amax(dim=(2, 3))
        return self.constrain(self.classify(pooled))

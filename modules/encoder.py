"""The question encoder: tokens → embedding → LSTM → answer logits, the prior (NMN; paper §5.5)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from modtrain.registry import NMNModule, register_module


@register_module("encoder")
class Encoder(NMNModule):
    """Decoupled input (the question), direct supervision (the answer)."""

    inputs = ("Tokens",)
    output = "Prior"
    defaults = {"embedding": 64, "hidden": 128, "dropout": 0.0}
    needs = ("tokens", "answers")

    def __init__(self, interface, dims, instances, hparams):
        super().__init__(interface, dims, instances, hparams)
        self.embed = nn.Embedding(self.dims["tokens"], hparams["embedding"], padding_idx=0)
        self.lstm = nn.LSTM(hparams["embedding"], hparams["hidden"], batch_first=True)
        self.dropout = nn.Dropout(hparams["dropout"])
        self.classify = nn.Linear(hparams["hidden"], self.dims["answers"])

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Packed by length: padding never reaches the LSTM state. The LSTM runs in float32
        # even under autocast, whose low-precision RNN support varies by backend.
        with torch.autocast(tokens.device.type, enabled=False):
            packed = pack_padded_sequence(self.embed(tokens).float(), lengths.cpu().clamp(min=1),
                                          batch_first=True, enforce_sorted=False)
            _, (hidden, _) = self.lstm(packed)
        return self.constrain(self.classify(self.dropout(hidden[-1])))

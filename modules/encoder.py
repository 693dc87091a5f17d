"""The question encoder: tokens → embedding → LSTM → answer logits, the prior (NMN; paper §5.5)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from modtrain.errors import ModtrainError
from modtrain.registry import NMNModule, register_module
from modtrain.values import Range


@register_module("encoder")
class Encoder(NMNModule):
    """Decoupled input (the question), direct supervision (the answer)."""

    inputs = ("Tokens",)
    output = "Prior"
    # attribute_values "blind": every word that names a value of one attribute (red, cyan; cube,
    # blocks) reads as one word, so the prior knows what a question asks and of what kind of
    # thing, but not which colour goes with which shape in the training images. In the typed
    # interface the prior is an additive bias on describe's and measure's answers (§5.5): trained
    # on CoGenT's condition A, a prior that reads "cube" puts the colours of A's cubes first, and
    # the assembled NMN answers a B question with an A colour however right describe is (issue 29).
    defaults = {"embedding": 64, "hidden": 128, "dropout": 0.0, "attribute_values": "read"}
    limits = {"attribute_values": Range(choices=("read", "blind"))}
    needs = ("tokens", "answers")

    def __init__(self, interface, dims, instances, hparams):
        super().__init__(interface, dims, instances, hparams)
        remap = None  # reading every word: the tokens as they are
        if hparams["attribute_values"] == "blind":
            groups = dims.get("attribute_tokens")
            if not groups:
                raise ModtrainError("encoder attribute_values='blind' needs the question tokens that name attribute "
                                    "values (a CLEVR folder's vocabulary has them); this data names none")
            self.dims["attribute_tokens"] = groups
            remap = torch.arange(self.dims["tokens"])
            for ids in groups.values():
                remap[ids] = ids[0]
        self.register_buffer("remap", remap, persistent=False)
        self.embed = nn.Embedding(self.dims["tokens"], hparams["embedding"], padding_idx=0)
        self.lstm = nn.LSTM(hparams["embedding"], hparams["hidden"], batch_first=True)
        self.dropout = nn.Dropout(hparams["dropout"])
        self.classify = nn.Linear(hparams["hidden"], self.dims["answers"])

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        # Packed by length: padding never reaches the LSTM state. The LSTM runs in float32
        # even under autocast, whose low-precision RNN support varies by backend.
        with torch.autocast(tokens.device.type, enabled=False):
            if self.remap is not None:
                tokens = self.remap[tokens]
            packed = pack_padded_sequence(self.embed(tokens).float(), lengths.cpu().clamp(min=1),
                                          batch_first=True, enforce_sorted=False)
            _, (hidden, _) = self.lstm(packed)
        return self.constrain(self.classify(self.dropout(hidden[-1])))

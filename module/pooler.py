"""The [CLS] pooler for encoders that ship none (DeBERTa, ELECTRA): dense + tanh over the first token.

BERT and RoBERTa carry a pretrained pooler and MTDNNModel uses theirs; this one keeps every encoder's heads
reading the same kind of representation. Its parameter names (``dense``) stay out of the SAGE name patterns,
so the optimizer treats it like a task head.
"""
from __future__ import annotations

import torch
from torch import nn


class FirstTokenPooler(nn.Module):
    """tanh(W h_0 + b) over the first token's hidden state, initialised like the encoder's own linear layers."""

    def __init__(self, hidden_size: int, init_std: float = 0.02):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()
        nn.init.normal_(self.dense.weight, mean=0.0, std=init_std)
        nn.init.zeros_(self.dense.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))

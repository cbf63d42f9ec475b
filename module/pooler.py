"""The [CLS] pooler: dropout on the first token's hidden state, then dense and an activation.

Two uses. Encoders that ship no pooler (DeBERTa, ELECTRA) get one under the ``encoder`` head layout (dense + tanh,
initialised like the encoder's own linear layers, no dropout), so every encoder's heads read the same kind of
representation. The ``sage`` and ``mtdnn`` layouts (mt_dnn/head_layout.py) use it as the SAGE repository's shared
task pooler and as MT-DNN's per-task pooler: dropout on the input, torch's default ``nn.Linear`` initialisation,
and the activation ``--pooler_actf`` names. Its parameter names (``dense``) stay out of the SAGE name patterns,
so the optimizer treats it like a task head.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

#: --pooler_actf name -> activation module. gelu is the exact (erf) form, the one MT-DNN and the SAGE repository
#: call gelu; linear is no activation at all.
ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "linear": nn.Identity,
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown pooler activation '{name}'; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class FirstTokenPooler(nn.Module):
    """act(W dropout(h_0) + b) over the first token's hidden state.

    ``init_std``: normal(0, init_std) weights and zero bias (the encoder's own init); None keeps torch's default
    ``nn.Linear`` init, as the SAGE repository's and MT-DNN's poolers have.
    """

    def __init__(self, hidden_size: int, init_std: Optional[float] = 0.02, dropout_p: float = 0.0,
                 actf: str = "tanh"):
        super().__init__()
        self.dropout = nn.Dropout(dropout_p)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = activation(actf)
        self.actf = actf
        if init_std is not None:
            nn.init.normal_(self.dense.weight, mean=0.0, std=init_std)
            nn.init.zeros_(self.dense.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(self.dropout(hidden_states[:, 0])))

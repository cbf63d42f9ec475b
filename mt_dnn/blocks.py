"""Which structural block a parameter belongs to, read from its name.

HF BERT-style encoders (BERT, RoBERTa, ELECTRA, DeBERTa) name a layer's weights ``...layer.{i}.attention.*`` and
``...layer.{i}.intermediate.*`` / ``...layer.{i}.output.*``; other encoders (GPT-2 ``h.{i}.attn``/``mlp``, T5,
fairseq ``layers.{i}.self_attn``/``fc1``) are recognised by a generic fallback. The tracker and the figures
group sensitivities by these blocks; pruning uses :func:`prunable` to keep embeddings out.
"""
from __future__ import annotations

import re
from typing import NamedTuple, Optional

ATTENTION, FFN = "attention", "ffn"
BLOCK_KINDS = (ATTENTION, FFN)

_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.(.+)$")
_ATTENTION_WORDS = ("attention", "attn", "self_attn", "selfattention")
_FFN_WORDS = ("intermediate", "output.dense", "mlp", "ffn", "feed_forward", "fc1", "fc2", "densereludense")
_NORM_WORDS = ("layernorm", "layer_norm", "ln_", "norm")


class Block(NamedTuple):
    layer: int
    kind: str  # ATTENTION or FFN

    @property
    def key(self) -> str:
        return f"layer{self.layer}.{self.kind}"


def layer_index(name: str) -> Optional[int]:
    """The encoder layer a parameter lives in, or None (embeddings, pooler, heads)."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def block_of(name: str) -> Optional[Block]:
    """The attention or FFN block of a layer's linear weight/bias; None for norms and non-layer parameters.

    Norms are left out so that a block holds exactly the weights SAGE modulates (Q, K, V, attention output;
    FFN in and out), which makes the SAGE and baseline curves of one block cover the same parameters.
    """
    match = _LAYER.search(name)
    if not match:
        return None
    rest = match.group(2).lower()
    if any(word in rest for word in _NORM_WORDS):
        return None
    if any(word in rest for word in _ATTENTION_WORDS):
        return Block(int(match.group(1)), ATTENTION)
    if any(word in rest for word in _FFN_WORDS):
        return Block(int(match.group(1)), FFN)
    return None


def is_embedding(name: str) -> bool:
    return "embed" in name.lower() or "wte" in name or "wpe" in name


def prunable(name: str, ndim: int) -> bool:
    """Weight matrices of the encoder (pooler included), not embeddings, norms, biases or task heads."""
    return ndim >= 2 and not is_embedding(name) and not name.startswith("heads.")

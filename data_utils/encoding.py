"""Batched tokenization of canonical rows into shard lines; runs in-process or in spawned worker processes.

Workers hold only the Rust ``tokenizers.Tokenizer`` rebuilt from its JSON, configured as the Hugging Face fast
tokenizer's ``__call__(text, pair, truncation=True, max_length=L)`` configures it (longest-first truncation to
L including special tokens, no padding). Skipping ``transformers`` and ``BatchEncoding`` keeps worker start-up
and per-row cost low; tests check the token ids against the HF tokenizer called directly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

from data_utils.shards import format_line


@dataclass(frozen=True)
class EncodeSpec:
    """Everything a worker needs: the tokenizer as JSON, the length limit, whether type ids are real."""
    tokenizer_json: str
    max_seq_len: int
    type_ids: bool


def spec_from_hf(tokenizer, max_seq_len: int) -> EncodeSpec:
    """The spec of a loaded HF fast tokenizer; tokenizers without token types get all-zero type ids."""
    has_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    return EncodeSpec(tokenizer.backend_tokenizer.to_str(), max_seq_len, has_types)


def build_backend(spec: EncodeSpec):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(spec.tokenizer_json)
    tok.no_padding()
    tok.enable_truncation(max_length=spec.max_seq_len, strategy="longest_first", direction="right")
    return tok


_WORKER: dict = {}


def init_worker(spec: EncodeSpec) -> None:
    """Pool initializer: one tokenizer per process, single-threaded (the processes are the parallelism)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["spec"], _WORKER["tok"] = spec, build_backend(spec)


@dataclass
class Chunk:
    """A run of consecutive rows of one split (column-wise); ``n_hyp`` > 0 for multi-hypothesis rows."""
    uids: Sequence[str]
    labels: Sequence
    premises: Sequence[str]
    hypotheses: Optional[Sequence]
    n_hyp: int = 0


def _encode(tok, chunk: Chunk) -> list:
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # no offsets: cheaper, same ids
    if chunk.hypotheses is None:
        return encode(list(chunk.premises))
    if not chunk.n_hyp:
        return encode(list(zip(chunk.premises, chunk.hypotheses)))
    return encode([(p, h) for p, hyps in zip(chunk.premises, chunk.hypotheses) for h in hyps])


def encode_lines(tok, spec: EncodeSpec, chunk: Chunk) -> str:
    """The chunk's shard lines, newline-terminated, as one string."""
    encs = _encode(tok, chunk)
    ids = [e.ids for e in encs]
    types = [e.type_ids for e in encs] if spec.type_ids else [[0] * len(x) for x in ids]
    if chunk.n_hyp:
        k = chunk.n_hyp
        ids = [ids[i:i + k] for i in range(0, len(ids), k)]
        types = [types[i:i + k] for i in range(0, len(types), k)]
    lines = map(format_line, chunk.uids, chunk.labels, ids, types)
    return "\n".join(lines) + "\n"


def encode_in_worker(chunk: Chunk) -> str:
    return encode_lines(_WORKER["tok"], _WORKER["spec"], chunk)

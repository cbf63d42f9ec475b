"""Canonical lines -> shard lines: validation, batched tokenization and formatting of one chunk of rows.

A chunk runs in this process or in a spawned worker, so ``--workers`` processes share all the per-row work
(parsing, label checks, tokenizing, JSON text). Workers hold only the Rust ``tokenizers.Tokenizer`` rebuilt
from its JSON, configured as the Hugging Face fast tokenizer's ``__call__(text, pair, truncation=True,
max_length=L)`` configures it (longest-first truncation to L including special tokens, no padding). Skipping
``transformers`` and ``BatchEncoding`` keeps worker start-up and per-row cost low; tests check the token ids
against the HF tokenizer called directly.
"""
from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Optional, Sequence

from data_utils.shards import format_line, format_line_zero_types
from data_utils.task_def import DataFormat, TaskDef
from data_utils.tsv import CanonicalSplit, parse_rows


@dataclass(frozen=True)
class EncodeSpec:
    """Everything a worker needs: the tokenizer as JSON, the length limit, whether type ids are real."""
    tokenizer_json: str
    max_seq_len: int
    type_ids: bool
    single_types_zero: bool = False  # single sequences always get type 0: no need to fetch them (~7% of the work)


@dataclass(frozen=True)
class Chunk:
    """Consecutive lines of one canonical TSV; ``first_line`` is the 1-based number of ``lines[0]``."""
    path: str
    first_line: int
    lines: Sequence[str]
    task_def: TaskDef
    split: str
    labelled: Optional[bool] = None  # the labels are checked and kept (default: unless a test split)


def spec_from_hf(tokenizer, max_seq_len: int) -> EncodeSpec:
    """The spec of a loaded HF fast tokenizer; tokenizers without token types get all-zero type ids."""
    has_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    # A post-processor template gives each piece ($A, special tokens) a fixed type id, so one probe settles it.
    probe = tokenizer.backend_tokenizer.encode("probe sentence")
    return EncodeSpec(tokenizer.backend_tokenizer.to_str(), max_seq_len, has_types,
                      single_types_zero=not any(probe.type_ids))


def build_backend(spec: EncodeSpec):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(spec.tokenizer_json)
    tok.no_padding()
    tok.enable_truncation(max_length=spec.max_seq_len, strategy="longest_first", direction="right")
    return tok


def _encode(tok, data: CanonicalSplit, n_hyp: int) -> list:
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)  # no offsets: cheaper, same ids
    if data.hypotheses is None:
        return encode(data.premises)
    if not n_hyp:
        return encode(list(zip(data.premises, data.hypotheses)))
    return encode([(p, h) for p, hyps in zip(data.premises, data.hypotheses) for h in hyps])


def encode_rows(tok, spec: EncodeSpec, data: CanonicalSplit, task_def: TaskDef) -> str:
    """Shard lines (newline-terminated, as one string) for validated rows."""
    n_hyp = task_def.n_class if task_def.data_format is DataFormat.PremiseAndMultiHypothesis else 0
    encs = _encode(tok, data, n_hyp)
    ids = [e.ids for e in encs]
    if not n_hyp and (not spec.type_ids or (data.hypotheses is None and spec.single_types_zero)):
        lines = map(format_line_zero_types, data.uids, data.labels, ids)
    else:
        types = [e.type_ids for e in encs] if spec.type_ids else [[0] * len(x) for x in ids]
        if n_hyp:
            ids = [ids[i:i + n_hyp] for i in range(0, len(ids), n_hyp)]
            types = [types[i:i + n_hyp] for i in range(0, len(types), n_hyp)]
        lines = map(format_line, data.uids, data.labels, ids, types)
    return "".join([line + "\n" for line in lines])


def encode_chunk(tok, spec: EncodeSpec, chunk: Chunk) -> tuple[str, list[str]]:
    """(shard text, uids) of a chunk; a bad line raises ``TsvError`` with its ``file:line``."""
    data = parse_rows(chunk.path, chunk.lines, chunk.first_line, chunk.task_def, chunk.split, chunk.labelled)
    return encode_rows(tok, spec, data, chunk.task_def), data.uids


_WORKER: dict = {}


def init_worker(spec: EncodeSpec) -> None:
    """Pool initializer: one tokenizer per process, single-threaded (the processes are the parallelism).
    Ctrl-C reaches the whole process group: the main process handles it and terminates the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _WORKER["spec"], _WORKER["tok"] = spec, build_backend(spec)


def encode_in_worker(chunk: Chunk) -> tuple[str, list[str]]:
    return encode_chunk(_WORKER["tok"], _WORKER["spec"], chunk)

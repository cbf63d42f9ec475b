"""CoNLL-2003-style column files -> shard rows, and entity-level scoring / column output of predicted tags.

A file holds one ``word ... tag`` line per word (whitespace-separated columns, the tag last), sentences separated
by blank lines; ``-DOCSTART-`` lines are document breaks. Every line of a file must have the same number of
columns; a bad line is a ``file:line`` error. Unlabelled (test) splits read only the first column.

Each sentence is tokenized as pre-split words; the word's tag sits on its first sub-token, the other sub-tokens
and the special tokens get none (ignored by the loss). Shard rows keep the four base keys (``uid`` is the
sentence's first line number, ``label`` the placeholder 0) and add ``words``, ``tags`` (tag ids per word, empty
for unlabelled splits) and ``word_start`` (the token position of each word's first sub-token, -1 when the
sentence was cut at --max_seq_len before that word: such words are predicted ``O``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

SEQUENCE_KEYS = ("words", "tags", "word_start")
_ENTITY_TAG = re.compile(r"(O|[BIES]-.+)\Z")


class ConllError(ValueError):
    """A bad column file, as one line starting with ``file:line``."""


@dataclass(frozen=True)
class Sentence:
    line: int                 # 1-based line of the first word
    words: tuple[str, ...]
    tags: tuple[str, ...]     # empty for unlabelled files


def read_conll(path, labelled: bool, tags: Sequence[str]) -> list[Sentence]:
    """Every sentence of a column file; ``tags`` are the task's labels (each gold tag must be one of them)."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConllError(f"{path}: not UTF-8 (byte offset {exc.start})") from None
    known, columns = set(tags), None
    sentences, words, gold, first = [], [], [], 0
    lines = text.split("\n")
    for ln, line in enumerate(lines + [""], start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append(Sentence(first, tuple(words), tuple(gold)))
            words, gold = [], []
            continue
        columns = columns or len(fields)
        if labelled and len(fields) < 2:
            raise ConllError(f"{path}:{ln}: expected 'word ... tag' columns, got {line.strip()!r}")
        if len(fields) != columns:
            raise ConllError(f"{path}:{ln}: {len(fields)} columns, but the file's first word line has {columns}")
        if labelled and fields[-1] not in known:
            raise ConllError(f"{path}:{ln}: tag {fields[-1]!r} is not one of the task's labels {list(tags)}")
        first = first if words else ln
        words.append(fields[0])
        if labelled:
            gold.append(fields[-1])
    if not sentences:
        raise ConllError(f"{path}: no sentences")
    return sentences


def encode_conll(tok, sentences: Sequence[Sentence], tag_ids: dict[str, int], type_ids: bool,
                 path: str = "<conll>") -> list[str]:
    """Shard lines (newline-terminated), one per sentence; ``tok`` truncates to the shard's max length."""
    encs = tok.encode_batch([list(s.words) for s in sentences], is_pretokenized=True)
    lines = []
    for s, enc in zip(sentences, encs):
        start = [-1] * len(s.words)
        for pos, word in enumerate(enc.word_ids):
            if word is not None and start[word] == -1:
                start[word] = pos
        _check_tagged_words_have_tokens(s, start, bool(enc.overflowing), path)
        row = {"uid": str(s.line), "label": 0, "token_id": enc.ids,
               "type_id": enc.type_ids if type_ids else [0] * len(enc.ids), "words": list(s.words),
               "tags": [tag_ids[t] for t in s.tags], "word_start": start}
        lines.append(json.dumps(row) + "\n")
    return lines


def _check_tagged_words_have_tokens(s: Sentence, start: list[int], truncated: bool, path: str) -> None:
    """A word the tokenizer turns into nothing (a zero-width or control character) has no sub-token to carry its
    tag: an entity tag there would silently be neither learned nor predicted. Words after a --max_seq_len cut
    are the documented exception (predicted O); an O-tagged empty word loses nothing."""
    last = max((j for j, pos in enumerate(start) if pos >= 0), default=-1)
    for j, pos in enumerate(start):
        if pos < 0 and (j < last or not truncated) and s.tags and s.tags[j] != "O":
            raise ConllError(f"{path}:{s.line + j}: word {s.words[j]!r} is no token at all for this tokenizer, so "
                             f"its tag {s.tags[j]} could be neither learned nor predicted; replace or remove the word")


def entity_tag(tag: str) -> str:
    """A predicted label that is not O / B-x / I-x / E-x / S-x (MT-DNN's X, CLS, SEP) counts as O."""
    return tag if _ENTITY_TAG.match(tag) else "O"


def entity_scores(golds: list[list[str]], predictions: list[list[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 ×100 (seqeval's default, conlleval-compatible chunking)."""
    from seqeval.metrics import f1_score, precision_score, recall_score
    return {"EntityP": 100.0 * precision_score(golds, predictions, zero_division=0),
            "EntityR": 100.0 * recall_score(golds, predictions, zero_division=0),
            "EntityF1": 100.0 * f1_score(golds, predictions, zero_division=0)}


def format_columns(words: list[list[str]], predictions: list[list[str]], golds=None) -> str:
    """``word gold predicted`` lines (``word predicted`` without golds), a blank line after each sentence."""
    out = []
    for i, (ws, ps) in enumerate(zip(words, predictions)):
        for j, (w, p) in enumerate(zip(ws, ps)):
            out.append(f"{w} {golds[i][j]} {p}\n" if golds is not None else f"{w} {p}\n")
        out.append("\n")
    return "".join(out)

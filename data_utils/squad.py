"""SQuAD v1.1 / v2.0: the official JSON -> windowed shard rows, and n-best decoding + the official EM/F1.

Reading checks every answer against its context (``file: question id X: ...`` errors). Each question becomes one
or more windows ``[CLS] question [SEP] context piece [SEP]`` (the tokenizer's own pair template): the question is
cut to ``max_query_len`` tokens and the context is covered by windows whose first tokens are ``doc_stride``
tokens apart. Character offsets come from the fast tokenizer's offset mapping, so predicted spans are cut from the
original context text.

Shard rows keep the four base keys (``label`` is 1 when the window holds the answer, else 0) and add: ``qid``,
``start``/``end`` (token positions of the answer in the window; 0/0, the first token, when it is not there) and
``impossible``; rows of evaluation splits (dev, test) also hold what decoding needs: ``offsets``
(``[char_start, char_end]`` per token, null outside the context), ``context`` and ``answers`` (gold texts).
Training rows leave those out: on SQuAD's 88k training windows the offsets alone would be tens of millions of
Python objects once loaded.
"""
from __future__ import annotations

import collections
import json
import re
import string
from dataclasses import dataclass
from typing import Optional, Sequence

from data_utils.safe_load import DataFileError, read_json
from data_utils.task_def import SpanOptions

SPAN_KEYS = ("qid", "start", "end", "impossible")     # every row
DECODE_KEYS = ("offsets", "context", "answers")         # rows of evaluation splits


class SquadError(ValueError):
    """A bad SQuAD file, as one line naming the file (and the question id)."""


@dataclass(frozen=True)
class Question:
    qid: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # (text, character start) in file order
    impossible: bool


# ------------------------------------------------------------------------------------------------ reading
def _need(cond: bool, where: str, reason: str) -> None:
    if not cond:
        raise SquadError(f"{where}: {reason}")


def _answers(where: str, context: str, raw) -> tuple[tuple[str, int], ...]:
    _need(isinstance(raw, list), where, "'answers' must be a list")
    out = []
    for i, ans in enumerate(raw):
        _need(isinstance(ans, dict) and isinstance(ans.get("text"), str) and ans["text"] != "", where,
              f"answer {i} needs a non-empty 'text'")
        start, text = ans.get("answer_start"), ans["text"]
        _need(isinstance(start, int) and not isinstance(start, bool) and start >= 0, where,
              f"answer {i}: 'answer_start' must be a non-negative integer, got {start!r}")
        _need(start + len(text) <= len(context), where,
              f"answer {i} ({text!r} at {start}) ends at character {start + len(text)}, outside the context "
              f"({len(context)} characters)")
        _need(context[start:start + len(text)] == text, where,
              f"answer {i}: answer_start {start} does not match the text: the context there reads "
              f"{context[start:start + len(text)]!r}, the answer is {text!r}")
        out.append((text, start))
    return tuple(out)


def read_squad(path, labelled: bool, unanswerable: bool) -> list[Question]:
    """Every question of a SQuAD file, in file order, each checked; unlabelled (test) files may omit answers."""
    path = str(path)
    try:
        data = read_json(path, "SQuAD JSON file")
    except DataFileError as exc:
        raise SquadError(str(exc)) from None
    _need(isinstance(data, dict) and isinstance(data.get("data"), list), path,
          "expected SQuAD's {\"version\": ..., \"data\": [articles]}")
    questions, seen = [], set()
    for a, article in enumerate(data["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        _need(isinstance(paragraphs, list), path, f"article {a} has no 'paragraphs' list")
        for p, para in enumerate(paragraphs):
            context = para.get("context") if isinstance(para, dict) else None
            _need(isinstance(context, str) and context.strip() != "" and isinstance(para.get("qas"), list), path,
                  f"article {a}, paragraph {p}: needs a non-empty 'context' and a 'qas' list")
            for qa in para["qas"]:
                questions.append(_question(path, qa, context, labelled, unanswerable, seen))
    _need(bool(questions), path, "no questions")
    return questions


def _question(path: str, qa, context: str, labelled: bool, unanswerable: bool, seen: set) -> Question:
    qid = qa.get("id") if isinstance(qa, dict) else None
    _need(isinstance(qid, str) and qid != "", path, "a question has no string 'id'")
    where = f"{path}: question id {qid}"
    _need(qid not in seen, where, "given twice")
    seen.add(qid)
    _need(isinstance(qa.get("question"), str) and qa["question"].strip() != "", where, "empty 'question'")
    impossible = qa.get("is_impossible", False)
    _need(isinstance(impossible, bool), where, "'is_impossible' must be true or false")
    if impossible and not unanswerable:
        raise SquadError(f"{where}: is_impossible (SQuAD v2.0) but the task has no 'unanswerable: true'")
    if not labelled:
        return Question(qid, qa["question"], context, (), False)
    answers = _answers(where, context, qa.get("answers", []))
    _need(impossible or bool(answers), where, "no answers (an answerable question needs at least one)")
    return Question(qid, qa["question"], context, () if impossible else answers, impossible)


# ------------------------------------------------------------------------------------------------ windows
@dataclass(frozen=True)
class PairLayout:
    """The tokenizer's pair template: special tokens before, between and after the two texts, and type ids."""
    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    types: tuple[int, int, int, int, int]  # type id of prefix, question, middle, context, suffix

    @classmethod
    def probe(cls, tok, type_ids: bool) -> "PairLayout":
        enc = tok.encode("a", "b")
        seq = enc.sequence_ids
        first = [i for i, s in enumerate(seq) if s == 0]
        second = [i for i, s in enumerate(seq) if s == 1]
        a0, a1, b0, b1 = first[0], first[-1] + 1, second[0], second[-1] + 1
        ids, tt = enc.ids, enc.type_ids if type_ids else [0] * len(enc.ids)
        pick = lambda lo, hi, default: tt[lo] if hi > lo else default  # noqa: E731
        return cls(tuple(ids[:a0]), tuple(ids[a1:b0]), tuple(ids[b1:]),
                   (pick(0, a0, 0), tt[a0], pick(a1, b0, tt[a0]), tt[b0], pick(b1, len(ids), tt[b0])))


def window_starts(n_tokens: int, max_len: int, stride: int) -> list[int]:
    """First context token of each window: every ``stride`` tokens (at most a window apart, so no token is
    skipped) until a window reaches the end."""
    starts, start = [0], 0
    while start + max_len < n_tokens:
        start += min(stride, max_len)
        starts.append(start)
    return starts


def answer_tokens(offsets: Sequence[tuple[int, int]], start: int, end: int) -> Optional[tuple[int, int]]:
    """First and last context token overlapping characters [start, end); None when no token does."""
    inside = [i for i, (a, b) in enumerate(offsets) if a < end and b > start and b > a]
    return (inside[0], inside[-1]) if inside else None


def encode_squad(tok, layout: PairLayout, questions: Sequence[Question], options: SpanOptions, max_seq_len: int,
                 path: str, for_eval: bool = True) -> list[str]:
    """Shard lines (newline-terminated) for every window of every question; ``for_eval`` adds DECODE_KEYS."""
    lines = []
    specials = len(layout.prefix) + len(layout.middle) + len(layout.suffix)
    for q in questions:
        q_ids = tok.encode(q.question, add_special_tokens=False).ids[:options.max_query_len]
        ctx = tok.encode(q.context, add_special_tokens=False)
        room = max_seq_len - specials - len(q_ids)
        if room < 1:
            raise SquadError(f"{path}: question id {q.qid}: --max_seq_len {max_seq_len} leaves no room for the "
                             f"context after {len(q_ids)} question tokens (lower max_query_len)")
        span = None
        if q.answers:
            text, start = q.answers[0]
            span = answer_tokens(ctx.offsets, start, start + len(text))
            if span is None:
                raise SquadError(f"{path}: question id {q.qid}: answer {text!r} covers no token of the context")
        head = list(layout.prefix) + q_ids + list(layout.middle)
        types = ([layout.types[0]] * len(layout.prefix) + [layout.types[1]] * len(q_ids)
                 + [layout.types[2]] * len(layout.middle))
        for k, w0 in enumerate(window_starts(len(ctx.ids), room, options.doc_stride)):
            piece = range(w0, min(w0 + room, len(ctx.ids)))
            ids = head + ctx.ids[piece.start:piece.stop] + list(layout.suffix)
            tt = types + [layout.types[3]] * len(piece) + [layout.types[4]] * len(layout.suffix)
            offsets = [None] * len(head) + [list(ctx.offsets[i]) for i in piece] + [None] * len(layout.suffix)
            inside = span is not None and piece.start <= span[0] and span[1] < piece.stop
            start, end = (len(head) + span[0] - w0, len(head) + span[1] - w0) if inside else (0, 0)
            row = {"uid": f"{q.qid}#{k}", "label": int(inside), "token_id": ids, "type_id": tt, "qid": q.qid,
                   "start": start, "end": end, "impossible": q.impossible}
            if for_eval:
                row.update(offsets=offsets, context=q.context, answers=[a for a, _ in q.answers])
            lines.append(json.dumps(row) + "\n")
    return lines


# ------------------------------------------------------------------------------------------------ decoding
def best_span(windows: Sequence[dict], options: SpanOptions) -> tuple[str, float]:
    """(answer text, null score minus best span score) for one question from its windows.

    Each window: ``offsets``, ``context``, ``starts``/``ends`` (the n best token positions) with their logits
    ``start_logits``/``end_logits``, and ``null`` (start + end logit of the first token). A span must lie in
    the context, end at or after its start and be at most ``max_answer_len`` tokens long. The null score is the
    smallest over the windows; v2.0 tasks answer "" when it beats the best span by more than the threshold.
    """
    best_text, best_score, null = "", float("-inf"), float("inf")
    for w in windows:
        null = min(null, w["null"])
        offs = w["offsets"]
        for si, s_logit in zip(w["starts"], w["start_logits"]):
            for ei, e_logit in zip(w["ends"], w["end_logits"]):
                if si >= len(offs) or ei >= len(offs) or offs[si] is None or offs[ei] is None:
                    continue
                if ei < si or ei - si + 1 > options.max_answer_len:
                    continue
                if s_logit + e_logit > best_score:
                    best_score = s_logit + e_logit
                    best_text = w["context"][offs[si][0]:offs[ei][1]]
    diff = null - best_score if best_score > float("-inf") else float("inf")
    if options.unanswerable and diff > options.null_score_diff_threshold:
        return "", diff
    return best_text, diff


# ------------------------------------------------------------------------------------------------ scoring
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official script's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    """Bag-of-tokens F1 of the normalised texts; an empty side scores 1 only against another empty side."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((collections.Counter(pred) & collections.Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(golds: dict[str, list[str]], predictions: dict[str, str], unanswerable: bool) -> dict[str, float]:
    """EM and F1 ×100 over every question (the best over its gold answers); v2.0 tasks add HasAns_/NoAns_
    scores over the answerable / unanswerable questions when there are any. An unanswerable question's gold
    is [""] (as is one whose answers all normalise to nothing)."""
    em, f1, has = {}, {}, {}
    for qid, answers in golds.items():
        refs = [a for a in answers if normalize_answer(a)] or [""]
        pred = predictions.get(qid, "")
        em[qid] = max(exact_match(pred, r) for r in refs)
        f1[qid] = max(token_f1(pred, r) for r in refs)
        has[qid] = refs != [""]
    out = {"EM": 100.0 * sum(em.values()) / len(em), "F1": 100.0 * sum(f1.values()) / len(f1)}
    if unanswerable:
        for name, want in (("HasAns", True), ("NoAns", False)):
            ids = [q for q in golds if has[q] is want]
            if ids:
                out[f"{name}_EM"] = 100.0 * sum(em[q] for q in ids) / len(ids)
                out[f"{name}_F1"] = 100.0 * sum(f1[q] for q in ids) / len(ids)
    return out

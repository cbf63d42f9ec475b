"""Span extraction (SQuAD v1.1 / v2.0) and sequence labeling (CoNLL-2003 NER): converters, decoding, metrics
computed by hand, bad input, and prepro_std.py -> train.py -> predict.py with MiniLM-L6 next to a GLUE task."""
from __future__ import annotations

import collections
import json
import math
import re
import string
from pathlib import Path

import pytest
import torch

import predict as predict_cli
import prepro_std
import train as train_cli
from data_utils.conll import ConllError, entity_scores, read_conll
from data_utils.shards import read_shard
from data_utils.squad import best_span, normalize_answer, squad_scores, token_f1, window_starts
from data_utils.task_def import SpanOptions, TaskType, parse_task_defs
from mt_dnn.batcher import collate, load_split
from mt_dnn.evaluate import split_result
from mt_dnn.model import span_candidates

TASKS = """
qa:
  task_type: Span
  data_format: MRC
  n_class: 2
  metric_meta: [EmF1]
  loss: SpanCeCriterion
  split_names: [train, dev]
  doc_stride: 16
  max_query_len: 12
  max_answer_len: 10
  n_best_size: 5
  unanswerable: true
qa1:
  task_type: Span
  data_format: MRC
  metric_meta: [EmF1]
  split_names: [train, dev]
ner:
  task_type: SeqenceLabeling
  data_format: Seqence
  labels: [O, B-PER, I-PER, B-LOC, I-LOC, B-ORG, I-ORG, X]
  metric_meta: [SeqEval]
  loss: SeqCeCriterion
  split_names: [train, dev, test]
cls:
  task_type: Classification
  data_format: PremiseOnly
  labels: [neg, pos]
  metric_meta: [ACC]
  split_names: [train, dev]
"""

NORMANS = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
           "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under "
           "their leader Rollo, agreed to swear fealty to King Charles III of West Francia. Through generations of "
           "assimilation and mixing with the native Frankish and Roman-Gaulish populations, their descendants "
           "would gradually merge with the Carolingian-based cultures of West Francia.")
SHORT = "Unaffable Germanyxyz visited Paris in May."
MAX_LEN = 64


def _answer(context: str, text: str, nth: int = 0) -> dict:
    start = -1
    for _ in range(nth + 1):
        start = context.index(text, start + 1)
    return {"text": text, "answer_start": start}


def squad_file(path: Path, v2: bool = True, dev: bool = False) -> Path:
    qas = [{"id": "q-country", "question": "In what country is Normandy located?",
            "answers": [_answer(NORMANS, "France")] + ([_answer(NORMANS, "France.")] if dev else [])},
           {"id": "q-leader", "question": "Who was the Norse leader?", "answers": [_answer(NORMANS, "Rollo")]},
           {"id": "q-king", "question": "Which king did they swear fealty to?",
            "answers": [_answer(NORMANS, "King Charles III")]}]
    if v2:
        qas.append({"id": "q-none", "question": "Who gave their name to Denmark?", "answers": [],
                    "is_impossible": True, "plausible_answers": [_answer(NORMANS, "Normans")]})
    short = [{"id": "q-visitor", "question": "Who visited Paris?", "answers": [_answer(SHORT, "Unaffable Germanyxyz")]}]
    data = {"version": "v2.0" if v2 else "1.1", "data": [
        {"title": "Normans", "paragraphs": [{"context": NORMANS, "qas": qas}]},
        {"title": "Visit", "paragraphs": [{"context": SHORT, "qas": short}]}]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


CONLL = """-DOCSTART- -X- -X- O

Unaffable NNP B-NP B-PER
Germanyxyz NNP I-NP I-PER
visited VBD B-VP O
Paris NNP B-NP B-LOC
. . O O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP O
lamb NN I-NP O
. . O O
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("span")
    data = root / "canonical"
    data.mkdir()
    (root / "tasks.yml").write_text(TASKS, encoding="utf-8")
    squad_file(data / "qa_train.json")
    squad_file(data / "qa_dev.json", dev=True)
    squad_file(data / "qa1_train.json", v2=False)
    squad_file(data / "qa1_dev.json", v2=False, dev=True)
    for split in ("train", "dev"):
        (data / f"ner_{split}.conll").write_text(CONLL, encoding="utf-8")
    (data / "ner_test.conll").write_text("EU\nrejects\n\nParis\n", encoding="utf-8")
    rows = ["a good film", "a bad film", "great fun", "dull and slow"] * 3
    for split in ("train", "dev"):
        (data / f"cls_{split}.tsv").write_text(
            "".join(f"{i}\t{'pos' if i % 2 == 0 else 'neg'}\t{t}\n" for i, t in enumerate(rows)), encoding="utf-8")
    assert prepro_std.main(["--model", "minilm-l6", "--root_dir", str(data), "--task_def", str(root / "tasks.yml"),
                            "--max_seq_len", str(MAX_LEN), "--workers", "1"]) == 0
    return root


def _shards(ws: Path) -> Path:
    return ws / "canonical" / "minilm-l6"


def _tokenizer():
    from module import encoders
    return encoders.load_tokenizer("minilm-l6")


# ------------------------------------------------------------------------------------------ SQuAD converter
def test_long_context_is_covered_by_strided_windows_that_hold_the_answer(ws):
    rows = [r for r in read_shard(_shards(ws) / "qa_dev.jsonl") if r["qid"] == "q-country"]
    train = [r for r in read_shard(_shards(ws) / "qa_train.jsonl") if r["qid"] == "q-country"]
    # training rows carry only what the loss needs; the windows are the same
    assert all(list(r) == ["uid", "label", "token_id", "type_id", "qid", "start", "end", "impossible"] for r in train)
    assert [(r["token_id"], r["start"], r["end"]) for r in train] == [(r["token_id"], r["start"], r["end"])
                                                                       for r in rows]
    assert rows[0]["answers"] == ["France", "France."]
    tok = _tokenizer()
    n_ctx = len(tok(NORMANS, add_special_tokens=False)["input_ids"])
    n_q = len(tok("In what country is Normandy located?", add_special_tokens=False)["input_ids"])
    room = MAX_LEN - 3 - n_q  # [CLS] q [SEP] c [SEP]
    assert len(rows) == 1 + math.ceil((n_ctx - room) / 16) and len(rows) >= 3
    assert [r["uid"] for r in rows] == [f"q-country#{k}" for k in range(len(rows))]
    firsts = []
    for r in rows:
        assert len(r["token_id"]) <= MAX_LEN and len(r["offsets"]) == len(r["token_id"])
        ctx_positions = [i for i, o in enumerate(r["offsets"]) if o is not None]
        assert r["token_id"][0] == tok.cls_token_id and r["token_id"][-1] == tok.sep_token_id
        assert set(r["type_id"][i] for i in ctx_positions) == {1}
        firsts.append(r["offsets"][ctx_positions[0]][0])
        if r["label"] == 1:  # the answer's tokens, read back through the offsets, are the answer
            assert NORMANS[r["offsets"][r["start"]][0]:r["offsets"][r["end"]][1]] == "France"
        else:
            assert r["start"] == r["end"] == 0
    all_ctx = tok(NORMANS, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert firsts == [all_ctx[16 * k][0] for k in range(len(rows))]  # windows start doc_stride tokens apart
    assert sum(r["label"] for r in rows) >= 1
    assert window_starts(10, 4, 3) == [0, 3, 6] and window_starts(10, 4, 9) == [0, 4, 8]  # never skip a token


def test_unanswerable_windows_point_at_the_first_token_and_sub_token_answers_are_whole(ws):
    rows = read_shard(_shards(ws) / "qa_dev.jsonl")
    none = [r for r in rows if r["qid"] == "q-none"]
    assert none and all(r["label"] == 0 and r["start"] == r["end"] == 0 and r["impossible"] for r in none)
    (visit,) = [r for r in rows if r["qid"] == "q-visitor"]
    assert visit["end"] - visit["start"] + 1 == 6  # una ##ffa ##ble germany ##xy ##z
    assert SHORT[visit["offsets"][visit["start"]][0]:visit["offsets"][visit["end"]][1]] == "Unaffable Germanyxyz"


@pytest.mark.parametrize("mutate,message", [
    (lambda q: q["answers"][0].update(answer_start=len(NORMANS) - 2),
     "qa_train.json: question id q-country: answer 0 ('France' at 480) ends at character 486, outside the "
     "context (482 characters)"),
    (lambda q: q["answers"][0].update(answer_start=4),
     "qa_train.json: question id q-country: answer 0: answer_start 4 does not match the text: the context there "
     "reads 'Norman', the answer is 'France'"),
    (lambda q: q.update(answers=[]),
     "qa_train.json: question id q-country: no answers (an answerable question needs at least one)"),
])
def test_bad_squad_input_names_file_and_question_and_writes_nothing(tmp_path, ws, capsys, mutate, message):
    assert len(NORMANS) == 482
    data = json.loads(squad_file(tmp_path / "qa_train.json").read_text())
    mutate(data["data"][0]["paragraphs"][0]["qas"][0])
    (tmp_path / "qa_train.json").write_text(json.dumps(data))
    code = prepro_std.main(["--model", "minilm-l6", "--root_dir", str(tmp_path), "--task_def", str(ws / "tasks.yml"),
                            "--tasks", "qa", "--max_seq_len", str(MAX_LEN)])
    err = capsys.readouterr().err
    assert code == 1 and err.strip().endswith("/" + message), err
    assert len(err.strip().splitlines()) == 1 and not list((tmp_path / "minilm-l6").glob("*.jsonl"))


def test_unanswerable_question_in_a_v1_task_is_an_error(tmp_path, ws, capsys):
    squad_file(tmp_path / "qa1_train.json", v2=True)
    assert prepro_std.main(["--model", "minilm-l6", "--root_dir", str(tmp_path), "--task_def",
                            str(ws / "tasks.yml"), "--tasks", "qa1", "--max_seq_len", str(MAX_LEN)]) == 1
    assert "qa1_train.json: question id q-none: is_impossible (SQuAD v2.0) but the task has no " \
           "'unanswerable: true'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ SQuAD decoding/scores
def test_official_normalisation_and_scores_by_hand():
    assert normalize_answer("  The Eiffel-Tower, an  icon! ") == "eiffeltower icon"
    golds = {"a": ["the Eiffel Tower", "Eiffel Tower"], "b": ["Paris, France"], "c": [], "d": []}
    preds = {"a": "Eiffel tower!", "b": "France", "c": "", "d": "Paris"}
    # a: EM 1, F1 1; b: EM 0, F1 = 2*(1*0.5)/(1.5) = 2/3; c: EM 1, F1 1; d: EM 0, F1 0
    out = squad_scores(golds, preds, unanswerable=True)
    assert out == pytest.approx({"EM": 50.0, "F1": 100 * (1 + 2 / 3 + 1) / 4, "HasAns_EM": 50.0,
                                 "HasAns_F1": 100 * (1 + 2 / 3) / 2, "NoAns_EM": 50.0, "NoAns_F1": 50.0})
    assert squad_scores({"a": ["x y z"]}, {"a": "x y w"}, unanswerable=False) == pytest.approx(
        {"EM": 0.0, "F1": 100 * 2 / 3})
    assert token_f1("a the", "") == 1.0  # both normalise to nothing


def _window(context, offsets, starts, start_logits, ends, end_logits, null):
    return {"context": context, "offsets": offsets, "starts": starts, "start_logits": start_logits,
            "ends": ends, "end_logits": end_logits, "null": null}


def test_n_best_decoding_skips_invalid_spans_and_applies_the_null_threshold():
    ctx = "alpha beta gamma delta"
    offs = [None, None, [0, 5], [6, 10], [11, 16], [17, 22], None]  # [CLS] q [SEP]-ish layout
    w1 = _window(ctx, offs, [1, 5, 2], [9.0, 4.0, 3.0], [2, 3, 5], [8.0, 2.0, 1.0], null=5.0)
    # (1, *) is a question token; (5, 2) and (5, 3) end before they start; (2, 5) is 4 tokens long
    opts = SpanOptions(max_answer_len=3)
    assert best_span([w1], opts) == ("alpha", pytest.approx(5.0 - 11.0))  # (2, 2): 3 + 8
    assert best_span([w1], SpanOptions(max_answer_len=4))[0] == "alpha"   # (2, 5) = 4 < 11
    w2 = _window(ctx, offs, [4], [7.0], [5], [6.5], null=20.0)  # "gamma delta": 13.5, the best span
    text, diff = best_span([w1, w2], opts)
    assert text == "gamma delta" and diff == pytest.approx(5.0 - 13.5)  # null is the smallest over windows
    v2 = SpanOptions(max_answer_len=3, unanswerable=True, null_score_diff_threshold=-9.0)
    assert best_span([w1, w2], v2) == ("", pytest.approx(-8.5))  # -8.5 > -9: no answer
    v2 = SpanOptions(max_answer_len=3, unanswerable=True, null_score_diff_threshold=-8.0)
    assert best_span([w1, w2], v2)[0] == "gamma delta"


def test_model_outputs_decode_to_answers_through_the_split(ws):
    """Logits put by hand on the answer tokens of every window that holds one give EM = F1 = 100."""
    td = parse_task_defs(TASKS)["qa"]
    train = load_split(_shards(ws), td, "train", MAX_LEN)
    with pytest.raises(ValueError, match="qa_train: the shard has no offsets, context, answers"):
        split_result(train, [[[0], [0]]] * len(train), [[[0.0, 0.0], [0.0, 0.0]]] * len(train))
    data = load_split(_shards(ws), td, "dev", MAX_LEN)
    batch = collate(data, list(range(len(data))), 0)
    logits = torch.zeros(len(data), batch["input_ids"].shape[1], 2)
    for row, (s, e) in enumerate(batch["labels"].tolist()):
        logits[row, s, 0] += 10
        logits[row, e, 1] += 10
    preds, scores = span_candidates(logits, td.span.n_best_size)
    assert preds.shape == (len(data), 2, 5) and scores.shape == (len(data), 2, 6)
    result = split_result(data, preds.tolist(), scores.tolist())
    assert result.uids == ["q-country", "q-leader", "q-king", "q-none", "q-visitor"]
    assert result.predictions == ["France", "Rollo", "King Charles III", "", "Unaffable Germanyxyz"]
    assert result.metrics == pytest.approx({"EM": 100.0, "F1": 100.0, "HasAns_EM": 100.0, "HasAns_F1": 100.0,
                                            "NoAns_EM": 100.0, "NoAns_F1": 100.0})
    assert json.loads(result.official[1]) == dict(zip(result.uids, result.predictions))


# ------------------------------------------------------------------------------------------ CoNLL
def test_conll_tags_sit_on_first_sub_tokens(ws):
    td = parse_task_defs(TASKS)["ner"]
    assert td.task_type is TaskType.SequenceLabeling
    data = load_split(_shards(ws), td, "train", MAX_LEN)
    assert data.uids == ["3", "9"]
    tok = _tokenizer()
    pieces = tok.convert_ids_to_tokens(data.token_ids[0])
    assert pieces == ["[CLS]", "una", "##ffa", "##ble", "germany", "##xy", "##z", "visited", "paris", ".", "[SEP]"]
    labels = collate(data, [0, 1], 0)["labels"]
    b_per, i_per, b_loc = (td.labels.index(t) for t in ("B-PER", "I-PER", "B-LOC"))
    assert labels[0, :11].tolist() == [-1, b_per, -1, -1, i_per, -1, -1, 0, b_loc, 0, -1]
    assert (labels[0, 11:] == -1).all()


def test_entity_scores_by_hand_and_predictions_as_columns(ws):
    golds = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "O", "O", "O", "O"]]
    preds = [["B-PER", "O", "O", "B-LOC", "O"], ["B-ORG", "O", "B-MISC", "O", "O"]]
    # gold entities: PER(0-1), LOC(3), ORG(0); predicted: PER(0), LOC(3), ORG(0), MISC(2); correct: LOC, ORG
    assert entity_scores(golds, preds) == pytest.approx({"EntityP": 50.0, "EntityR": 100 * 2 / 3,
                                                         "EntityF1": 100 * 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)})
    td = parse_task_defs(TASKS)["ner"]
    data = load_split(_shards(ws), td, "dev", MAX_LEN)
    tag = {t: i for i, t in enumerate(td.labels)}
    length = max(len(t) for t in data.token_ids)
    out = [[0] * length for _ in range(2)]
    for pos, t in zip(data.extras[0]["word_start"], ["B-PER", "X", "O", "B-LOC", "O"]):  # X counts as O
        out[0][pos] = tag[t]
    result = split_result(data, out, [[0.5] * length] * 2)
    # gold PER, LOC, ORG; predicted PER (one word: wrong span), LOC: P = 1/2, R = 1/3, F1 = 0.4
    assert result.metrics == pytest.approx({"EntityP": 50.0, "EntityR": 100 / 3, "EntityF1": 40.0})
    assert result.official[1].splitlines()[:6] == ["Unaffable B-PER B-PER", "Germanyxyz I-PER O", "visited O O",
                                                   "Paris B-LOC B-LOC", ". O O", ""]


@pytest.mark.parametrize("text,message", [
    ("EU B-ORG\nrejects\n", "f.conll:2: expected 'word ... tag' columns, got 'rejects'"),
    ("EU NNP B-ORG\nrejects O\n", "f.conll:2: 2 columns, but the file's first word line has 3"),
    ("EU B-ORG\nrejects B-FOO\n", "f.conll:2: tag 'B-FOO' is not one of the task's labels"),
])
def test_malformed_conll_line_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "f.conll"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConllError) as info:
        read_conll(path, True, ("O", "B-ORG"))
    assert str(info.value).startswith(f"{path.parent}/{message}")


def test_a_tagged_word_with_no_token_is_an_error_naming_its_line(tmp_path, capsys):
    """A zero-width space is no token for BERT's tokenizer: its B-PER tag vanished from training and scoring."""
    from data_utils.conll import encode_conll
    from tokenizers import Tokenizer
    root = tmp_path / "data"
    root.mkdir()
    (tmp_path / "tasks.yml").write_text(TASKS, encoding="utf-8")
    (root / "ner_train.conll").write_text("Anna B-PER\nsleeps O\n\nBob B-PER\n\u200b I-PER\nruns O\n",
                                          encoding="utf-8")
    assert prepro_std.main(["--model", "minilm-l6", "--root_dir", str(root), "--task_def",
                            str(tmp_path / "tasks.yml"), "--tasks", "ner", "--workers", "1"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"prepro_std.py: error: {root / 'ner_train.conll'}:5: word '\\u200b' is no token at all for this tokenizer, "
        "so its tag I-PER could be neither learned nor predicted; replace or remove the word")
    assert not (root / "minilm-l6" / "ner_train.jsonl").exists()
    tok = Tokenizer.from_str(_tokenizer().backend_tokenizer.to_str())
    tok.no_padding()
    labels = parse_task_defs(TASKS)["ner"].labels
    ids = {t: i for i, t in enumerate(labels)}
    spare = read_conll(_write(tmp_path / "o.conll", "Bob B-PER\n\u200b O\n"), True, labels)
    assert json.loads(encode_conll(tok, spare, ids, True)[0])["word_start"] == [1, -1]  # an O word loses nothing
    tok.enable_truncation(max_length=4)
    cut = read_conll(_write(tmp_path / "c.conll", "Anna B-PER\nand O\nBob B-PER\nrun O\n"), True, labels)
    assert json.loads(encode_conll(tok, cut, ids, True)[0])["word_start"] == [1, 2, -1, -1]  # cut: predicted O


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ end to end
def _independent_em_f1(gold_lists: dict, predictions: dict) -> tuple[float, float]:
    """The official script's rules, written out again for the check."""
    def norm(s):
        s = "".join(c for c in s.lower() if c not in set(string.punctuation))
        return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())

    def f1(p, g):
        p, g = norm(p).split(), norm(g).split()
        if not p or not g:
            return float(p == g)
        same = sum((collections.Counter(p) & collections.Counter(g)).values())
        return 0.0 if same == 0 else 2 * same / (len(p) + len(g))
    em = [max(float(norm(predictions[q]) == norm(g)) for g in (gs or [""])) for q, gs in gold_lists.items()]
    f = [max(f1(predictions[q], g) for g in (gs or [""])) for q, gs in gold_lists.items()]
    return 100 * sum(em) / len(em), 100 * sum(f) / len(f)


@pytest.mark.training
def test_squad_and_conll_train_next_to_a_glue_task_and_predict(ws, capsys):
    out = ws / "run"
    assert train_cli.main(["--train_datasets", "qa,ner,cls", "--test_datasets", "qa,ner,cls", "--task_def",
                           str(ws / "tasks.yml"), "--data_dir", str(_shards(ws)), "--init_checkpoint", "minilm-l6",
                           "--output_dir", str(out), "--optimizer", "usadamax", "--batch_size", "4", "--epochs", "1",
                           "--max_seq_len", str(MAX_LEN), "--device", "cpu", "--no_tensorboard",
                           "--optim_impl", "foreach", "--learning_rate", "1e-4", "--num_threads", "1",
                           "--num_hidden_layers", "2"]) == 0  # MiniLM-L6's first 2 layers: a few seconds on CPU
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record["dev"]) == {"qa_dev", "ner_dev", "cls_dev"}
    test_cols = (out / "ner_test_submission_0.conll").read_text().splitlines()
    assert [ln.split()[0] for ln in test_cols if ln] == ["EU", "rejects", "Paris"]
    dev = json.loads((ws / "canonical" / "qa_dev.json").read_text())
    golds = {qa["id"]: [a["text"] for a in qa["answers"]] for art in dev["data"] for p in art["paragraphs"]
             for qa in p["qas"]}
    for task, split in (("qa", "dev"), ("ner", "dev")):
        assert predict_cli.main(["--checkpoint", str(out / "best"), "--task", task, "--split", split,
                                 "--output_dir", str(ws / "pred"), "--device", "cpu"]) == 0
    summaries = json.loads("[" + capsys.readouterr().out.replace("}\n{", "},\n{") + "]")
    assert [Path(s["predictions_file"]).name for s in summaries] == ["qa_dev_predictions_predict.json",
                                                                     "ner_dev_predictions_predict.conll"]
    answers = json.loads((ws / "pred" / "qa_dev_predictions_predict.json").read_text())
    assert set(answers) == set(golds)
    em, f1 = _independent_em_f1(golds, answers)
    metrics = json.loads((ws / "pred" / "qa_dev_scores_predict.json").read_text())["metrics"]
    assert metrics["EM"] == pytest.approx(em) and metrics["F1"] == pytest.approx(f1)
    assert metrics == pytest.approx(record["dev"]["qa_dev"])  # the checkpoint predicts what training measured
    columns = (ws / "pred" / "ner_dev_predictions_predict.conll").read_text().split("\n\n")
    gold_seqs = [[ln.split()[1] for ln in block.splitlines()] for block in columns if block.strip()]
    pred_seqs = [[ln.split()[2] for ln in block.splitlines()] for block in columns if block.strip()]
    assert gold_seqs == [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "O", "O", "O", "O"]]
    ner = json.loads((ws / "pred" / "ner_dev_scores_predict.json").read_text())["metrics"]
    assert ner["EntityF1"] == pytest.approx(_independent_entity_f1(gold_seqs, pred_seqs))
    assert ner == pytest.approx(record["dev"]["ner_dev"])


def _independent_entity_f1(golds, preds) -> float:
    """IOB2 chunks (type, first, last) per sentence, an entity counting when type and both ends agree."""
    def chunks(seq):
        out, cur = set(), None
        for i, t in enumerate(seq + ["O"]):
            if cur and not (t.startswith("I-") and t[2:] == cur[0]):
                out.add((cur[0], cur[1], i - 1))
                cur = None
            if t.startswith("B-") or (t.startswith("I-") and cur is None):
                cur = (t[2:], i)
        return out
    g = {(k,) + c for k, s in enumerate(golds) for c in chunks(s)}
    p = {(k,) + c for k, s in enumerate(preds) for c in chunks(s)}
    if not g or not p or not g & p:
        return 0.0
    prec, rec = len(g & p) / len(p), len(g & p) / len(g)
    return 100 * 2 * prec * rec / (prec + rec)


# ------------------------------------------------------------------------------------------ task definitions
MTDNN_NER = """ner:
  data_format: Seqence
  dropout_p: 0.3
  enable_san: False
  labels:
  - O
  - B-MISC
  - I-MISC
  - B-PER
  - I-PER
  - B-ORG
  - I-ORG
  - B-LOC
  - I-LOC
  - X
  - CLS
  - SEP
  metric_meta:
  - SeqEval
  n_class: 12
  loss: SeqCeCriterion
  split_names:
  - train
  - dev
  - test
  task_type: SeqenceLabeling
"""


def test_mtdnn_span_and_ner_definitions_load_as_real_types_in_both_spellings(caplog):
    with caplog.at_level("WARNING", logger="sage.task_def"):
        ner = parse_task_defs(MTDNN_NER, "ner.yml")["ner"]
        fixed = parse_task_defs(MTDNN_NER.replace("SeqenceLabeling", "SequenceLabeling")
                                .replace("Seqence\n", "Sequence\n"), "ner.yml")["ner"]
        squad = parse_task_defs("squad:\n  task_type: Span\n  data_format: MRC\n  n_class: 2\n  metric_meta: [EmF1]\n"
                                "  loss: SpanCeCriterion\n  split_names: [train, dev]\n", "s.yml")["squad"]
    assert not caplog.records
    assert ner.task_type is fixed.task_type is TaskType.SequenceLabeling and ner.n_class == 12
    assert ner.loss == "SeqCeCriterion" and ner.labels[-3:] == ("X", "CLS", "SEP")
    assert squad.task_type is TaskType.Span and squad.span == SpanOptions() and squad.loss == "SpanCeCriterion"


@pytest.mark.parametrize("text,message", [
    ("t:\n  task_type: Classification\n  data_format: PremiseOnly\n  n_class: 2\n  metric_meta: [ACC]\n"
     "  doc_stride: 64\n", "f.yml:6: task 't', field 'doc_stride': only Span tasks have this field"),
    ("t:\n  task_type: Span\n  data_format: MRC\n  metric_meta: [EmF1]\n  doc_stride: 0\n",
     "f.yml:5: task 't', field 'doc_stride': must be at least 1, got 0"),
    ("t:\n  task_type: Span\n  data_format: MRC\n  metric_meta: [ACC]\n",
     "f.yml:4: task 't', field 'metric_meta': metric ACC does not apply to a Span task; use EmF1"),
    ("t:\n  task_type: SeqenceLabeling\n  data_format: Seqence\n  metric_meta: [SeqEval]\n  n_class: 3\n",
     "f.yml:1: task 't', field 'labels': a SequenceLabeling task needs its tags as labels"),
    ("t:\n  task_type: Span\n  data_format: PremiseOnly\n  metric_meta: [EmF1]\n",
     "f.yml:3: task 't', field 'data_format': PremiseOnly does not fit a Span task; use MRC"),
])
def test_bad_span_and_ner_definitions(text, message):
    from data_utils.task_def import TaskDefError
    with pytest.raises(TaskDefError) as info:
        parse_task_defs(text, "f.yml")
    assert str(info.value).startswith(message), str(info.value)


# ------------------------------------------------------------------------------------------ exact resume
@pytest.fixture(scope="module")
def tiny(ws) -> Path:
    """A tiny random BERT with MiniLM-L6's vocabulary size, so the MiniLM-tokenized shards fit it."""
    from transformers import AutoModel

    from conftest import tiny_bert_config
    torch.manual_seed(0)
    path = ws / "tiny-bert"
    AutoModel.from_config(tiny_bert_config(vocab_size=30522)).save_pretrained(path)
    return path


def _trainer_cfg(ws: Path, tiny: Path, out: str, **kw):
    from mt_dnn.config import TrainConfig
    base = dict(train_datasets=["qa", "ner", "cls"], test_datasets=["qa", "ner", "cls"],
                task_def=str(ws / "tasks.yml"), data_dir=str(_shards(ws)), init_checkpoint=str(tiny),
                output_dir=str(ws / out), optimizer="usadamax", learning_rate=2e-3, batch_size=4, epochs=2,
                max_seq_len=MAX_LEN, log_every=1, tensorboard=False, optim_impl="foreach", seed=5,
                save_every_steps=4, num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_span_and_ner_resume_exactly(ws, tiny):
    from mt_dnn.trainer import Trainer
    full = Trainer(_trainer_cfg(ws, tiny, "resume-full"))
    full.fit()
    cut = Trainer(_trainer_cfg(ws, tiny, "resume-cut"))
    cut.fit(stop_after_steps=10)  # newest checkpoint: step 8, so steps 9-10 are redone
    resumed = Trainer(_trainer_cfg(ws, tiny, "resume-cut", resume=True))
    resumed.fit()
    assert resumed.global_step == full.global_step == 18
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.history[-1]["dev"] == full.history[-1]["dev"]
    assert set(full.history[-1]["dev"]["qa_dev"]) == {"EM", "F1", "HasAns_EM", "HasAns_F1", "NoAns_EM", "NoAns_F1"}
    assert (ws / "resume-cut" / "qa_dev_predictions_1.json").read_text() == \
        (ws / "resume-full" / "qa_dev_predictions_1.json").read_text()


# ------------------------------------------------------------------------------------------ DDP (gloo)
@pytest.mark.subprocess
def test_two_ranks_match_one_process_and_gather_span_and_tag_outputs(ws):
    """qa and cls train on 2 gloo ranks (batch 2 each) and in 1 process (batch 4): same weights, and the
    sharded, gathered evaluation of qa and ner (evaluated only: both load its head from the same short ner run)
    gives the same answers, tags and metrics. (NER's token-mean loss is not split over ranks by rows, so NER
    training is left out of this bit-level comparison.)"""
    import subprocess
    import sys

    from safetensors.torch import load_file
    from transformers import AutoModel

    from conftest import ROOT, tiny_bert_config
    from test_distributed import _env, _free_port
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config(vocab_size=30522, hidden_dropout_prob=0.0,
                                           attention_probs_dropout_prob=0.0)).save_pretrained(ws / "tiny-nodrop")

    def args(out, batch, train="qa,cls", test="qa,ner,cls", init=ws / "ddp-ner" / "best"):
        return ["--train_datasets", train, "--test_datasets", test, "--task_def", str(ws / "tasks.yml"),
                "--data_dir", str(_shards(ws)), "--init_checkpoint", str(init), "--output_dir",
                str(ws / out), "--optimizer", "usadamax", "--learning_rate", "2e-3", "--batch_size", str(batch),
                "--epochs", "1", "--max_seq_len", str(MAX_LEN), "--optim_impl", "foreach", "--no_tensorboard",
                "--device", "cpu", "--seed", "3", "--dropout_p", "0"]

    def run(cmd):
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    # the ner head both runs evaluate (and do not train) comes from a short ner-only run, as --init_checkpoint
    run([sys.executable, "train.py", *args("ddp-ner", 4, train="ner", test="ner", init=ws / "tiny-nodrop")])
    run([sys.executable, "train.py", *args("ddp-one", 4)])
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "train.py", *args("ddp-two", 2)])
    one, two = ws / "ddp-one", ws / "ddp-two"
    wa = load_file(str(one / "best" / "model.safetensors"))
    wb = load_file(str(two / "best" / "model.safetensors"))
    # fp32 sums in another order (two half batches all-reduced vs one batch): agreement to a few ulps of ~1
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) <= 5e-6
    for name in ("qa_dev_scores_0.json", "ner_dev_scores_0.json"):
        a, b = (json.loads((d / name).read_text()) for d in (one, two))
        assert a["uids"] == b["uids"] and a["predictions"] == b["predictions"], name
        assert a["metrics"] == pytest.approx(b["metrics"]), name
    assert (one / "qa_dev_predictions_0.json").read_text() == (two / "qa_dev_predictions_0.json").read_text()
    assert (two / "ner_test_submission_0.conll").is_file()


# ------------------------------------------------------------------------------------------ heads and losses
def test_per_token_heads_and_losses_by_hand():
    from transformers import AutoModel

    from conftest import tiny_bert_config
    from mt_dnn.loss import SeqCeCriterion, SpanCeCriterion
    from mt_dnn.model import MTDNNModel
    torch.manual_seed(0)
    defs = parse_task_defs(TASKS)
    model = MTDNNModel(AutoModel.from_config(tiny_bert_config()), {k: defs[k] for k in ("qa", "ner")}).eval()
    ids = torch.randint(5, 100, (2, 8))
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    span = model("qa", ids, mask)
    tags = model("ner", ids, mask)
    assert span.shape == (2, 8, 2) and tags.shape == (2, 8, 8)
    assert (span[1, 5:] == -1e4).all() and (span[1, :5] > -100).all()  # padding can never be an answer
    logits = torch.randn(2, 8, 2)
    labels = torch.tensor([[3, 4], [0, 0]])
    by_hand = sum(-torch.log_softmax(logits[b, :, k], 0)[labels[b, k]] for b in range(2) for k in range(2)) / 4
    assert SpanCeCriterion()(logits, labels) == pytest.approx(by_hand.item(), rel=1e-6)
    tag_logits = torch.randn(2, 8, 8)
    tag_labels = torch.full((2, 8), -1)
    tag_labels[0, 1], tag_labels[0, 4], tag_labels[1, 2] = 3, 4, 0
    picked = [(0, 1, 3), (0, 4, 4), (1, 2, 0)]
    by_hand = sum(-torch.log_softmax(tag_logits[b, t], 0)[c] for b, t, c in picked) / 3
    assert SeqCeCriterion()(tag_logits, tag_labels) == pytest.approx(by_hand.item(), rel=1e-6)
    untagged = tag_logits.clone().requires_grad_()  # no tagged token at all: loss 0, zero gradient, no NaN
    loss = SeqCeCriterion()(untagged, torch.full((2, 8), -1))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(untagged.grad, torch.zeros_like(untagged))
    with pytest.raises(ValueError, match=r"SpanCeCriterion: expects integer labels of shape \(2, 2\)"):
        SpanCeCriterion()(logits, torch.tensor([3, 4]))


# ------------------------------------------------------------------------------------------ shard rows
@pytest.mark.parametrize("extra,message", [
    ({"qid": "q", "start": 5, "end": 0}, "x.jsonl:1: start must be a token position in 0..2, got 5"),
    ({"offsets": [None]}, "x.jsonl:1: offsets must be a list with one entry per token (3)"),
    ({"words": ["a"], "tags": [0], "word_start": [3]}, "x.jsonl:1: word_start must hold token positions in 0..2"),
    ({"words": ["a", "b"], "tags": [0], "word_start": [1, 2]}, "x.jsonl:1: words, tags and word_start must be lists"),
    ({"colour": 1}, "x.jsonl:1: expected an object with keys ['uid', 'label', 'token_id', 'type_id'], then only "
                    "fields among ['qid', 'start', 'end', 'offsets', 'context', 'answers', 'impossible', 'words', "
                    "'tags', 'word_start', 'soft_label']; got unknown ['colour']"),
])
def test_extra_shard_fields_are_checked(tmp_path, extra, message):
    from data_utils.shards import ShardError
    row = {"uid": "1", "label": 0, "token_id": [101, 7, 102], "type_id": [0, 0, 0], **extra}
    (tmp_path / "x.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(ShardError) as info:
        read_shard(tmp_path / "x.jsonl")
    assert str(info.value).startswith(f"{tmp_path}/{message}")


def test_token_level_rows_longer_than_max_seq_len_are_refused(ws):
    td = parse_task_defs(TASKS)["ner"]
    with pytest.raises(ValueError, match=r"ner_train.jsonl:1: 11 tokens, more than --max_seq_len 8; "
                                         r"SequenceLabeling rows cannot be cut after prepro_std.py"):
        load_split(_shards(ws), td, "train", 8)


@pytest.mark.parametrize("flags,flag", [(["--adv_train"], "--adv_train"), (["--mkd_opt", "1"], "--mkd_opt")])
def test_smart_and_distillation_refuse_span_and_ner_tasks(ws, capsys, flags, flag):
    """Their divergences are defined on per-example outputs; a Span/SequenceLabeling task is refused in one line."""
    from mt_dnn.config import parse_args
    from mt_dnn.objectives import check_task_fits
    defs = parse_task_defs((ws / "tasks.yml").read_text(), str(ws / "tasks.yml"))
    cfg = parse_args(["--train_datasets", "qa", *flags])
    with pytest.raises(ValueError, match=f"^{flag}: task 'qa' is a Span task; SMART and distillation are for "
                                         "Classification, Regression, Ranking tasks$"):
        check_task_fits(cfg.objective_settings(), {"qa": defs["qa"]})

"""data_utils/task_def.py: the GLUE and demo YAMLs load with their real values; every YAML error names the file,
line, task and field; label helpers round-trip; the name lists agree with the metric and loss registries."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from data_utils.task_def import (KNOWN_METRICS, LOSS_FOR_TYPE, DataFormat, TaskDef, TaskDefError, TaskType,
                                 load_task_defs, parse_task_defs, select_tasks, split_role)

ROOT = Path(__file__).resolve().parents[1]
GLUE_YML = ROOT / "experiments" / "glue" / "glue_task_def.yml"
DEMO_YML = ROOT / "experiments" / "demo" / "demo_task_def.yml"

# task: (data_format, labels, metric_meta, dropout_p), written from the GLUE papers/files, not from the YAML
GLUE_EXPECTED = {
    "cola": ("PremiseOnly", ("0", "1"), ("MCC",), 0.1),
    "sst": ("PremiseOnly", ("0", "1"), ("ACC",), 0.1),
    "mrpc": ("PremiseAndOneHypothesis", ("0", "1"), ("ACC", "F1"), 0.1),
    "stsb": ("PremiseAndOneHypothesis", None, ("Pearson", "Spearman"), 0.1),
    "qqp": ("PremiseAndOneHypothesis", ("0", "1"), ("ACC", "F1"), 0.0),
    "mnli": ("PremiseAndOneHypothesis", ("contradiction", "neutral", "entailment"), ("ACC",), 0.3),
    "qnli": ("PremiseAndOneHypothesis", ("not_entailment", "entailment"), ("ACC",), 0.1),
    "rte": ("PremiseAndOneHypothesis", ("not_entailment", "entailment"), ("ACC",), 0.1),
    "wnli": ("PremiseAndOneHypothesis", ("0", "1"), ("ACC",), 0.1),
    "snli": ("PremiseAndOneHypothesis", ("contradiction", "neutral", "entailment"), ("ACC",), 0.1),
    "scitail": ("PremiseAndOneHypothesis", ("neutral", "entails"), ("ACC",), 0.1),
}

CLS = "  task_type: Classification\n  data_format: PremiseOnly\n  metric_meta: [ACC]\n"


def test_glue_task_defs_real_values():
    defs = load_task_defs(GLUE_YML)
    assert list(defs) == list(GLUE_EXPECTED)  # file order is kept
    for name, (fmt, labels, metrics, dropout) in GLUE_EXPECTED.items():
        td = defs[name]
        assert isinstance(td, TaskDef) and td.name == name
        assert td.data_format is DataFormat[fmt]
        assert td.labels == labels
        assert td.metric_meta == metrics
        assert td.dropout_p == dropout
        assert td.enable_san is False
        if name == "stsb":
            assert (td.task_type, td.n_class, td.loss) == (TaskType.Regression, 1, "MseCriterion")
        else:
            assert (td.task_type, td.n_class, td.loss) == (TaskType.Classification, len(labels), "CeCriterion")
    mnli = defs["mnli"]
    assert mnli.split_names == ("train", "matched_dev", "mismatched_dev", "matched_test", "mismatched_test", "ax_test")
    assert mnli.train_splits() == ("train",)
    assert mnli.dev_splits() == ("matched_dev", "mismatched_dev")
    assert mnli.test_splits() == ("matched_test", "mismatched_test", "ax_test")
    assert [mnli.has_labels(s) for s in mnli.split_names] == [True, True, True, False, False, False]
    assert all(defs[t].split_names == ("train", "dev", "test") for t in GLUE_EXPECTED if t != "mnli")


def test_demo_task_defs_load():
    defs = load_task_defs(DEMO_YML)
    assert defs["vaderpol"].labels == ("negative", "positive")
    assert defs["vaderval"].labels is None and defs["vaderval"].is_regression
    assert defs["vaderpol"].test_splits() == ()


def test_label_helpers_round_trip():
    mnli = load_task_defs(GLUE_YML)["mnli"]
    for i, name in enumerate(("contradiction", "neutral", "entailment")):
        assert mnli.label_id(name) == i and mnli.label_name(i) == name
        assert mnli.parse_label(name) == i
    with pytest.raises(ValueError, match=r"task mnli: label 'Entailment' is not one of \['contradiction'"):
        mnli.label_id("Entailment")
    for bad in (3, -1, True, 1.5):
        with pytest.raises(ValueError, match=r"task mnli: class id .* is outside 0\.\.2"):
            mnli.label_name(bad)
    assert mnli.placeholder_label() == 0


def test_regression_labels():
    stsb = load_task_defs(GLUE_YML)["stsb"]
    assert stsb.parse_label("3.800") == 3.8 and stsb.parse_label("5") == 5.0
    assert stsb.placeholder_label() == 0.0 and isinstance(stsb.placeholder_label(), float)
    with pytest.raises(ValueError, match="task stsb: regression label 'high' is not a number"):
        stsb.parse_label("high")
    with pytest.raises(ValueError, match="task stsb: regression label 'nan' is not finite"):
        stsb.parse_label("nan")
    with pytest.raises(ValueError, match="task stsb: a Regression task has no label names"):
        stsb.label_id("1")


def test_defaults():
    td = parse_task_defs("mytask:\n  task_type: Classification\n  data_format: PremiseOnly\n"
                         "  n_class: 3\n  metric_meta: [ACC]\n")["mytask"]
    assert td.labels == ("0", "1", "2") and td.loss == "CeCriterion" and td.dropout_p == 0.1
    assert td.split_names == ("train", "dev", "test") and td.enable_san is False
    td = parse_task_defs("t:\n" + CLS + "  labels: [bad, good]\n")["t"]
    assert td.n_class == 2 and td.labels == ("bad", "good")
    td = parse_task_defs("t:\n" + CLS + "  labels: [0, 1]\n  dropout_p: 0\n")["t"]
    assert td.labels == ("0", "1") and td.dropout_p == 0.0
    reg = parse_task_defs("r:\n  task_type: Regression\n  data_format: PremiseAndOneHypothesis\n"
                          "  metric_meta: [Pearson]\n")["r"]
    assert (reg.n_class, reg.labels, reg.loss) == (1, None, "MseCriterion")
    rank = parse_task_defs("k:\n  task_type: Ranking\n  data_format: PremiseAndMultiHypothesis\n"
                           "  n_class: 4\n  metric_meta: [ACC]\n")["k"]
    assert (rank.n_class, rank.labels, rank.loss) == (4, ("0", "1", "2", "3"), "RankCeCriterion")


def test_name_lists_match_the_registries():
    from data_utils.metrics import METRICS, SPLIT_METRICS
    from mt_dnn.loss import LOSSES
    assert set(KNOWN_METRICS) == set(METRICS) | set(SPLIT_METRICS)
    assert set(LOSS_FOR_TYPE.values()) == set(LOSSES)


def test_glue_defs_build_heads_and_metrics():
    """The loaded TaskDefs are what MTDNNModel and compute_metrics consume."""
    import numpy as np
    from transformers import AutoModel

    from conftest import tiny_bert_config
    from data_utils.metrics import compute_metrics
    from mt_dnn.model import MTDNNModel
    all_defs = load_task_defs(GLUE_YML)
    model = MTDNNModel(AutoModel.from_config(tiny_bert_config()), select_tasks(all_defs, ["mnli", "stsb"]))
    assert model.heads["mnli"].proj.out_features == 3
    assert model.heads["mnli"].dropout.p == 0.3
    scores = compute_metrics(all_defs["mrpc"], np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))
    assert list(scores) == ["ACC", "F1"] and scores["ACC"] == 75.0


def test_select_tasks_order_and_unknown():
    defs = load_task_defs(GLUE_YML)
    assert list(select_tasks(defs, ["rte", "cola"])) == ["rte", "cola"]
    with pytest.raises(TaskDefError, match=r"f\.yml: unknown task\(s\) \['sst2'\]; known: cola, sst, mrpc"):
        select_tasks(defs, ["sst2"], "f.yml")


def test_split_role():
    assert [split_role(s) for s in ("train", "dev", "matched_dev", "test", "x-test")] == \
        ["train", "dev", "dev", "test", "test"]
    for bad in ("validation", "dev_test"):
        with pytest.raises(ValueError, match="must contain exactly one of 'train', 'dev', 'test'"):
            split_role(bad)


# ------------------------------------------------------------------------------------------ YAML errors
# (YAML text, exact message expected from parse_task_defs(text, "f.yml"))
ERRORS = [
    ("t:\n" + CLS + "  labels: [a, b]\n  colour: red\n",
     "f.yml:6: task 't', field 'colour': unknown field; known: task_type, data_format, n_class, labels, "
     "metric_meta, loss, dropout_p, split_names, enable_san, adv_loss, kd_loss, doc_stride, max_query_len, max_answer_len, n_best_size, "
     "unanswerable, null_score_diff_threshold, data, columns"),
    ("t:\n" + CLS + "  n_class: two\n",
     "f.yml:5: task 't', field 'n_class': must be an integer, got str 'two'"),
    ("t:\n" + CLS + "  n_class: true\n",
     "f.yml:5: task 't', field 'n_class': must be an integer, got bool True"),
    ("t:\n  task_type: Classifier\n  data_format: PremiseOnly\n  metric_meta: [ACC]\n",
     "f.yml:2: task 't', field 'task_type': unknown value 'Classifier'; known: Classification, Regression, Ranking, "
     "Span, SequenceLabeling, SeqenceLabeling"),
    ("t:\n  task_type: Classification\n  data_format: Premise\n  metric_meta: [ACC]\n",
     "f.yml:3: task 't', field 'data_format': unknown value 'Premise'; known: PremiseOnly, "
     "PremiseAndOneHypothesis, PremiseAndMultiHypothesis, MRC, Seqence, Sequence"),
    ("t:\n  task_type: Classification\n  data_format: PremiseAndMultiHypothesis\n  metric_meta: [ACC]\n",
     "f.yml:3: task 't', field 'data_format': PremiseAndMultiHypothesis does not fit a Classification task; "
     "use PremiseOnly, PremiseAndOneHypothesis"),
    ("t:\n" + CLS + "  n_class: 3\n  labels: [a, b]\n",
     "f.yml:5: task 't', field 'n_class': n_class is 3 but labels has 2 items ['a', 'b']"),
    ("t:\n" + CLS,
     "f.yml:1: task 't', field 'n_class': a Classification task needs n_class or labels"),
    ("t:\n" + CLS + "  n_class: 1\n",
     "f.yml:5: task 't', field 'n_class': a Classification task needs at least 2 classes, got n_class 1"),
    ("my_task:\n" + CLS + "  n_class: 2\n",
     "f.yml:1: task 'my_task': task name must not contain '_' (shard files are named {task}_{split}); "
     "try 'my-task'"),
    ("my.task:\n" + CLS + "  n_class: 2\n",
     "f.yml:1: task 'my.task': task name must be letters, digits and '-' (starting with a letter or digit)"),
    ("t:\n" + CLS + "  n_class: 2\n  enable_san: 0\n",
     "f.yml:6: task 't', field 'enable_san': must be true or false, got int 0"),
    ("t:\n" + CLS + "  labels: [no, yes]\n",
     "f.yml:5: task 't', field 'labels': item 0 is the boolean False: YAML reads unquoted "
     "yes/no/true/false/on/off as booleans; quote it"),
    ("t:\n" + CLS + "  labels: [a, a]\n",
     "f.yml:5: task 't', field 'labels': repeated item(s) ['a']"),
    ("t:\n" + CLS + "  labels: [a, 'b c ']\n",
     "f.yml:5: task 't', field 'labels': item 1 must be a non-empty string without surrounding spaces, tabs or "
     "newlines, got str 'b c '"),
    ("t:\n" + CLS + "  labels: a\n",
     "f.yml:5: task 't', field 'labels': must be a non-empty list, got str 'a'"),
    ("t:\n  task_type: Classification\n  data_format: PremiseOnly\n  metric_meta: [Accuracy]\n  n_class: 2\n",
     "f.yml:4: task 't', field 'metric_meta': unknown metric 'Accuracy'; known: ACC, F1, MCC, AUC, Pearson, "
     "Spearman, EmF1, SeqEval"),
    ("t:\n  task_type: Regression\n  data_format: PremiseOnly\n  metric_meta: [ACC]\n",
     "f.yml:4: task 't', field 'metric_meta': metric ACC does not apply to a Regression task; use Pearson, "
     "Spearman"),
    ("t:\n  task_type: Classification\n  data_format: PremiseOnly\n  metric_meta: [ACC, F1]\n  n_class: 3\n",
     "f.yml:4: task 't', field 'metric_meta': F1 (of class 1) needs a 2-class Classification task"),
    ("t:\n" + CLS + "  n_class: 2\n  loss: CrossEntropy\n",
     "f.yml:6: task 't', field 'loss': unknown loss 'CrossEntropy'; known: CeCriterion, MseCriterion, "
     "RankCeCriterion, SpanCeCriterion, SeqCeCriterion"),
    ("t:\n" + CLS + "  n_class: 2\n  loss: MseCriterion\n",
     "f.yml:6: task 't', field 'loss': loss MseCriterion does not fit a Classification task; use CeCriterion"),
    ("t:\n" + CLS + "  n_class: 2\n  dropout_p: 1.0\n",
     "f.yml:6: task 't', field 'dropout_p': must be a number in [0, 1), got float 1.0"),
    ("t:\n" + CLS + "  n_class: 2\n  dropout_p: '0.1'\n",
     "f.yml:6: task 't', field 'dropout_p': must be a number in [0, 1), got str '0.1'"),
    ("t:\n" + CLS + "  n_class: 2\n  split_names: [train, validation]\n",
     "f.yml:6: task 't', field 'split_names': split name 'validation' must contain exactly one of 'train', 'dev', "
     "'test' (that is how labelled training, evaluation and unlabelled test splits are told apart)"),
    ("t:\n" + CLS + "  n_class: 2\n  split_names: [train, dev, dev]\n",
     "f.yml:6: task 't', field 'split_names': repeated item(s) ['dev']"),
    ("t:\n" + CLS + "  n_class: 2\n  split_names: [train, my dev]\n",
     "f.yml:6: task 't', field 'split_names': split name 'my dev' must be letters, digits, '_' and '-'"),
    ("t:\n  task_type: Classification\n  data_format: PremiseOnly\n  n_class: 2\n",
     "f.yml:1: task 't', field 'metric_meta': required field is missing"),
    ("t:\n  task_type: Regression\n  data_format: PremiseOnly\n  metric_meta: [Pearson]\n  labels: [x]\n",
     "f.yml:5: task 't', field 'labels': a Regression task has no labels; remove the field"),
    ("t:\n  task_type: Regression\n  data_format: PremiseOnly\n  metric_meta: [Pearson]\n  n_class: 2\n",
     "f.yml:5: task 't', field 'n_class': a Regression task has n_class 1, got 2"),
    ("t:\n  task_type: Ranking\n  data_format: PremiseAndMultiHypothesis\n  metric_meta: [ACC]\n  n_class: 0\n",
     "f.yml:5: task 't', field 'n_class': a Ranking task needs at least 2 hypotheses per example, got n_class 0"),
    ("t:\n" + CLS + "  n_class: 2\nt:\n" + CLS + "  n_class: 3\n",
     "f.yml:6: task 't' is defined twice"),
    ("t:\n" + CLS + "  n_class: 2\n  n_class: 3\n",
     "f.yml:6: task 't', field 'n_class': given twice"),
    ("t: Classification\n", "f.yml:1: task 't': must be a mapping of fields, got str"),
    ("- t\n", "f.yml: must be a mapping of task name -> fields, got list"),
    ("", "f.yml: no task definitions (the file is empty)"),
    ("# only a comment\n", "f.yml: no task definitions (the file is empty)"),
    ("t:\n  labels: [a, b\n", "f.yml:3: not valid YAML: expected ',' or ']', but got '<stream end>'"),
    ("1:\n" + CLS + "  n_class: 2\n", "f.yml:1: task name 1 must be a string, got int"),
]


@pytest.mark.parametrize("text,message", ERRORS, ids=[f"e{i}" for i in range(len(ERRORS))])
def test_yaml_errors(text, message):
    with pytest.raises(TaskDefError) as info:
        parse_task_defs(text, "f.yml")
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_error_for_each_required_field():
    for field, line in (("task_type", "  task_type: Classification\n"),
                        ("data_format", "  data_format: PremiseOnly\n")):
        text = "t:\n" + CLS.replace(line, "") + "  n_class: 2\n"
        with pytest.raises(TaskDefError, match=re.escape(f"task 't', field '{field}': required field is missing")):
            parse_task_defs(text, "f.yml")


def test_file_errors(tmp_path):
    with pytest.raises(TaskDefError, match=re.escape(f"{tmp_path / 'none.yml'}: task definition file not found")):
        load_task_defs(tmp_path / "none.yml")
    bad = tmp_path / "latin1.yml"
    bad.write_bytes("t:\n  labels: [caf\xe9]\n".encode("latin-1"))
    with pytest.raises(TaskDefError, match=re.escape(f"{bad}:2: not UTF-8 (byte offset 17)")):
        load_task_defs(bad)
    good = tmp_path / "mine.yml"
    good.write_text("t:\n" + CLS + "  n_class: 2\n  loss: Nope\n", encoding="utf-8")
    with pytest.raises(TaskDefError, match=re.escape(f"{good}:6: task 't', field 'loss'")):
        load_task_defs(good)


def test_task_def_is_frozen():
    td = load_task_defs(GLUE_YML)["rte"]
    with pytest.raises(AttributeError):
        td.n_class = 3

"""MT-DNN's and the SAGE repository's task-definition files (verbatim copies in tests/fixtures/): each loads with
the meaning MT-DNN gives it, its inconsistencies warn with file:line, and every task this project trains trains
through prepro_std.py and train.py on a few synthetic rows with MiniLM-L6."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import prepro_std
import train as train_cli
from data_utils.task_def import (DataFormat, SpanOptions, TaskDef, TaskDefError, TaskType, load_task_defs,
                                 parse_task_defs, select_tasks)

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # where each file comes from: tests/fixtures/README.md
MAX_LEN = 48

ADV_SEQ = ("field 'adv_loss' has no effect on SequenceLabeling tasks (SMART (--adv_train) is for Classification, "
           "Regression and Ranking tasks and refuses a run that trains this one, as MT-DNN's assertion does)")
KD_SEQ = ("field 'kd_loss' has no effect on SequenceLabeling tasks (distillation (--mkd_opt) is for "
          "Classification, Regression and Ranking tasks and refuses a run that trains this one)")
ADV_SPAN, KD_SPAN = ADV_SEQ.replace("SequenceLabeling", "Span"), KD_SEQ.replace("SequenceLabeling", "Span")
ENCODER = ("field 'encoder_type' has no effect here (the encoder comes from --init_checkpoint (and is checked by "
           "--encoder_type))")
COPA = ("task 'copa', field 'n_class': a Ranking task needs at least 2 hypotheses per example, got n_class 1 "
        "(MT-DNN's n_class 1 is one score per hypothesis, their number read from its TSVs, which carry a ruid "
        "column this project's do not); the task is left out: give the number of hypotheses to train it here")
GLUE = ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst", "stsb", "wnli"]
GLUE_11 = ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "scitail", "snli", "sst", "stsb", "wnli"]

# fixture -> (tasks loaded, tasks left out, warnings as "line: text" after the file's path)
EXPECTED = {
    "mtdnn/glue_task_def.yml": (GLUE_11, [], []),
    "mtdnn/glue_task_def_head.yml": (GLUE, [], []),
    "mtdnn/glue_task_def_san.yml": (GLUE_11, [], ["3: " + ENCODER + "; given for " + ", ".join(
        f"{t} (line {n})" for t, n in zip(GLUE_11, (3, 13, 32, 41, 52, 61, 71, 83, 95, 103, 112)))]),
    "mtdnn/anli_task_def.yml": (["anli", "fever"], [], [
        "39: task 'fever', field 'n_class': n_class is 2 but labels has 3 items ['contradiction', 'neutral', "
        "'entailment']; as in MT-DNN, the head has 2 classes ['contradiction', 'neutral'] and rows labelled "
        "'entailment' are refused (MT-DNN's training fails on them)"]),
    "mtdnn/ner_task_def.yml": (["ner", "pos", "chunk"], [], [
        "87: task 'pos', field 'loss': given twice, with the same value (lines 86 and 87); read once, as MT-DNN's "
        "YAML reader does",
        "127: task 'chunk', field 'loss': given twice, with the same value (lines 126 and 127); read once, as "
        "MT-DNN's YAML reader does",
        f"23: {ADV_SEQ}; given for ner (line 23), pos (line 89), chunk (line 129)",
        f"22: {KD_SEQ}; given for ner (line 22), pos (line 88), chunk (line 128)"]),
    "mtdnn/squad_task_def.yml": (["squad", "squad-v2", "record"], [], [
        f"10: {ADV_SPAN}; given for squad (line 10), squad-v2 (line 24), record (line 39)",
        f"9: {KD_SPAN}; given for squad (line 9), squad-v2 (line 23), record (line 38)"]),
    "mtdnn/superglue_task_def.yml": (["boolq", "cb", "wic", "multirc"], ["copa", "record"], [
        "20: " + COPA,
        "46: task 'record', field 'task_type': MT-DNN's task_type ClozeChoice is not supported here; the task is "
        "left out"]),
    "mtdnn/xnli_task_def.yml": (["xnli"], [], []),
    "mtdnn/domain_adaptation_def.yml": (["scitail", "snli"], [], []),
    "sage_repo/glue_task_def.yml": (GLUE_11, [], []),
    "sage_repo/ner_task_def.yml": (["ner", "pos", "chunk"], [], []),
    "sage_repo/ner_task_def_roberta.yml": (["ner", "pos", "chunk"], [], [
        "3: " + ENCODER + "; given for ner (line 3), pos (line 30), chunk (line 94)"]),
    "sage_repo/squad_task_def.yml": (["squad", "squad-v2"], [], [
        f"11: {ADV_SPAN}; given for squad (line 11), squad-v2 (line 25)",
        f"10: {KD_SPAN}; given for squad (line 10), squad-v2 (line 24)"]),
    "sage_repo/xnli_task_def.yml": (["xnli"], [], []),
    "sage_repo/tutorial_task_def.yml": (["snlisample"], [], []),
}


def _load(name: str, caplog) -> tuple[dict, list[str]]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sage.task_def"):
        defs = load_task_defs(FIXTURES / name)
    return defs, [r.getMessage() for r in caplog.records]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_upstream_task_file_loads_with_exact_warnings(name, caplog):
    defs, warnings = _load(name, caplog)
    tasks, left_out, expected = EXPECTED[name]
    assert list(defs) == tasks and list(defs.skipped) == left_out
    assert warnings == [f"warning: {FIXTURES / name}:{w}" for w in expected]
    for task in left_out:  # selecting a left-out task names the reason
        with pytest.raises(TaskDefError) as info:
            select_tasks(defs, [task])
        assert str(info.value) == f"task '{task}' cannot be used: {defs.skipped[task]}"


def test_every_upstream_task_file_has_a_fixture():
    """The listed fixtures are the files in tests/fixtures/{mtdnn,sage_repo} that define tasks."""
    on_disk = sorted(f"{p.parent.name}/{p.name}" for p in FIXTURES.glob("*/*.yml"))
    assert on_disk == sorted(EXPECTED)


def test_mtdnn_span_names_mean_squad_from_its_json(caplog):
    """MT-DNN's squad_prepro.py reads SQuAD's JSON ``{task}_{split}.json`` whatever data_format says; its
    SpanClassificationYN decodes as SQuAD v2.0 (null answer at [CLS], threshold 0), EmF12 is v2.0's EM/F1."""
    defs, _ = _load("mtdnn/squad_task_def.yml", caplog)
    for name, v2 in (("squad", False), ("squad-v2", True), ("record", False)):
        td = defs[name]
        assert (td.task_type, td.data_format, td.n_class, td.labels) == (TaskType.Span, DataFormat.MRC, 2, None)
        assert td.span == SpanOptions(unanswerable=v2) and td.metric_meta == ("EmF1",)
        assert (td.loss, td.adv_loss, td.kd_loss, td.split_names) == ("SpanCeCriterion", None, None,
                                                                      ("train", "dev"))
    sage, _ = _load("sage_repo/squad_task_def.yml", caplog)
    assert sage["squad-v2"].span == SpanOptions()  # the SAGE file's Span says nothing of unanswerable questions


@pytest.mark.parametrize("text,message", [
    ("t:\n  task_type: SpanClassificationYN\n  data_format: CLUE_SPAN\n  metric_meta: [EmF1]\n"
     "  unanswerable: false\n",
     "f.yml:5: task 't', field 'unanswerable': MT-DNN's SpanClassificationYN means unanswerable: true"),
    ("t:\n  task_type: SpanClassification\n  data_format: MRC\n  metric_meta: [EmF1]\n  unanswerable: true\n",
     "f.yml:5: task 't', field 'unanswerable': MT-DNN's SpanClassification means unanswerable: false"),
    ("t:\n  task_type: Span\n  data_format: MRC\n  metric_meta: [EmF1]\n  adv_loss: SymKl\n",
     "f.yml:5: task 't', field 'adv_loss': adv_loss does not apply to a Span task (and 'SymKl' is no MT-DNN loss "
     "either)"),
    ("t:\n  task_type: Classification\n  data_format: CLUE_SPAN\n  metric_meta: [ACC]\n  n_class: 2\n",
     "f.yml:3: task 't', field 'data_format': MRC does not fit a Classification task; use PremiseOnly, "
     "PremiseAndOneHypothesis"),
    ("t:\n  task_type: Classification\n  data_format: PremiseOnly\n  metric_meta: [ACC]\n  n_class: 2\n"
     "  loss: CeCriterion\n  loss: MseCriterion\n",  # repeated with another value: which one is meant?
     "f.yml:7: task 't', field 'loss': given twice"),
    ("t:\n  task_type: Ranking\n  data_format: PremiseAndMultiHypothesis\n  metric_meta: [ACC]\n  n_class: 2\n"
     "  labels: [a, b, c]\n",  # Ranking's n_class counts hypotheses here: no MT-DNN reading to follow
     "f.yml:5: task 't', field 'n_class': n_class is 2 but labels has 3 items ['a', 'b', 'c']"),
])
def test_what_mtdnn_gives_no_meaning_stays_refused(text, message):
    with pytest.raises(TaskDefError) as info:
        parse_task_defs(text, "f.yml")
    assert str(info.value) == message


def test_ranking_n_class_1_is_left_out_and_refused_when_selected(caplog):
    text = "t:\n  task_type: Ranking\n  data_format: PremiseAndMultiHypothesis\n  metric_meta: [ACC]\n  n_class: 1\n"
    with caplog.at_level(logging.WARNING, logger="sage.task_def"):
        defs = parse_task_defs(text, "f.yml")
    assert dict(defs) == {} and list(defs.skipped) == ["t"]
    with pytest.raises(TaskDefError) as info:
        select_tasks(defs, ["t"])
    assert str(info.value) == "task 't' cannot be used: f.yml:5: " + COPA.replace("'copa'", "'t'")


# ------------------------------------------------------------------------------------------ training
WORDS = ["good", "bad", "film", "plot", "actor", "scene", "story", "music", "slow", "fun", "dark", "bright"]


def _text(i: int, k: int) -> str:
    return " ".join(WORDS[(i * 3 + j * 5 + k) % len(WORDS)] for j in range(3 + i % 3))


def _label(td: TaskDef, i: int) -> str:
    return f"{(i % 5) / 2:.1f}" if td.is_regression else td.labels[i % td.n_class]


def _tsv(td: TaskDef, rows: int) -> str:
    lines = []
    for i in range(rows):
        hyp = "" if td.data_format is DataFormat.PremiseOnly else f"\t{_text(i, 7)}"
        lines.append(f"{i}\t{_label(td, i)}\t{_text(i, 0)}{hyp}\n")
    return "".join(lines)


def _conll(td: TaskDef) -> str:
    tags = [t for t in td.labels if t.replace("-", "").isalpha() and t not in ("X", "CLS", "SEP")][:2]
    out = []
    for s in range(4):
        out += [f"{WORDS[(s + j) % len(WORDS)]} {tags[(s + j) % 2]}\n" for j in range(4)] + ["\n"]
    return "".join(out)


def _squad(td: TaskDef) -> str:
    context = "The film was shot in Paris by a young director. Its music was written by Anna."
    qas = [{"id": f"q{i}", "question": q, "answers": [{"text": a, "answer_start": context.index(a)}]}
           for i, (q, a) in enumerate((("Where was the film shot?", "Paris"), ("Who wrote the music?", "Anna")))]
    if td.span.unanswerable:
        qas.append({"id": "q-none", "question": "Who wrote the plot?", "answers": [], "is_impossible": True})
    return json.dumps({"version": "v2.0" if td.span.unanswerable else "1.1",
                       "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]})


def _splits(td: TaskDef) -> list[str]:
    """The task's splits, plus the train and dev MT-DNN reads when split_names lists none."""
    extra = [s for s, have in (("train", td.train_splits()), ("dev", td.dev_splits())) if not have]
    return list(td.split_names) + extra


def write_data(folder: Path, defs: dict) -> None:
    """A few synthetic rows for every split of every task, in the task's canonical input format."""
    folder.mkdir(parents=True)
    for td in defs.values():
        for split in _splits(td):
            if td.task_type is TaskType.Span:
                (folder / f"{td.name}_{split}.json").write_text(_squad(td), encoding="utf-8")
            elif td.task_type is TaskType.SequenceLabeling:
                (folder / f"{td.name}_{split}.conll").write_text(_conll(td), encoding="utf-8")
            else:
                (folder / f"{td.name}_{split}.tsv").write_text(_tsv(td, 6), encoding="utf-8")


@pytest.mark.training
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_upstream_task_file_trains_every_task_it_loads(name, tmp_path, caplog):
    """prepro_std.py and train.py as users call them, the upstream file given as --task_def unchanged: one
    multi-task epoch over every task it loads, each dev split evaluated."""
    defs, _ = _load(name, caplog)
    task_def, data = tmp_path / Path(name).name, tmp_path / "canonical"
    task_def.write_bytes((FIXTURES / name).read_bytes())
    write_data(data, defs)
    assert prepro_std.main(["--model", "minilm-l6", "--root_dir", str(data), "--task_def", str(task_def),
                            "--max_seq_len", str(MAX_LEN), "--workers", "1"]) == 0
    tasks = ",".join(defs)
    out = tmp_path / "run"
    assert train_cli.main(["--train_datasets", tasks, "--test_datasets", tasks, "--task_def", str(task_def),
                           "--data_dir", str(data / "minilm-l6"), "--init_checkpoint", "minilm-l6",
                           "--output_dir", str(out), "--batch_size", "4", "--epochs", "1",
                           "--max_seq_len", str(MAX_LEN), "--device", "cpu", "--no_tensorboard",
                           "--optim_impl", "foreach", "--num_threads", "1", "--num_hidden_layers", "1"]) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    expected = {f"{td.name}_{s}" for td in defs.values() for s in _splits(td) if "dev" in s}
    assert set(record["dev"]) == expected
    for key, metrics in record["dev"].items():
        assert metrics and all(isinstance(v, (int, float)) for v in metrics.values()), key


def test_rows_past_n_class_are_refused_with_file_and_line(tmp_path, capsys, caplog):
    """fever's third label: MT-DNN's head has 2 outputs and its training fails on such a row; here prepro_std.py
    refuses it, naming the file and line, and writes no shard."""
    data = tmp_path / "canonical"
    data.mkdir()
    (data / "fever_train.tsv").write_text("0\tneutral\ta\tb\n1\tentailment\tc\td\n", encoding="utf-8")
    task_def = tmp_path / "anli_task_def.yml"
    task_def.write_bytes((FIXTURES / "mtdnn" / "anli_task_def.yml").read_bytes())
    assert prepro_std.main(["--model", "minilm-l6", "--root_dir", str(data), "--task_def", str(task_def),
                            "--tasks", "fever", "--workers", "1"]) == 1
    assert capsys.readouterr().err == (f"prepro_std.py: error: {data / 'fever_train.tsv'}:2: column 2 (label): task "
                                       "fever: label 'entailment' is not one of ['contradiction', 'neutral']\n")
    assert not (data / "minilm-l6" / "fever_train.jsonl").exists()


def test_prepro_builds_the_train_and_dev_splits_mtdnn_reads_beyond_split_names(caplog):
    """MT-DNN's train.py reads {task}_train (and {task}_dev) whatever split_names lists, so prepro_std.py builds
    them too where their input exists (the SAGE file's mrpc lists only test_labeled; anli's fever only train)."""
    sage, _ = _load("sage_repo/glue_task_def.yml", caplog)
    anli, _ = _load("mtdnn/anli_task_def.yml", caplog)
    assert sage["mrpc"].shard_splits() == ("test_labeled", "train", "dev")
    assert sage["mnli"].shard_splits() == sage["mnli"].split_names
    assert anli["fever"].shard_splits() == ("train", "dev")

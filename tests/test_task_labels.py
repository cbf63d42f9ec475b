"""task_labels.json: each checkpoint records the label list, task type and n_class its heads were trained with.

A trained tiny run, then its YAML edited (labels reordered, a class added, the task type changed): predict.py,
export.py, ``--init_checkpoint`` and ``--resume`` each refuse with one exact line; an unchanged YAML gives the
training run's own predictions, submission and labels; a checkpoint written without the file works as before.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, BertTokenizerFast

import export as export_cli
import predict as predict_cli
import train as train_cli
from conftest import tiny_bert_config
from data_utils.task_def import parse_task_defs
from mt_dnn import checkpoint as ckpt
from mt_dnn import task_labels
from mt_dnn.trainer import Trainer
from test_export import WORDS
from workspace import TASK_YAML, config, write_shards

PAIRS = "n_class: 2\n  labels: [not, same]\n  metric_meta: [ACC, F1]"
VARIANTS = {
    "reordered": TASK_YAML.replace(PAIRS, "n_class: 2\n  labels: [same, not]\n  metric_meta: [ACC, F1]"),
    "n_class": TASK_YAML.replace(PAIRS, "n_class: 3\n  labels: [not, same, odd]\n  metric_meta: [ACC]"),
    "task_type": TASK_YAML.replace("pairs:\n  task_type: Classification\n  data_format: PremiseAndOneHypothesis\n"
                                   f"  {PAIRS}",
                                   "pairs:\n  task_type: SequenceLabeling\n  data_format: Seqence\n  n_class: 2\n"
                                   "  labels: [not, same]\n  metric_meta: [SeqEval]"),
}
TRAINED = "Classification with labels ['not', 'same']"
NOW = {"reordered": "Classification with labels ['same', 'not']",
       "task_type": "SequenceLabeling with labels ['not', 'same']"}
RESTORE_HINT = "the model's outputs follow the trained definition: put it back in the YAML"
INIT_HINT = ("the loaded head's outputs follow the trained definition: put it back in the YAML, or rename the task "
             "to train a fresh head")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config()).save_pretrained(root / "tiny-bert")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS[:128])}).save_pretrained(str(root / "tiny-bert"))
    (root / "run.yml").write_text(TASK_YAML, encoding="utf-8")
    for name, text in VARIANTS.items():
        (root / f"{name}.yml").write_text(text, encoding="utf-8")
    write_shards(root / "shards")
    Trainer(config(root, "run", task_def=str(root / "run.yml"), train_datasets=["pairs", "score"],
                   test_datasets=["pairs", "score"], epochs=1)).fit()
    return root


@pytest.fixture
def run_yaml(ws):
    """The run's own YAML (what export.py and a predict.py without --task_def read), put back after the test."""
    path = ws / "run.yml"
    yield path
    path.write_text(TASK_YAML, encoding="utf-8")


def one_line_error(capsys, tool: str) -> str:
    err = capsys.readouterr().err
    errors = re.findall(rf"{re.escape(tool)}: error: [^\r\n]*", err)
    assert len(errors) == 1, err
    return errors[0]


def defs(text: str = TASK_YAML) -> dict:
    return parse_task_defs(text, "t.yml")


# ---------------------------------------------------------------------------------------------- the file
def test_every_checkpoint_folder_carries_the_trained_labels(ws):
    folders = [ws / "run" / "best", *ckpt.step_checkpoints(ws / "run")]
    assert len(folders) == 2
    for folder in folders:
        assert json.loads((folder / task_labels.FILE).read_text()) == {"version": 1, "tasks": {
            "pairs": {"task_type": "Classification", "n_class": 2, "labels": ["not", "same"]},
            "score": {"task_type": "Regression", "n_class": 1, "labels": None}}}


def test_file_round_trip_and_signature_of_each_task_type(tmp_path):
    tasks = defs()
    assert task_labels.signature(tasks["pick"]) == {"task_type": "Ranking", "n_class": 3, "labels": ["0", "1", "2"]}
    path = task_labels.write(tmp_path, tasks)
    assert path == tmp_path / task_labels.FILE and [p.name for p in tmp_path.iterdir()] == [task_labels.FILE]
    assert task_labels.read(tmp_path) == {name: task_labels.signature(td) for name, td in tasks.items()}
    unicode = defs(TASK_YAML.replace("labels: [not, same]", "labels: [nicht, \"gleich ä\"]"))
    task_labels.write(tmp_path, unicode)
    assert task_labels.read(tmp_path)["pairs"]["labels"] == ["nicht", "gleich ä"]
    assert task_labels.read(tmp_path / "nowhere") is None  # a checkpoint written before the file existed


@pytest.mark.parametrize("text,message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", 'not a task-label file (expected {"version": 1, "tasks": {...}})'),
    ('{"version": 2, "tasks": {}}', 'not a task-label file (expected {"version": 1, "tasks": {...}})'),
    ('{"version": 1, "tasks": {"pairs": {"task_type": "Nope"}}}',
     "task 'pairs': expected task_type (a task type name), n_class (an integer) and labels (a list of strings or "
     "null)"),
    ('{"version": 1, "tasks": {"pairs": {"labels": [1, 2]}}}', "task 'pairs': expected task_type"),
    ('{"version": 1, "tasks": {"pairs": {"n_class": true}}}', "task 'pairs': expected task_type"),
])
def test_unreadable_file_is_one_line_naming_it(tmp_path, text, message):
    (tmp_path / task_labels.FILE).write_text(text)
    with pytest.raises(ckpt.CheckpointError) as err:
        task_labels.read(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / task_labels.FILE}: {message}")
    assert "\n" not in str(err.value)


def test_check_names_the_task_both_definitions_and_the_file():
    saved = {name: task_labels.signature(td) for name, td in defs().items()}
    task_labels.check(saved, defs(), "ckpt/task_labels.json", ["pairs", "score", "pick"])  # unchanged: no error
    with pytest.raises(ValueError) as err:
        task_labels.check(saved, defs(VARIANTS["reordered"]), "ckpt/task_labels.json", ["score", "pairs"],
                          source="new.yml", hint="fix it")
    assert str(err.value) == ("ckpt/task_labels.json: task 'pairs' was trained as Classification with labels "
                              "['not', 'same'], but new.yml defines it as Classification with labels ['same', 'not']; "
                              "fix it")
    task_labels.check(saved, defs(VARIANTS["reordered"]), "x", ["score", "pick"])  # pairs not asked about
    task_labels.check({"score": saved["score"]}, defs(VARIANTS["reordered"]), "x", ["pairs"])  # pairs not saved
    # a partial signature (a foreign checkpoint's label vocabulary) compares only what it holds
    task_labels.check({"pairs": {"labels": ["not", "same"]}}, defs(), "x", ["pairs"])
    with pytest.raises(ValueError, match=r"^x: task 'pairs' was trained as a task with labels \['same', 'not'\], but "
                                         r"the task definition defines it as a task with labels \['not', 'same'\]; "):
        task_labels.check({"pairs": {"labels": ["same", "not"]}}, defs(), "x", ["pairs"])
    with pytest.raises(ValueError, match=r"^x: task 'score' was trained as Classification with n_class 1, but .* "
                                         r"defines it as Regression with n_class 1; "):
        task_labels.check({"score": {"task_type": "Classification", "n_class": 1}}, defs(), "x", ["score"])


# ---------------------------------------------------------------------------------------------- refusals
def expected_restore_line(ws: Path, tool: str, variant: str, yml: Path) -> str:
    best = ws / "run" / "best"
    if variant == "n_class":  # the weights' shapes differ: caught first, by the line older checkpoints get too
        return (f"{tool}: error: {best / ckpt.WEIGHTS}: heads.pairs.proj.weight has shape [2, 32] there but [3, 32] "
                "in this model; task 'pairs' has a different number of classes (n_class/labels) in the task "
                "definition than when this checkpoint was trained")
    return (f"{tool}: error: {best / task_labels.FILE}: task 'pairs' was trained as {TRAINED}, but {yml} defines "
            f"it as {NOW[variant]}; {RESTORE_HINT}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_predict_refuses_an_edited_yaml(ws, run_yaml, capsys, variant):
    best = ws / "run" / "best"
    given = ws / f"{variant}.yml"
    args = ["--checkpoint", str(best), "--task", "pairs", "--output_dir", str(ws / f"pred-{variant}")]
    assert predict_cli.main(args + ["--task_def", str(given)]) == 2
    assert one_line_error(capsys, "predict.py") == expected_restore_line(ws, "predict.py", variant, given)
    run_yaml.write_text(VARIANTS[variant], encoding="utf-8")  # the run's own YAML edited in place
    assert predict_cli.main(args + ["--split", "test"]) == 2
    assert one_line_error(capsys, "predict.py") == expected_restore_line(ws, "predict.py", variant, run_yaml)
    assert not (ws / f"pred-{variant}").exists()


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_refuses_an_edited_yaml(ws, run_yaml, capsys, variant):
    run_yaml.write_text(VARIANTS[variant], encoding="utf-8")
    out = ws / f"hf-{variant}"
    assert export_cli.main(["--checkpoint", str(ws / "run" / "best"), "--out", str(out), "--task", "pairs"]) == 2
    assert one_line_error(capsys, "export.py") == expected_restore_line(ws, "export.py", variant, run_yaml)
    assert not out.exists()


@pytest.mark.parametrize("variant", VARIANTS)
def test_init_checkpoint_refuses_an_edited_yaml_for_a_loaded_head(ws, capsys, variant):
    best, yml = ws / "run" / "best", ws / f"{variant}.yml"
    args = ["--train_datasets", "pairs", "--task_def", str(yml), "--data_dir", str(ws / "shards"),
            "--init_checkpoint", str(best), "--output_dir", str(ws / f"init-{variant}"), "--epochs", "1",
            "--batch_size", "16", "--max_seq_len", "64", "--no_tensorboard", "--optim_impl", "foreach"]
    assert train_cli.main(args) == 2
    if variant == "n_class":
        expected = (f"train.py: error: {best}: task pairs: head heads.pairs: heads.pairs.proj.weight has shape "
                    "(2, 32) in the checkpoint, (3, 32) here (another n_class or task type? rename the task for a "
                    "fresh head)")
    else:
        expected = (f"train.py: error: {best / task_labels.FILE}: task 'pairs' was trained as {TRAINED}, but {yml} "
                    f"defines it as {NOW[variant]}; {INIT_HINT}")
    assert one_line_error(capsys, "train.py") == expected
    assert not (ws / f"init-{variant}").exists()


def test_init_checkpoint_compares_only_the_heads_it_loads(ws):
    """The YAML reorders pairs, but this run neither trains nor loads pairs: nothing of it is followed."""
    Trainer(config(ws, "init-score", task_def=str(ws / "reordered.yml"), train_datasets=["score"],
                   test_datasets=["score"], init_checkpoint=str(ws / "run" / "best"), epochs=1))
    line = (ws / "init-score" / "train.log").read_text()
    assert "heads loaded: score (heads.score)" in line and "not used: pairs (heads.pairs)" in line


def test_resume_refuses_an_edited_yaml_unless_allowed(ws, run_yaml):
    def resumed(**kw) -> Trainer:
        return Trainer(config(ws, "resume", task_def=str(run_yaml), train_datasets=["pairs"],
                              test_datasets=["pairs"], save_every_steps=1, keep_last=1, **kw))
    resumed().fit(stop_after_steps=2)
    step = ws / "resume" / "step-2"
    run_yaml.write_text(VARIANTS["reordered"], encoding="utf-8")
    with pytest.raises(ValueError) as err:
        resumed(resume=True).fit()
    assert str(err.value) == (f"--resume: {step / task_labels.FILE}: task 'pairs' was trained as {TRAINED}, but "
                              f"{run_yaml} defines it as {NOW['reordered']}; resume with the same task definition, "
                              "or pass --allow_config_change")
    resumed(resume=True, allow_config_change=True).fit(stop_after_steps=1)
    assert (f"--resume with --allow_config_change: {step / task_labels.FILE}: task 'pairs' was trained as "
            f"{TRAINED}, but") in (ws / "resume" / "train.log").read_text()
    assert task_labels.read(ws / "resume" / "step-3")["pairs"]["labels"] == ["same", "not"]  # what it now means


def test_resume_falls_back_past_a_damaged_label_file(ws, run_yaml):
    def run(**kw) -> Trainer:
        return Trainer(config(ws, "resume-damaged", task_def=str(run_yaml), train_datasets=["pairs"],
                              test_datasets=["pairs"], save_every_steps=1, keep_last=2, **kw))
    run().fit(stop_after_steps=2)
    bad = ws / "resume-damaged" / "step-2" / task_labels.FILE
    bad.write_text("{not json")
    resumed = run(resume=True)
    resumed.fit(stop_after_steps=1)
    log = (ws / "resume-damaged" / "train.log").read_text()
    assert f"--resume: {bad}: not valid JSON" in log
    assert f"falling back to {ws / 'resume-damaged' / 'step-1'}" in log and resumed.global_step == 2


# ---------------------------------------------------------------------------------------------- unchanged
def _files_of_epoch_0(folder: Path, tag: str) -> tuple[dict, str]:
    scores = json.loads((folder / f"pairs_dev_scores_{tag}.json").read_text())
    return scores, (folder / f"pairs_test_submission_{tag}.tsv").read_text()


def test_unchanged_yaml_gives_the_runs_own_predictions_submission_and_id2label(ws, capsys):
    best = ws / "run" / "best"
    assert json.loads((best / "metrics.json").read_text())["epoch"] == 0
    trained_scores, trained_submission = _files_of_epoch_0(ws / "run", "0")
    copy = ws / "copy.yml"  # the same definitions under another path: compared by content
    copy.write_text(TASK_YAML, encoding="utf-8")
    for extra in ([], ["--task_def", str(copy)]):
        out = ws / f"pred-same{len(extra)}"
        for split in ("dev", "test"):
            assert predict_cli.main(["--checkpoint", str(best), "--task", "pairs", "--split", split,
                                     "--batch_size", "16", "--output_dir", str(out), *extra]) == 0
        scores, submission = _files_of_epoch_0(out, "predict")
        assert scores["predictions"] == trained_scores["predictions"] and scores["uids"] == trained_scores["uids"]
        assert scores["metrics"] == pytest.approx(trained_scores["metrics"])
        assert submission == trained_submission
    capsys.readouterr()
    assert export_cli.main(["--checkpoint", str(best), "--out", str(ws / "hf-same"), "--task", "pairs"]) == 0
    hf = AutoConfig.from_pretrained(str(ws / "hf-same"))
    assert hf.id2label == {0: "not", 1: "same"} and hf.label2id == {"not": 0, "same": 1}


def test_checkpoint_without_the_file_restores_and_continues_as_before(ws, capsys):
    old = ws / "old-best"
    shutil.rmtree(old, ignore_errors=True)
    shutil.copytree(ws / "run" / "best", old)
    (old / task_labels.FILE).unlink()
    assert predict_cli.main(["--checkpoint", str(old), "--task", "pairs", "--split", "test", "--batch_size", "16",
                             "--output_dir", str(ws / "pred-old")]) == 0
    assert (ws / "pred-old" / "pairs_test_submission_predict.tsv").read_text() == \
        (ws / "run" / "pairs_test_submission_0.tsv").read_text()
    trainer = Trainer(config(ws, "init-old", task_def=str(ws / "run.yml"), train_datasets=["pairs"],
                             test_datasets=["pairs"], init_checkpoint=str(old), epochs=1))
    assert "heads loaded: pairs (heads.pairs)" in (ws / "init-old" / "train.log").read_text()
    assert trainer.model.task_defs["pairs"].labels == ("not", "same")

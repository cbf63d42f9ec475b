"""Drop-in for MT-DNN and SAGE-repo users (issue 11, items 1, 2, 3, 7): the authors' command line, MT-DNN's task
definition YAML, MT-DNN's shard names and flags, the SAN answer head, per-parameter clipping."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from conftest import tiny_bert_config
from data_utils.shards import ShardError, format_line, read_shard
from data_utils.task_def import TaskDefError, dataset_splits, load_task_defs, parse_task_defs
from module.heads import ClassificationHead, SANClassifier, SanOptions
from mt_dnn import config as config_mod
from mt_dnn.batcher import load_split
from mt_dnn.config import NO_EFFECT_FLAGS, TrainConfig, build_parser, parse_args
from mt_dnn.model import build_model
from mt_dnn.trainer import Trainer, clip_each_parameter

ROOT = Path(__file__).resolve().parents[1]

# The SAGE authors' scripts/train_mnli_usadamax.sh, as in their repository (cliang1453/SAGE); the tests below
# replace only its three path lines (model_root, bert_path, data_dir).
AUTHORS_SCRIPT = r"""#!/bin/bash
if [[ $# -ne 1 ]]; then
  echo "train.sh <gpu>"
  exit 1
fi
gpu=$1
echo "export CUDA_VISIBLE_DEVICES=${gpu}"
export CUDA_VISIBLE_DEVICES=${gpu}

modeltype="bert"
modelname="base"
toktype="uncased"
train_datasets="mnli"
test_datasets="mnli_matched,mnli_mismatched"
model_root="/root/data/mtdnn_ckpt"
bert_path="${model_root}/${modeltype}_model_${modelname}_${toktype}.pt"
data_dir="/root/data/mtdnn/canonical_data/${modeltype}_${modelname}_${toktype}_lower"
seed=2018

batch_size=32
batch_size_eval=32
grad_acc_steps=1
answer_opt=1
optim="usadamax"
grad_clipping=0
global_grad_clipping=1
lr="2e-4"
encoder_type=1
epochs=3
beta3=0.85

prefix="${train_datasets}_${optim}_${modeltype}_${lr}_${beta3}"
model_dir="${model_root}/adplr/${seed}/${modelname}/${prefix}"
log_file="${model_dir}/log.log"
python train.py \
--data_dir ${data_dir} \
--batch_size ${batch_size} \
--batch_size_eval ${batch_size_eval} \
--output_dir ${model_dir} \
--log_file ${log_file} \
--answer_opt ${answer_opt} \
--optimizer ${optim} --beta3 ${beta3} \
--train_datasets ${train_datasets} \
--test_datasets ${test_datasets} \
--grad_clipping ${grad_clipping} \
--global_grad_clipping ${global_grad_clipping} \
--learning_rate ${lr} \
--init_checkpoint ${bert_path} \
--epochs ${epochs} \
--encoder_type ${encoder_type} \
--seed ${seed}
"""

# The SAGE repository's experiments/glue/glue_task_def.yml, as in that repository.
SAGE_GLUE_TASK_DEF = """cola:
  data_format: PremiseOnly
  dropout_p: 0.05
  enable_san: false
  metric_meta:
  - ACC
  - MCC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  task_type: Classification
mnli:
  data_format: PremiseAndOneHypothesis
  dropout_p: 0.3
  enable_san: false
  labels:
  - contradiction
  - neutral
  - entailment
  metric_meta:
  - ACC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 3
  split_names:
  - train
  - matched_dev
  - mismatched_dev
  - matched_test
  - mismatched_test
  task_type: Classification
mrpc:
  data_format: PremiseAndOneHypothesis
  enable_san: false
  metric_meta:
  - ACC
  - F1
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  split_names:
  - test_labeled
  task_type: Classification
qnli:
  data_format: PremiseAndOneHypothesis
  enable_san: false
  labels:
  - not_entailment
  - entailment
  metric_meta:
  - ACC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  task_type: Classification
qqp:
  data_format: PremiseAndOneHypothesis
  enable_san: false
  metric_meta:
  - ACC
  - F1
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  task_type: Classification
rte:
  data_format: PremiseAndOneHypothesis
  enable_san: false
  labels:
  - not_entailment
  - entailment
  metric_meta:
  - ACC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  task_type: Classification
scitail:
  data_format: PremiseAndOneHypothesis
  enable_san: false
  labels:
  - neutral
  - entails
  metric_meta:
  - ACC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  task_type: Classification
snli:
  data_format: PremiseAndOneHypothesis
  enable_san: false
  labels:
  - contradiction
  - neutral
  - entailment
  metric_meta:
  - ACC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 3
  task_type: Classification
sst:
  data_format: PremiseOnly
  enable_san: false
  metric_meta:
  - ACC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  split_names:
  - test_labeled
  task_type: Classification
stsb:
  data_format: PremiseAndOneHypothesis
  enable_san: false
  metric_meta:
  - Pearson
  - Spearman
  n_class: 1
  split_names:
  - test_labeled
  loss: MseCriterion
  kd_loss: MseCriterion
  adv_loss: MseCriterion
  task_type: Regression
wnli:
  data_format: PremiseAndOneHypothesis
  enable_san: false
  metric_meta:
  - ACC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  task_type: Classification
"""

# MT-DNN's experiments/glue/glue_task_def.yml (namisan/mt-dnn), as in that repository today (its trailing
# spaces included).
MTDNN_GLUE_TASK_DEF = """cola:
  data_format: PremiseOnly
  dropout_p: 0.05
  enable_san: false
  metric_meta:
  - ACC
  - MCC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  task_type: Classification
mnli:
  data_format: PremiseAndOneHypothesis
  dropout_p: 0.1
  enable_san: false 
  labels:
  - contradiction
  - neutral
  - entailment
  metric_meta:
  - ACC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 3
  split_names:
  - train
  - matched_dev
  - mismatched_dev
  - matched_test
  - mismatched_test
  task_type: Classification
mrpc:
  data_format: PremiseAndOneHypothesis
  enable_san: false 
  metric_meta:
  - ACC
  - F1
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  task_type: Classification
qnli:
  data_format: PremiseAndOneHypothesis
  enable_san: false 
  labels:
  - not_entailment
  - entailment
  metric_meta:
  - ACC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  task_type: Classification
qqp:
  data_format: PremiseAndOneHypothesis
  enable_san: false 
  metric_meta:
  - ACC
  - F1
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  task_type: Classification
rte:
  data_format: PremiseAndOneHypothesis
  enable_san: false
  labels:
  - not_entailment
  - entailment
  metric_meta:
  - ACC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  task_type: Classification
scitail:
  data_format: PremiseAndOneHypothesis
  enable_san: false
  labels:
  - neutral
  - entails
  metric_meta:
  - ACC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  task_type: Classification
snli:
  data_format: PremiseAndOneHypothesis
  enable_san: false
  labels:
  - contradiction
  - neutral
  - entailment
  metric_meta:
  - ACC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 3
  task_type: Classification
sst:
  data_format: PremiseOnly
  enable_san: false
  metric_meta:
  - ACC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  task_type: Classification
stsb:
  data_format: PremiseAndOneHypothesis
  enable_san: false
  metric_meta:
  - Pearson
  - Spearman
  n_class: 1
  loss: MseCriterion
  kd_loss: MseCriterion
  adv_loss: MseCriterion
  task_type: Regression
wnli:
  data_format: PremiseAndOneHypothesis
  enable_san: false 
  metric_meta:
  - ACC
  loss: CeCriterion
  kd_loss: MseCriterion
  adv_loss: SymKlCriterion
  n_class: 2
  task_type: Classification
"""

# The same file as MT-DNN had it while its GLUE recipe used the SAN answer module (encoder_type per task,
# enable_san: true on the pair tasks), as in that repository's history.
MTDNN_SAN_GLUE_TASK_DEF = """cola:
  data_format: PremiseOnly
  encoder_type: BERT
  dropout_p: 0.05
  enable_san: false
  metric_meta:
  - ACC
  - MCC
  n_class: 2
  task_type: Classification
mnli:
  data_format: PremiseAndOneHypothesis
  encoder_type: BERT
  dropout_p: 0.3
  enable_san: true
  labels:
  - contradiction
  - neutral
  - entailment
  metric_meta:
  - ACC
  n_class: 3
  split_names:
  - train
  - matched_dev
  - mismatched_dev
  - matched_test
  - mismatched_test
  task_type: Classification
mrpc:
  data_format: PremiseAndOneHypothesis
  encoder_type: BERT
  enable_san: true
  metric_meta:
  - ACC
  - F1
  n_class: 2
  task_type: Classification
qnli:
  data_format: PremiseAndOneHypothesis
  encoder_type: BERT
  enable_san: true
  labels:
  - not_entailment
  - entailment
  metric_meta:
  - ACC
  n_class: 2
  task_type: Classification
qqp:
  data_format: PremiseAndOneHypothesis
  encoder_type: BERT
  enable_san: true
  metric_meta:
  - ACC
  - F1
  n_class: 2
  task_type: Classification
rte:
  data_format: PremiseAndOneHypothesis
  encoder_type: BERT
  enable_san: true
  labels:
  - not_entailment
  - entailment
  metric_meta:
  - ACC
  n_class: 2
  task_type: Classification
scitail:
  encoder_type: BERT
  data_format: PremiseAndOneHypothesis
  enable_san: true
  labels:
  - neutral
  - entails
  metric_meta:
  - ACC
  n_class: 2
  task_type: Classification
snli:
  data_format: PremiseAndOneHypothesis
  encoder_type: BERT
  enable_san: true
  labels:
  - contradiction
  - neutral
  - entailment
  metric_meta:
  - ACC
  n_class: 3
  task_type: Classification
sst:
  data_format: PremiseOnly
  encoder_type: BERT
  enable_san: false
  metric_meta:
  - ACC
  n_class: 2
  task_type: Classification
stsb:
  data_format: PremiseAndOneHypothesis
  encoder_type: BERT
  enable_san: false
  metric_meta:
  - Pearson
  - Spearman
  n_class: 1
  task_type: Regression
wnli:
  data_format: PremiseAndOneHypothesis
  encoder_type: BERT
  enable_san: true
  metric_meta:
  - ACC
  n_class: 2
  task_type: Classification
"""


def _pair(rng: random.Random, label: int) -> tuple[list[int], list[int]]:
    """A premise/hypothesis pair whose first premise token carries the label (so it is learnable)."""
    premise = [2, 10 + label] + [rng.randint(20, 120) for _ in range(rng.randint(3, 12))] + [3]
    hypothesis = [rng.randint(20, 120) for _ in range(rng.randint(2, 8))] + [3]
    return premise + hypothesis, [0] * len(premise) + [1] * len(hypothesis)


def write_mtdnn_shards(folder: Path, task: str, splits: dict[str, int], n_class: int, seed: int = 0) -> None:
    """MT-DNN-named shards ``{task}_{split}.json``, with MT-DNN's extra ``attention_mask`` key on each line."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in splits.items():
        lines = []
        for i in range(count):
            label = rng.randrange(n_class) if "test" not in split else 0
            ids, types = _pair(rng, label)
            lines.append(json.dumps({"uid": str(i), "label": label, "token_id": ids, "type_id": types,
                                     "attention_mask": [1] * len(ids)}))
        (folder / f"{task}_{split}.json").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtdnn")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config()).save_pretrained(root / "tiny-bert")
    write_mtdnn_shards(root / "shards", "mnli", {"train": 40, "matched_dev": 12, "mismatched_dev": 10}, 3)
    write_mtdnn_shards(root / "shards", "rte", {"train": 48, "dev": 16, "test": 6}, 2, seed=1)
    (root / "mtdnn_glue_task_def.yml").write_text(MTDNN_GLUE_TASK_DEF, encoding="utf-8")
    (root / "mtdnn_san_glue_task_def.yml").write_text(MTDNN_SAN_GLUE_TASK_DEF, encoding="utf-8")
    return root


def authors_script(ws: Path) -> Path:
    """The authors' script with its three paths pointing into the test folder; nothing else changed."""
    text = AUTHORS_SCRIPT
    for old, new in (('model_root="/root/data/mtdnn_ckpt"', f'model_root="{ws / "ckpt"}"'),
                     ('bert_path="${model_root}/${modeltype}_model_${modelname}_${toktype}.pt"',
                      f'bert_path="{ws / "tiny-bert"}"'),
                     ('data_dir="/root/data/mtdnn/canonical_data/${modeltype}_${modelname}_${toktype}_lower"',
                      f'data_dir="{ws / "shards"}"')):
        assert text.count(old) == 1
        text = text.replace(old, new)
    path = ws / "train_mnli_usadamax.sh"
    path.write_text(text, encoding="utf-8")
    return path


def _python_on_path(folder: Path, program: str) -> dict:
    """An environment whose ``python`` is ``program``."""
    folder.mkdir(exist_ok=True)
    exe = folder / "python"
    if not exe.exists():
        exe.write_text(f'#!/usr/bin/env bash\nexec {program} "$@"\n')
        exe.chmod(0o755)
    return dict(os.environ, PATH=f"{folder}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1",
                PYTHONPATH=str(ROOT))


# ------------------------------------------------------------------------------------------ item 1: the command
def test_authors_command_line_parses_to_what_it_means(ws, tmp_path, capsys):
    record = tmp_path / "argv.txt"
    env = _python_on_path(tmp_path / "bin", f"printf '%s\\n' \"$@\" > {record}; true")
    proc = subprocess.run(["bash", str(authors_script(ws)), "0"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    argv = record.read_text().splitlines()
    assert argv[0] == "train.py"
    cfg = parse_args(argv[1:])
    assert capsys.readouterr().err == ""  # every flag the authors pass takes effect: no "no effect" warning
    assert (cfg.train_datasets, cfg.test_datasets) == (["mnli"], ["mnli_matched", "mnli_mismatched"])
    assert (cfg.optimizer, cfg.learning_rate, cfg.beta3, cfg.epochs, cfg.seed) == ("usadamax", 2e-4, 0.85, 3, 2018)
    assert (cfg.batch_size, cfg.batch_size_eval, cfg.encoder_type) == (32, 32, 1)
    assert (cfg.answer_opt, cfg.grad_clipping, cfg.global_grad_clipping) == (1, 0.0, 1.0)
    assert cfg.log_file == str(Path(cfg.output_dir) / "log.log")
    assert cfg.init_checkpoint == str(ws / "tiny-bert") and cfg.data_dir == str(ws / "shards")


@pytest.mark.training
def test_authors_command_line_trains(ws, tmp_path):
    """The script itself, run by bash with the real train.py: MNLI matched/mismatched dev results and the log."""
    env = _python_on_path(tmp_path / "bin", f"{sys.executable}")
    proc = subprocess.run(["bash", str(authors_script(ws)), "0"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "has no effect" not in proc.stderr
    run = ws / "ckpt" / "adplr" / "2018" / "base" / "mnli_usadamax_bert_2e-4_0.85"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert set(records[-1]["dev"]) == {"mnli_matched_dev", "mnli_mismatched_dev"}
    log_text = (run / "log.log").read_text()
    assert "training mnli" in log_text and "mnli_mismatched_dev" in log_text
    assert log_text == (run / "train.log").read_text()
    # --answer_opt 1, but the task definition (ours, like theirs) does not enable SAN for mnli: linear heads
    assert "SAN answer heads" not in log_text
    config = json.loads((run / "best" / "train_config.json").read_text())
    assert config["test_datasets"] == ["mnli_matched", "mnli_mismatched"] and config["answer_opt"] == 1


def test_mtdnn_test_dataset_names_pick_their_splits(ws):
    defs = load_task_defs(ROOT / "experiments" / "glue" / "glue_task_def.yml")
    mnli = defs["mnli"]
    assert dataset_splits(mnli, "mnli") == ("matched_dev", "mismatched_dev", "matched_test", "mismatched_test",
                                            "ax_test")
    assert dataset_splits(mnli, "mnli_ax") == ("ax_test",)  # GLUE's diagnostic set, scored by the MNLI model
    assert dataset_splits(mnli, "mnli_matched") == ("matched_dev", "matched_test")
    assert dataset_splits(mnli, "mnli_mismatched") == ("mismatched_dev", "mismatched_test")
    with pytest.raises(TaskDefError, match=r"--test_datasets: 'mnli_foo' names no split of task mnli: expected "
                                           r"split names starting with 'foo_'"):
        dataset_splits(mnli, "mnli_foo")


# ------------------------------------------------------------------------------------------ item 7: derived CLI
def test_cli_is_derived_from_the_dataclass():
    parser = build_parser()
    by_dest = {}
    for action in parser._actions:
        by_dest.setdefault(action.dest, []).extend(action.option_strings)
    for f in dataclasses.fields(TrainConfig):
        assert f"--{f.name}" in by_dest[f.name] or f.name == "tensorboard", f.name
        for alias in f.metadata.get("aliases", ()):
            assert alias in by_dest[f.name]
    # defaults come from the dataclass: parsing only the required flag gives TrainConfig's own defaults
    parsed = parse_args(["--train_datasets", "rte"])
    assert parsed == TrainConfig(train_datasets=["rte"], test_datasets=["rte"])
    assert "--no_tensorboard" in by_dest["tensorboard"]
    helps = {a.dest: a.help for a in parser._actions}
    assert "authors' optimizers did with max_grad_norm" in helps["grad_clipping"]


def test_mtdnn_aliases_set_our_fields():
    cfg = parse_args(["--train_datasets", "rte", "--optim", "adamw", "--log_per_updates", "7", "--tensorboard",
                      "--momentum", "0.5", "--update_bert_opt", "1", "--bert_dropout_p", "0.2", "--dropout_p", "0.3"])
    assert (cfg.optimizer, cfg.log_every, cfg.tensorboard, cfg.momentum) == ("adamw", 7, True, 0.5)
    assert (cfg.update_bert_opt, cfg.bert_dropout_p, cfg.dropout_p) == (1, 0.2, 0.3)
    assert parse_args(["--train_datasets", "rte", "--no_tensorboard"]).tensorboard is False
    # MT-DNN's schedule names for the same formulas as ours
    from module.bert_optim import build_schedule
    for theirs, ours in config_mod.SCHEDULE_ALIASES.items():
        assert parse_args(["--train_datasets", "rte", "--warmup_schedule", theirs]).warmup_schedule == ours
    x = [i / 20 for i in range(21)]

    def multipliers(name):  # the lr multiplier at progress x = step / 20 with 10% warmup
        sched = build_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), name, 20, 0.1)
        return [sched.lr_lambdas[0](step) for step in range(21)]
    assert multipliers("constant") == pytest.approx([v / 0.1 if v < 0.1 else 1.0 for v in x])
    assert multipliers("linear") == pytest.approx(
        [v / 0.1 if v < 0.1 else (1 - v) / (1 - 0.1) for v in x])  # MT-DNN's warmup_linear_xdl


@pytest.mark.parametrize("flag", sorted(NO_EFFECT_FLAGS))
def test_each_unimplemented_mtdnn_flag_warns_once(flag, capsys):
    cfg = parse_args(["--train_datasets", "rte", flag, "3", "--epochs", "2"])
    assert cfg.epochs == 2 and cfg == parse_args(["--train_datasets", "rte", "--epochs", "2"])
    err = capsys.readouterr().err.splitlines()
    assert err == [f"train.py: warning: {flag} 3 has no effect here ({NO_EFFECT_FLAGS[flag]})"]
    parse_args(["--train_datasets", "rte", flag])  # a store_true flag in MT-DNN: no value
    assert capsys.readouterr().err.splitlines() == [
        f"train.py: warning: {flag} has no effect here ({NO_EFFECT_FLAGS[flag]})"]


def test_no_effect_table_is_disjoint_from_the_fields_and_smart_and_kd_flags_take_effect(capsys):
    fields = {f"--{f.name}" for f in dataclasses.fields(TrainConfig)}
    assert not fields & set(NO_EFFECT_FLAGS)
    smart_kd = {"--adv_train", "--adv_opt", "--adv_norm_level", "--adv_p_norm", "--adv_alpha", "--adv_k",
                "--adv_step_size", "--adv_noise_var", "--adv_epsilon", "--mkd_opt", "--kd_loss"}
    assert smart_kd <= fields
    assert parse_args(["--train_datasets", "rte", "--mkd-opt", "1"]).mkd_opt == 1  # MT-DNN's hyphenated spelling
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("args,message", [
    (["--grad_clipping", "-1"], "--grad_clipping: must be >= 0"),
    (["--answer_opt", "2"], "--answer_opt: must be 0 (linear heads) or 1"),
    (["--dropout_p", "1.0"], "--dropout_p: must be in [0, 1)"),
    (["--bert_dropout_p", "-0.1"], "--bert_dropout_p: must be in [0, 1)"),
    (["--answer_num_turn", "0"], "--answer_num_turn: must be >= 1"),
    (["--num_hidden_layers", "0"], "--num_hidden_layers: must be >= 1, or -1 for all layers"),
    (["--optimizer", "radamx"], "--optimizer: unknown optimizer 'radamx'"),
])
def test_new_flags_are_validated(args, message, capsys):
    import train as train_cli
    assert train_cli.main(["--train_datasets", "rte"] + args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------------------ item 2: their YAML
def _lines_of(text: str, key: str) -> list[int]:
    return [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith(f"  {key}:")]


def test_mtdnn_glue_task_def_loads_as_written(ws, caplog):
    path = ws / "mtdnn_glue_task_def.yml"
    with caplog.at_level(logging.WARNING, logger="sage.task_def"):
        defs = load_task_defs(path)
    assert list(defs) == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "scitail", "snli", "sst", "stsb", "wnli"]
    assert not any(td.enable_san for td in defs.values())
    assert defs["cola"].metric_meta == ("ACC", "MCC") and defs["scitail"].labels == ("neutral", "entails")
    assert defs["cola"].dropout_p == 0.05 and defs["cola"].dropout_given and not defs["rte"].dropout_given
    assert [r.getMessage() for r in caplog.records] == []  # kd_loss and adv_loss take effect (SMART, --mkd_opt)
    assert {(td.kd_loss, td.adv_loss) for n, td in defs.items() if n != "stsb"} == {("MseCriterion",
                                                                                   "SymKlCriterion")}
    assert (defs["stsb"].kd_loss, defs["stsb"].adv_loss) == ("MseCriterion", "MseCriterion")
    trainer = Trainer(_cfg(ws, "mtdnn_current", task_def=str(path), max_steps=2))
    assert type(trainer.model.heads["rte"]) is ClassificationHead
    history = trainer.fit()
    assert [h["step"] for h in history] == [2] and set(history[-1]["dev"]) == {"rte_dev"}


def test_mtdnn_san_era_task_def_loads_as_written(ws, caplog):
    path = ws / "mtdnn_san_glue_task_def.yml"
    with caplog.at_level(logging.WARNING, logger="sage.task_def"):
        defs = load_task_defs(path)
    assert len(defs) == 11
    assert [n for n, td in defs.items() if td.enable_san] == ["mnli", "mrpc", "qnli", "qqp", "rte", "scitail",
                                                               "snli", "wnli"]
    assert defs["mnli"].dropout_p == 0.3
    lines = _lines_of(MTDNN_SAN_GLUE_TASK_DEF, "encoder_type")
    assert [r.getMessage() for r in caplog.records] == [
        f"warning: {path}:{lines[0]}: field 'encoder_type' has no effect here (the encoder comes from "
        f"--init_checkpoint (and is checked by --encoder_type)); given for "
        + ", ".join(f"{t} (line {n})" for t, n in zip(defs, lines))]


def test_sage_repo_task_def_loads_and_trains_as_written(ws, caplog):
    """The SAGE repo's YAML: mrpc lists only a `test_labeled` split; as in MT-DNN, {task}_train and {task}_dev
    are read anyway."""
    path = ws / "sage_glue_task_def.yml"
    path.write_text(SAGE_GLUE_TASK_DEF, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="sage.task_def"):
        defs = load_task_defs(path)
    assert len(defs) == 11 and not any(td.enable_san for td in defs.values())
    assert defs["cola"].dropout_p == 0.05 and defs["mrpc"].split_names == ("test_labeled",)
    assert [r.getMessage() for r in caplog.records] == []  # kd_loss and adv_loss take effect (SMART, --mkd_opt)
    assert (defs["mrpc"].kd_loss, defs["mrpc"].adv_loss) == ("MseCriterion", "SymKlCriterion")
    write_mtdnn_shards(ws / "sage_shards", "mrpc", {"train": 32, "dev": 12}, 2, seed=3)
    trainer = Trainer(_cfg(ws, "sage_mrpc", train_datasets=["mrpc"], test_datasets=["mrpc"], task_def=str(path),
                           data_dir=str(ws / "sage_shards")))
    history = trainer.fit()
    assert set(history[-1]["dev"]) == {"mrpc_dev"} and set(history[-1]["dev"]["mrpc_dev"]) == {"ACC", "F1"}
    assert "lists no train split in split_names; reading mrpc_train as MT-DNN does" in (
        ws / "sage_mrpc" / "train.log").read_text()


@pytest.mark.parametrize("extra,message", [
    ("  kd_los: MseCriterion\n", "f.yml:6: task 't', field 'kd_los': unknown field"),  # typo guard stays
    ("  encoder_type: BERTT\n", "f.yml:6: task 't', field 'encoder_type': unknown value 'BERTT'"),
    ("  adv_loss: SymKl\n", "f.yml:6: task 't', field 'adv_loss': unknown loss 'SymKl'"),
])
def test_mtdnn_fields_keep_the_typo_guard(extra, message):
    text = "t:\n  task_type: Classification\n  data_format: PremiseOnly\n  metric_meta: [ACC]\n  n_class: 2\n"
    with pytest.raises(TaskDefError) as info:
        parse_task_defs(text + extra, "f.yml")
    assert str(info.value).startswith(message)


def test_mtdnn_names_we_do_not_implement_warn_with_file_and_line(caplog):
    text = ("squad:\n  task_type: SpanYN\n  data_format: MRC\n  metric_meta: [EmF1]\n  n_class: 2\n"
            "t:\n  task_type: Classification\n  data_format: PremiseOnly\n  metric_meta: [ACC, F1MAC]\n"
            "  n_class: 2\n  loss: SymKlCriterion\n  encoder_type: ROBERTA\n"
            "r:\n  task_type: Regression\n  data_format: PremiseOnly\n  metric_meta: [Pearson]\n  enable_san: true\n")
    with caplog.at_level(logging.WARNING, logger="sage.task_def"):
        defs = parse_task_defs(text, "f.yml")
    assert list(defs) == ["t", "r"]
    assert defs["t"].metric_meta == ("ACC",) and defs["t"].loss == "CeCriterion" and not defs["r"].enable_san
    assert [r.getMessage() for r in caplog.records] == [
        "warning: f.yml:2: task 'squad', field 'task_type': MT-DNN's task_type SpanYN is not supported here; the "
        "task is left out",
        "warning: f.yml:9: task 't', field 'metric_meta': MT-DNN's metric(s) F1MAC are not implemented here; left out",
        "warning: f.yml:11: task 't', field 'loss': MT-DNN's loss SymKlCriterion is not implemented here; "
        "CeCriterion is used",
        "warning: f.yml:17: task 'r', field 'enable_san': the SAN answer head is for Classification tasks; a "
        "Regression task keeps its linear head",
        "warning: f.yml:12: field 'encoder_type' has no effect here (the encoder comes from --init_checkpoint "
        "(and is checked by --encoder_type)); given for t (line 12)"]
    from data_utils.task_def import select_tasks
    with pytest.raises(TaskDefError, match=r"task 'squad' cannot be used: f.yml:2: task 'squad', field "
                                           r"'task_type': MT-DNN's task_type SpanYN is not supported here"):
        select_tasks(defs, ["squad"])


# ------------------------------------------------------------------------------------------ SAN head
def _san(n_class=3, hidden=8, **kw) -> SANClassifier:
    torch.manual_seed(0)
    head = SANClassifier(hidden, n_class, dropout_p=0.0, options=SanOptions(**{"state_dropout_p": 0.0, **kw}),
                         init_std=0.5)
    return head


def _san_by_hand(head: SANClassifier, hidden, mask, types) -> torch.Tensor:
    """The SAN answer, one example and one step at a time, written from the description (eval mode)."""
    out = []
    for b in range(hidden.shape[0]):
        valid = [j for j in range(hidden.shape[1]) if mask[b, j]]
        hyp = [j for j in valid if types[b, j] == 1] or valid
        prem = [j for j in valid if types[b, j] == 0] if any(types[b, j] == 1 for j in valid) else valid
        m = hidden[b]
        w = torch.softmax(torch.stack([head.summary(m[j]).squeeze() for j in hyp]), 0)
        state = sum(w[i] * m[j] for i, j in enumerate(hyp))
        probs = []
        for _ in range(head.options.num_turn):
            a = torch.softmax(torch.stack([m[j] @ head.attend.weight @ state for j in prem]), 0)
            read = sum(a[i] * m[j] for i, j in enumerate(prem))
            state = head.cell(read.unsqueeze(0), state.unsqueeze(0)).squeeze(0)
            feats = torch.cat([read, state, (read - state).abs(), read * state])
            probs.append(torch.softmax(head.proj(feats), 0))
        out.append(torch.log(sum(probs) / len(probs)))
    return torch.stack(out)


def test_san_head_matches_a_step_by_step_version():
    head = _san().eval().double()
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, 7, 8, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 4 + [0] * 3])
    types = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0, 0], [0] * 7])  # row 2: one sentence
    with torch.no_grad():
        got = head(hidden, mask, types)
        want = _san_by_hand(head, hidden, mask, types)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(got.exp().sum(-1), torch.ones(3, dtype=torch.float64))
    padded = hidden.clone()
    padded[1, 5:] = 100.0  # padding never matters
    torch.testing.assert_close(head(padded, mask, types), got)


def test_san_training_drops_step_predictions_but_keeps_one():
    head = _san(num_turn=4, mem_drop_p=0.999).double()
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(64, 6, 8, generator=g, dtype=torch.float64)
    mask, types = torch.ones(64, 6, dtype=torch.long), torch.tensor([[0, 0, 0, 1, 1, 1]] * 64)
    torch.manual_seed(3)
    trained = head.train()(hidden, mask, types)
    head.eval()
    steps = []  # each step's own log-probabilities, for comparison
    with torch.no_grad():
        for t in range(1, 5):
            head.options = dataclasses.replace(head.options, num_turn=t)
            full = head(hidden, mask, types).exp() * t
            steps.append(full - (sum(steps) if steps else 0))
    per_step = torch.stack(steps, 1).log()  # (B, T, C)
    # with almost every prediction dropped, each row is exactly one step's prediction, and steps vary
    match = (trained.unsqueeze(1) - per_step).abs().amax(-1) < 1e-9
    assert bool(match.any(1).all())
    assert len(set(match.float().argmax(1).tolist())) > 1


def test_san_gets_gradients_and_learns():
    head = _san(n_class=2, num_turn=3)
    g = torch.Generator().manual_seed(4)
    hidden = torch.randn(32, 6, 8, generator=g)
    labels = (hidden[:, 3, 0] > 0).long()  # the answer sits in the hypothesis
    mask, types = torch.ones(32, 6, dtype=torch.long), torch.tensor([[0, 0, 0, 1, 1, 1]] * 32)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(head(hidden, mask, types), labels)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def _cfg(ws: Path, out: str, **kw) -> TrainConfig:
    base = dict(train_datasets=["rte"], test_datasets=["rte"], task_def=str(ws / "mtdnn_san_glue_task_def.yml"),
                data_dir=str(ws / "shards"), init_checkpoint=str(ws / "tiny-bert"), output_dir=str(ws / out),
                learning_rate=2e-3, batch_size=8, batch_size_eval=16, epochs=1, max_seq_len=64,
                tensorboard=False, optim_impl="foreach", seed=5, num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_mtdnn_task_def_trains_with_san_and_restores(ws):
    from mt_dnn.evaluate import predict_split
    from mt_dnn.restore import restore
    trainer = Trainer(_cfg(ws, "san"))
    assert isinstance(trainer.model.heads["rte"], SANClassifier)  # enable_san: true and --answer_opt 1 (default)
    history = trainer.fit()
    assert (ws / "san" / "rte_test_submission_0.tsv").is_file()  # rte_test.json was read too
    restored = restore(ws / "san" / "best")
    assert isinstance(restored.model.heads["rte"], SANClassifier)
    data = load_split(ws / "shards", restored.task_defs["rte"], "dev", 64)
    result = predict_split(restored.model.eval(), data, 16, torch.device("cpu"), restored.pad_id)
    assert result.metrics == pytest.approx(history[-1]["dev"]["rte_dev"])
    assert "SAN answer heads (--answer_opt 1, enable_san: true): rte" in (ws / "san" / "train.log").read_text()
    linear = Trainer(_cfg(ws, "linear", answer_opt=0))
    assert type(linear.model.heads["rte"]) is ClassificationHead


# ------------------------------------------------------------------------------------------ model flags
def test_update_bert_opt_freezes_the_encoder(ws):
    trainer = Trainer(_cfg(ws, "frozen", update_bert_opt=1, answer_opt=0))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trained = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    assert sorted(names[i] for i in trained) == ["encoder.pooler.dense.bias", "encoder.pooler.dense.weight",
                                                  "heads.rte.proj.bias", "heads.rte.proj.weight"]
    trainer.fit()
    after = dict(trainer.model.named_parameters())
    frozen = [n for n in before if n.startswith("encoder.") and not n.startswith("encoder.pooler.")]
    assert len(frozen) > 20 and all(torch.equal(before[n], after[n]) for n in frozen)
    for name in ("heads.rte.proj.weight", "encoder.pooler.dense.weight"):
        assert not torch.equal(before[name], after[name]), name


def test_dropout_flags(ws):
    defs = load_task_defs(ws / "mtdnn_san_glue_task_def.yml")
    encoder = AutoModel.from_config(tiny_bert_config())
    cfg = _cfg(ws, "unused", train_datasets=["rte", "mnli"], bert_dropout_p=0.25, dropout_p=0.2, answer_opt=0)
    model = build_model(encoder, {n: defs[n] for n in ("rte", "mnli")}, cfg)
    assert model.heads["rte"].dropout.p == 0.2  # no dropout_p in its YAML entry: --dropout_p
    assert model.heads["mnli"].dropout.p == 0.3  # the YAML's dropout_p wins
    drops = {n: m.p for n, m in encoder.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert drops["embeddings.dropout"] == drops["encoder.layer.1.output.dropout"] == 0.25
    assert drops["encoder.layer.0.attention.output.dropout"] == 0.25
    assert drops["encoder.layer.0.attention.self.dropout"] == 0.1  # attention probabilities keep theirs
    assert encoder.config.hidden_dropout_prob == 0.25


def test_num_hidden_layers_keeps_the_first_layers_and_restores(ws):
    from mt_dnn.restore import restore
    full = AutoModel.from_pretrained(ws / "tiny-bert")
    trainer = Trainer(_cfg(ws, "short", num_hidden_layers=1, answer_opt=0, max_steps=1))
    encoder = trainer.model.encoder
    assert len(encoder.encoder.layer) == 1 and encoder.config.num_hidden_layers == 1
    torch.testing.assert_close(encoder.encoder.layer[0].output.dense.weight, full.encoder.layer[0].output.dense.weight)
    trainer.fit()
    trainer.save_step_checkpoint()
    restored = restore(ws / "short" / "step-1")
    assert len(restored.model.encoder.encoder.layer) == 1
    with pytest.raises(ValueError, match="--num_hidden_layers: the encoder has 2 layers, cannot keep 3"):
        Trainer(_cfg(ws, "short3", num_hidden_layers=3, answer_opt=0))


def test_grad_clipping_is_per_parameter():
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(s)) for s in ((3, 4), (5,), (2, 2))]
    grads = [torch.randn(p.shape, generator=g) * k for p, k in zip(params, (10.0, 0.01, 1.0))]
    for p, gr in zip(params, grads):
        p.grad = gr.clone()
    clip_each_parameter(params, 0.5)
    for p, gr in zip(params, grads):
        norm = gr.norm().item()
        want = gr * (0.5 / (norm + 1e-6)) if norm > 0.5 else gr  # torch's clip_grad_norm_ rule, tensor by tensor
        torch.testing.assert_close(p.grad, want)
    assert params[1].grad.norm() < 0.5 and abs(params[0].grad.norm().item() - 0.5) < 1e-5


@pytest.mark.parametrize("clip", [1e-3, 0.0])
def test_trainer_applies_grad_clipping_before_the_step(ws, clip):
    trainer = Trainer(_cfg(ws, f"clip{clip}", grad_clipping=clip, global_grad_clipping=0.0, answer_opt=0,
                           max_steps=2))
    seen = []

    def spy(optimizer, args, kwargs):
        seen.append(max(p.grad.norm().item() for g in optimizer.param_groups for p in g["params"]
                        if p.grad is not None))
    trainer.optimizer.register_step_pre_hook(spy)
    trainer.fit()
    assert len(seen) == 2
    if clip:
        assert max(seen) <= clip * (1 + 1e-4)
    else:
        assert max(seen) > 1e-2  # without it, the largest parameter gradient is far above that bound


# ------------------------------------------------------------------------------------------ item 3: shards
def test_mtdnn_json_shards_are_read(ws, tmp_path):
    defs = load_task_defs(ws / "mtdnn_san_glue_task_def.yml")
    data = load_split(ws / "shards", defs["mnli"], "matched_dev", 64)
    assert len(data) == 12 and data.uids[0] == "0"
    # a .jsonl of the same name wins over the .json
    (tmp_path / "rte_dev.json").write_text(json.dumps({"uid": 5, "label": 1, "token_id": [2, 3], "type_id": [0, 0],
                                                        "attention_mask": [1, 1]}) + "\n")
    assert load_split(tmp_path, defs["rte"], "dev", 64).uids == ["5"]  # MT-DNN's int uid becomes a string
    (tmp_path / "rte_dev.jsonl").write_text(format_line("a", 0, [2, 4, 3], [0, 0, 0]) + "\n")
    assert load_split(tmp_path, defs["rte"], "dev", 64).uids == ["a"]
    # our own .jsonl format stays strict about its keys
    (tmp_path / "x.jsonl").write_text(json.dumps({"uid": "a", "label": 1, "token_id": [2], "type_id": [0],
                                                  "attention_mask": [1]}) + "\n")
    with pytest.raises(ShardError, match="x.jsonl:1: expected an object with keys"):
        read_shard(tmp_path / "x.jsonl")


# ------------------------------------------------------------------------------------------ README
def test_readme_section_shows_the_command_and_names_every_flag_and_field():
    from data_utils.task_def import FIELDS, NO_EFFECT_FIELDS
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Coming from MT-DNN or the SAGE repository")
    section = readme[start:readme.index("\n## ", start + 1)]
    command = AUTHORS_SCRIPT[AUTHORS_SCRIPT.index("python train.py"):]
    assert f"\n{command}```" in section  # verbatim
    for flag in NO_EFFECT_FLAGS:
        assert f"`{flag}`" in section, flag
    for name in ("grad_clipping", "log_file", "answer_opt", "update_bert_opt", "bert_dropout_p", "dropout_p",
                 "answer_num_turn", "encoder_type", "test_datasets", "momentum", "num_hidden_layers"):
        assert f"`--{name}" in section, name
    for name in (*FIELDS, *NO_EFFECT_FIELDS):
        assert f"`{name}`" in section, name
    assert "### Continuing training, exporting, GLUE submission (MT-DNN recipes)" in section

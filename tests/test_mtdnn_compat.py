"""Drop-in for MT-DNN and SAGE-repo users: the authors' command line, MT-DNN's task
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
from mt_dnn.gradients import clip_each_parameter
from mt_dnn.model import build_model
from mt_dnn.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]

FIXTURES = ROOT / "tests" / "fixtures"  # where each file comes from: tests/fixtures/README.md

# The SAGE authors' scripts/train_mnli_usadamax.sh, as in their repository (cliang1453/SAGE); the tests below
# replace only its three path lines (model_root, bert_path, data_dir).
AUTHORS_SCRIPT = (FIXTURES / "sage_repo" / "train_mnli_usadamax.sh").read_text(encoding="utf-8")

# The SAGE repository's experiments/glue/glue_task_def.yml, as in that repository.
SAGE_GLUE_TASK_DEF = (FIXTURES / "sage_repo" / "glue_task_def.yml").read_text(encoding="utf-8")

# MT-DNN's experiments/glue/glue_task_def.yml (namisan/mt-dnn), its trailing spaces included.
MTDNN_GLUE_TASK_DEF = (FIXTURES / "mtdnn" / "glue_task_def.yml").read_text(encoding="utf-8")

# The same file as MT-DNN had it while its GLUE recipe used the SAN answer module (encoder_type per task,
# enable_san: true on the pair tasks), as in that repository's history.
MTDNN_SAN_GLUE_TASK_DEF = (FIXTURES / "mtdnn" / "glue_task_def_san.yml").read_text(encoding="utf-8")


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


# ------------------------------------------------------------------------------------------ the authors' command
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
    # --answer_opt 1, but the task definition (here as in theirs) does not enable SAN for mnli: linear heads
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


# ------------------------------------------------------------------------------------------ derived CLI
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


def test_mtdnn_aliases_set_the_config_fields():
    cfg = parse_args(["--train_datasets", "rte", "--optim", "adamw", "--log_per_updates", "7", "--tensorboard",
                      "--momentum", "0.5", "--update_bert_opt", "1", "--bert_dropout_p", "0.2", "--dropout_p", "0.3"])
    assert (cfg.optimizer, cfg.log_every, cfg.tensorboard, cfg.momentum) == ("adamw", 7, True, 0.5)
    assert (cfg.update_bert_opt, cfg.bert_dropout_p, cfg.dropout_p) == (1, 0.2, 0.3)
    assert parse_args(["--train_datasets", "rte", "--no_tensorboard"]).tensorboard is False
    # MT-DNN's schedule names for the same formulas as this project's
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



# ----------------------------------------------------------------------- upstream flags: meant or refused
def _refused(args: list[str], capsys, tmp_path) -> str:
    """train.py's one stderr line for a refused flag; exit 2 and no output folder."""
    import train as train_cli
    out = tmp_path / "never"
    assert train_cli.main(["--train_datasets", "rte", "--output_dir", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and not out.exists()
    return err[0]


@pytest.mark.parametrize("value,schedule", [("0", "linear"), ("1", "cosine"), ("2", "constant"), ("3", "linear")])
def test_mtdnn_scheduler_type_sets_the_schedule_it_means(value, schedule, capsys):
    """MT-DNN's 0/1/2 build transformers' linear/cosine/constant; its 3 builds a polynomial schedule and then
    overwrites it with the linear one. The effective schedule is the config's warmup_schedule."""
    cfg = parse_args(["--train_datasets", "rte", "--scheduler_type", value])
    assert cfg.warmup_schedule == schedule and json.loads(cfg.to_json())["warmup_schedule"] == schedule
    assert capsys.readouterr().err == ""  # it takes effect: no notice
    agreeing = {"linear": "warmup_linear_xdl", "cosine": "cosine", "constant": "warmup_constant"}[schedule]
    both = parse_args(["--train_datasets", "rte", "--warmup_schedule", agreeing, "--scheduler_type", value])
    assert both == cfg


def test_scheduler_type_1_trains_transformers_cosine(ws):
    """The run's own scheduler: 20 steps (40 rows / batch 2), warmup 0.1 = 2 steps, then
    0.5 (1 + cos(pi (k - 2) / 18)); plain SGD evaluates it from step 0."""
    import math
    cfg = parse_args(["--train_datasets", "mnli", "--test_datasets", "mnli_matched", "--task_def",
                      str(ws / "mtdnn_glue_task_def.yml"), "--data_dir", str(ws / "shards"), "--init_checkpoint",
                      str(ws / "tiny-bert"), "--output_dir", str(ws / "cosine"), "--batch_size", "2", "--epochs",
                      "1", "--optimizer", "sgd", "--scheduler_type", "1", "--no_tensorboard", "--device", "cpu"])
    lam = Trainer(cfg).scheduler.lr_lambdas[0]
    assert [lam(k) for k in (0, 1, 2, 11, 20)] == pytest.approx(
        [0.0, 0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 2)), 0.0], abs=1e-12)


@pytest.mark.parametrize("args,message", [
    (["--scheduler_type", "1", "--warmup_schedule", "warmup_linear"],
     "--scheduler_type 1 (MT-DNN's cosine schedule) contradicts --warmup_schedule warmup_linear; give one of the two"),
    (["--warmup_schedule", "warmup_constant", "--scheduler_type", "0"],
     "--scheduler_type 0 (MT-DNN's linear schedule) contradicts --warmup_schedule warmup_constant; give one of the "
     "two"),
    (["--scheduler_type", "7"], "--scheduler_type 7: expected MT-DNN's 0 (linear), 1 (cosine), 2 (constant), "
                                "3 (linear) or the SAGE repository's ms, rop, exp"),
    (["--scheduler_type"], "--scheduler_type: expected MT-DNN's 0 (linear), 1 (cosine), 2 (constant), 3 (linear) "
                           "or the SAGE repository's ms, rop, exp"),
    (["--optimizer", "sgd", "--scheduler_type", "exp"],
     "--scheduler_type exp: with --optimizer sgd the SAGE repository built an ExponentialLR that it never stepped, "
     "and none exists here; its SGD ran at the constant base rate: for that run use --warmup_schedule constant "
     "--warmup 0"),
    (["--optimizer", "sgd", "--scheduler_type", "ms"], "--scheduler_type ms: with --optimizer sgd the SAGE "
     "repository built a MultiStepLR that it never stepped"),
    (["--optimizer", "sgd", "--have_lr_scheduler"],
     "--have_lr_scheduler: with plain SGD it turned off the SAGE repository's SGD scheduler, which it never stepped "
     "anyway; its SGD ran at the constant base rate: for that run use --warmup_schedule constant --warmup 0"),
    (["--optimizer", "sgd", "--lr_gamma", "0.9"], "--lr_gamma 0.9: the SAGE repository gave it to plain SGD's "
     "scheduler, which it never stepped, and none exists here; its SGD ran at the constant base rate"),
    (["--optimizer", "sgd", "--multi_step_lr", "5,10"], "--multi_step_lr 5,10: the SAGE repository gave it to "
     "plain SGD's scheduler, which it never stepped"),
])
def test_scheduler_flags_that_cannot_be_honoured_are_refused(args, message, capsys, tmp_path):
    line = _refused(args, capsys, tmp_path)
    assert line.startswith(f"train.py: error: {message}"), line


def test_sage_scheduler_flags_change_nothing_with_schedule_carrying_optimizers(capsys):
    """The SAGE repository built ms/rop/exp only for plain SGD; with its other optimizers the optimizer's own
    --warmup_schedule ran, as here. Giving them changes nothing and says so."""
    plain = parse_args(["--train_datasets", "rte", "--optimizer", "usadamax"])
    capsys.readouterr()
    cfg = parse_args(["--train_datasets", "rte", "--optimizer", "usadamax", "--scheduler_type", "ms",
                      "--have_lr_scheduler", "--lr_gamma", "0.5", "--multi_step_lr", "10,20,30"])
    assert cfg == plain and cfg.warmup_schedule == "warmup_linear"
    assert capsys.readouterr().err.splitlines() == [
        "train.py: warning: --scheduler_type ms has no effect here (the SAGE repository applies it only to plain "
        "SGD; its other optimizers follow --warmup_schedule, as here)",
        "train.py: warning: --have_lr_scheduler has no effect here (the SAGE repository's switch (given: off) for "
        "the scheduler of plain SGD only; its other optimizers follow --warmup_schedule, as here)",
        "train.py: warning: --lr_gamma 0.5 has no effect here (the SAGE repository reads it only for plain SGD's "
        "scheduler (--scheduler_type))",
        "train.py: warning: --multi_step_lr 10,20,30 has no effect here (the SAGE repository reads it only for "
        "plain SGD's scheduler (--scheduler_type))"]


def test_warmup_cosine_is_accepted_and_recorded(capsys):
    cfg = parse_args(["--train_datasets", "rte", "--warmup_schedule", "warmup_cosine"])
    assert cfg.warmup_schedule == "warmup_cosine" and capsys.readouterr().err == ""
    assert TrainConfig.from_json(cfg.to_json()).warmup_schedule == "warmup_cosine"


# values that ask for what this project does anyway: one notice line, the run unchanged
SAME_VALUES = [("--answer_rnn_type", "GRU"), ("--answer_att_type", "bilinear"), ("--mem_cum_type", "mlp"),
               ("--answer_merge_opt", "1"), ("--answer_mem_type", "1"), ("--mtl_opt", "0"), ("--init_ratio", "1.0"),
               ("--dropout_w", "0"), ("--fp16_opt_level", "O1"), ("--cuda", "True"), ("--cuda", None)]
# values that ask for something else: refused in one line
OTHER_VALUES = [("--answer_rnn_type", "lstm"), ("--answer_att_type", "simple"), ("--mem_cum_type", "simple"),
                ("--answer_merge_opt", "0"), ("--answer_mem_type", "0"), ("--answer_weight_norm_on", None),
                ("--dump_state_on", None), ("--max_answer_len", "30"), ("--mtl_opt", "1"), ("--init_ratio", "2"),
                ("--bin_on", None), ("--cuda", "False"), ("--dropout_w", "0.1"),
                ("--encode_mode", None), ("--weighted_on", None)]


def _given(flag, value):
    return [flag] if value is None else [flag, value]


@pytest.mark.parametrize("flag,value", SAME_VALUES)
def test_a_value_asking_for_what_this_project_does_is_one_notice(flag, value, capsys):
    plain = parse_args(["--train_datasets", "rte"])
    capsys.readouterr()
    assert parse_args(["--train_datasets", "rte", *_given(flag, value)]) == plain
    shown = flag if value is None else f"{flag} {value}"
    assert capsys.readouterr().err.splitlines() == [
        f"train.py: warning: {shown} has no effect here ({config_mod.VALUE_FLAGS[flag].why})"]


@pytest.mark.parametrize("flag,value", OTHER_VALUES)
def test_a_value_asking_for_something_else_is_refused(flag, value, capsys, tmp_path):
    shown = flag if value is None else f"{flag} {value}"
    assert _refused(_given(flag, value), capsys, tmp_path) == \
        f"train.py: error: {shown}: {config_mod.VALUE_FLAGS[flag].instead}"


@pytest.mark.parametrize("args,message", [
    (["--answer_rnn_type", "lstm"], "--answer_rnn_type lstm: this SAN's step cell is a GRU (MT-DNN's gru); LSTM and "
                                    "RNN cells are not available: leave the flag out"),
    (["--fp16", "--fp16_opt_level", "O2"], "--fp16_opt_level O2: --fp16 here is torch autocast with float32 weights "
     "and dynamic loss scaling (Apex's O1): O0 is float32 training (leave out --fp16), O2 and O3 keep float16 "
     "weights, which is not available"),
    (["--fp16", "--fp16_opt_level", "O0"], "--fp16_opt_level O0: --fp16 here is torch autocast"),
    (["--dropout_w", "0.1"], "--dropout_w 0.1: word dropout (training tokens replaced by the unknown token with "
                             "this probability) is not available: leave the flag out"),
    (["--bin_on"], "--bin_on: MT-DNN's length bins, with batches shrinking by --bin_grow_ratio per bin and the loss "
                   "rescaled by batch size, are not available"),
    (["--cuda", "False"], "--cuda False: use --device cpu to train on the CPU"),
    (["--encode_mode"], "--encode_mode: MT-DNN's encode-only run (the test sets' encoder outputs saved, no "
                        "training) is not available here"),
])
def test_refusals_say_what_to_use_instead(args, message, capsys, tmp_path):
    line = _refused(args, capsys, tmp_path)
    assert line.startswith(f"train.py: error: {message}"), line


def test_fp16_opt_level_without_fp16_changes_nothing(capsys):
    """MT-DNN reads the level only inside its --fp16 branch."""
    assert parse_args(["--train_datasets", "rte", "--fp16_opt_level", "O2"]) == parse_args(["--train_datasets", "rte"])
    assert capsys.readouterr().err.splitlines() == [
        f"train.py: warning: --fp16_opt_level O2 has no effect here ({config_mod.VALUE_FLAGS['--fp16_opt_level'].why})"]


def test_every_upstream_flag_is_decided_once():
    fields = {f"--{f.name}" for f in dataclasses.fields(TrainConfig)}
    value_flags = set(config_mod.VALUE_FLAGS)
    assert not value_flags & set(NO_EFFECT_FLAGS) and not value_flags & fields
    for flag, rule in config_mod.VALUE_FLAGS.items():
        assert getattr(rule, "text", None) or rule.instead, flag  # every refusal says what to use instead


# ------------------------------------------------------------------------------------------ --local_rank
def _placement(monkeypatch, env: dict, flag):
    from mt_dnn import distributed as dist_utils
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return dist_utils.from_environment(flag)


def test_legacy_launcher_local_rank_places_the_process_on_its_gpu(monkeypatch):
    """torch.distributed.launch passes --local_rank=N (torch >= 2: --local-rank=N) and, in some versions, sets no
    LOCAL_RANK: the process must take GPU N, as MT-DNN's train.py did, never GPU 0 for every rank."""
    from mt_dnn.runtime import pick_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    env = _placement(monkeypatch, {"RANK": "1", "WORLD_SIZE": "2"}, "1")
    assert (env.rank, env.world_size, env.local_rank) == (1, 2, 1)
    assert pick_device("auto", env) == torch.device("cuda", 1)
    assert _placement(monkeypatch, {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, "1").local_rank == 1
    one = _placement(monkeypatch, {}, "1")  # one process given --local_rank 1: GPU 1, as in MT-DNN
    assert pick_device("auto", one) == torch.device("cuda", 1)
    assert pick_device("auto", _placement(monkeypatch, {}, "-1")) == torch.device("cuda")
    with pytest.raises(ValueError, match=r"local rank 2 \(LOCAL_RANK or --local_rank\): only 2 CUDA device"):
        pick_device("auto", _placement(monkeypatch, {}, "2"))
    assert parse_args(["--train_datasets", "rte", "--local-rank=1"]) == parse_args(["--train_datasets", "rte"])


@pytest.mark.parametrize("env,args,message", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, [],
     "environment: WORLD_SIZE=2 but no LOCAL_RANK, so this process's GPU is unknown: launch with torchrun, or pass "
     "--local_rank"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, ["--local_rank=1"],
     "--local_rank 1: the launcher set LOCAL_RANK=0; give one placement"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, ["--local_rank", "-1"],
     "--local_rank -1 asks for one process, but the launcher set WORLD_SIZE=2"),
    ({}, ["--local-rank=gpu1"], "--local_rank gpu1: expected a GPU index (0, 1, ...) or -1 (one process)"),
])
def test_local_rank_placements_that_contradict_are_refused(env, args, message, monkeypatch, capsys, tmp_path):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _refused(args + ["--device", "cpu"], capsys, tmp_path) == f"train.py: error: {message}"


# ------------------------------------------------------------------------------------------ --encoder_type 5
def _tiny_xlmr(folder: Path) -> None:
    """A random 2-layer XLM-RoBERTa and a small Unigram tokenizer of its own, saved as a Hugging Face folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizer
    words = "the a film good bad movie was is not very great awful yes no it this".split()
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -2.0) for w in words]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz.,!"]
    backend = Tokenizer(models.Unigram(vocab, unk_id=3))
    backend.pre_tokenizer, backend.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    XLMRobertaTokenizer(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                        unk_token="<unk>", pad_token="<pad>", mask_token="<unk>").save_pretrained(folder)
    torch.manual_seed(0)
    XLMRobertaModel(XLMRobertaConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=66, type_vocab_size=1,
                                     pad_token_id=1, bos_token_id=0, eos_token_id=2)).save_pretrained(folder)


def test_encoder_type_5_xlm_r_runs_through_prepro_and_train(ws, tmp_path, capsys):
    import prepro_std
    import train as train_cli
    from data_utils.shards import shard_path
    model = tmp_path / "tiny-xlmr"
    _tiny_xlmr(model)
    rows = {"train": [("good film", "yes"), ("bad movie", "no"), ("great", "yes"), ("awful", "no")] * 4,
            "dev": [("a good movie", "yes"), ("not good", "no")] * 3}
    for split, pairs in rows.items():
        lines = [f"{i}\t{'entailment' if y == 'yes' else 'not_entailment'}\t{a}\tit is {y}" for i, (a, y)
                 in enumerate(pairs)]
        (tmp_path / f"rte_{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    task_def = ws / "mtdnn_glue_task_def.yml"
    assert prepro_std.main(["--model", str(model), "--root_dir", str(tmp_path), "--task_def", str(task_def),
                            "--tasks", "rte", "--workers", "1", "--max_seq_len", "64"]) == 0
    first = read_shard(shard_path(tmp_path, str(model), "rte", "train"))[0]
    assert first["token_id"][0] == 0 and first["token_id"].count(2) == 3 and set(first["type_id"]) == {0}
    common = ["--train_datasets", "rte", "--task_def", str(task_def), "--data_dir",
              str(shard_path(tmp_path, str(model), "rte", "train").parent), "--init_checkpoint", str(model),
              "--batch_size", "4", "--epochs", "1", "--no_tensorboard", "--device", "cpu", "--max_seq_len", "64"]
    out = tmp_path / "run"
    assert train_cli.main(common + ["--encoder_type", "5", "--output_dir", str(out)]) == 0, capsys.readouterr().err
    config = json.loads((out / "best" / "train_config.json").read_text())
    assert config["encoder_type"] == 5
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0]
    capsys.readouterr()
    assert train_cli.main(common + ["--encoder_type", "5", "--init_checkpoint", str(ws / "tiny-bert"),
                                    "--output_dir", str(tmp_path / "bert")]) == 2
    assert capsys.readouterr().err.strip() == ("train.py: error: --encoder_type: encoder type 5 expects model_type "
                                               "('xlm-roberta',), but the checkpoint is 'bert'")

# ------------------------------------------------------------------------------------------ their YAML
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


def test_mtdnn_names_not_implemented_here_warn_with_file_and_line(caplog):
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


def test_update_bert_opt_freezes_the_whole_encoder_under_the_authors_layouts(ws):
    """The SAGE repository and MT-DNN freeze every bert.* parameter; their own poolers, outside it, train."""
    for layout, trained in (("sage", ["heads.rte.proj.bias", "heads.rte.proj.weight", "pooler.dense.bias",
                                      "pooler.dense.weight"]),
                            ("mtdnn", ["heads.rte.pooler.dense.bias", "heads.rte.pooler.dense.weight",
                                       "heads.rte.proj.bias", "heads.rte.proj.weight"])):
        trainer = Trainer(_cfg(ws, f"frozen-{layout}", update_bert_opt=1, answer_opt=0, head_layout=layout))
        names = {id(p): n for n, p in trainer.model.named_parameters()}
        assert sorted(names[id(p)] for g in trainer.optimizer.param_groups for p in g["params"]) == trained


def test_dropout_flags(ws):
    defs = load_task_defs(ws / "mtdnn_san_glue_task_def.yml")
    encoder = AutoModel.from_config(tiny_bert_config())
    cfg = _cfg(ws, "unused", train_datasets=["rte", "mnli"], bert_dropout_p=0.25, dropout_p=0.2, answer_opt=0)
    model = build_model(encoder, {n: defs[n] for n in ("rte", "mnli")}, cfg.model_settings())
    assert model.heads["rte"].dropout.p == 0.2  # no dropout_p in its YAML entry: --dropout_p
    assert model.heads["mnli"].dropout.p == 0.3  # the YAML's dropout_p wins
    drops = {n: m.p for n, m in encoder.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert drops["embeddings.dropout"] == drops["encoder.layer.1.output.dropout"] == 0.25
    assert drops["encoder.layer.0.attention.output.dropout"] == 0.25
    # MT-DNN's and the SAGE repository's --bert_dropout_p sets the attention probabilities' dropout too
    assert drops["encoder.layer.0.attention.self.dropout"] == 0.25
    assert encoder.config.hidden_dropout_prob == encoder.config.attention_probs_dropout_prob == 0.25


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


# ------------------------------------------------------------------------------------------ shards
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
    # the project's own .jsonl format stays strict about its keys
    (tmp_path / "x.jsonl").write_text(json.dumps({"uid": "a", "label": 1, "token_id": [2], "type_id": [0],
                                                  "attention_mask": [1]}) + "\n")
    with pytest.raises(ShardError, match="x.jsonl:1: expected an object with keys"):
        read_shard(tmp_path / "x.jsonl")


# ------------------------------------------------------------------------------------------ docs/mtdnn.md
def test_mtdnn_doc_shows_the_command_and_names_every_flag_and_field():
    """docs/mtdnn.md, section "Coming from MT-DNN or the SAGE repository"."""
    from data_utils.task_def import FIELDS, NO_EFFECT_FIELDS
    doc = (ROOT / "docs" / "mtdnn.md").read_text(encoding="utf-8")
    start = doc.index("## Coming from MT-DNN or the SAGE repository")
    section = doc[start:doc.index("\n## ", start + 1)]
    command = AUTHORS_SCRIPT[AUTHORS_SCRIPT.index("python train.py"):]
    assert f"\n{command}```" in section  # verbatim
    for flag in (*NO_EFFECT_FLAGS, *config_mod.VALUE_FLAGS):
        assert f"`{flag}`" in section, flag
    for name in ("grad_clipping", "log_file", "answer_opt", "update_bert_opt", "bert_dropout_p", "dropout_p",
                 "answer_num_turn", "encoder_type", "test_datasets", "momentum", "num_hidden_layers", "head_layout",
                 "pooler_actf"):
        assert f"`--{name}" in section, name
    for name in (*FIELDS, *NO_EFFECT_FIELDS):
        assert f"`{name}`" in section, name
    assert "### Continuing training, exporting, GLUE submission (MT-DNN recipes)" in section

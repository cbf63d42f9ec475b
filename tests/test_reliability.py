"""Reliability: divergence, bad shards, hostile YAML, corrupt checkpoints, mismatched resumes, stale
temps and early failures each end in one line naming the step, file, line or flag, exit non-zero and leave
nothing behind. Tiny random BERT, tiny shards; docs/reliability.md lists every case with its test."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

import predict as predict_cli
import pretrained_models
import train as train_cli
from conftest import tiny_bert_config
from data_utils import jsonsafe
from data_utils.atomic import clean_stale_temps, old_copy_name, temp_prefix
from data_utils.shard_checks import encoder_limits
from data_utils.shards import ShardError, format_line
from data_utils.task_def import TaskDefError, load_task_defs, parse_task_defs
from mt_dnn import checkpoint as ckpt
from mt_dnn.batcher import load_split
from mt_dnn.nonfinite import NonFiniteError, NonFiniteGuard
from mt_dnn.trainer import Trainer
from workspace import TASK_YAML, config, write_shards


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config()).save_pretrained(root / "tiny-bert")
    (root / "tasks.yml").write_text(TASK_YAML, encoding="utf-8")
    write_shards(root / "shards", sizes=(32, 16, 16))
    return root


def cli(ws: Path, out: str, *extra: str, data_dir=None) -> list[str]:
    return ["--train_datasets", "pairs", "--task_def", str(ws / "tasks.yml"), "--data_dir",
            str(data_dir or ws / "shards"), "--init_checkpoint", str(ws / "tiny-bert"), "--output_dir", str(ws / out),
            "--no_tensorboard", "--batch_size", "8", "--max_seq_len", "64", "--optim_impl", "foreach",
            "--log_every", "2", "--epochs", "1", *extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = re.findall(r"(?:train|predict)\.py: error: [^\r\n]*", err)  # progress bars share stderr
    assert len(errors) == 1, err
    return errors[0]


def strict_json_loads(text: str):
    def refuse(name):
        raise AssertionError(f"bare {name} in JSON")
    return json.loads(text, parse_constant=refuse)


# ------------------------------------------------------------------------------------------- divergence
def test_divergence_stops_with_one_line_and_saves_nothing(ws, capsys):
    """--learning_rate 1e6: the run stops instead of finishing, saving NaN weights as best/ and scoring them."""
    out = ws / "diverge"
    assert train_cli.main(cli(ws, "diverge", "--learning_rate", "1e6", "--max_steps", "4",
                              "--save_every_steps", "1")) == 2
    line = one_line_error(capsys)
    assert "training diverged: non-finite" in line and "task pairs" in line and "last finite loss" in line
    step = int(line.split(" at step ")[1].split(",")[0])
    assert 1 <= step <= 4
    assert not (out / "best").exists() and not (out / "metrics.jsonl").exists()
    for folder in out.glob("step-*"):  # steps before the first bad one may be saved: they are finite
        assert int(folder.name[5:]) < step
        assert all(torch.isfinite(v).all() for v in ckpt.read_weights(folder).values())


def test_guard_names_first_bad_step_task_and_last_finite_loss():
    guard = NonFiniteGuard(torch.device("cpu"))
    params = [torch.nn.Parameter(torch.ones(3))]
    guard.observe_loss(1, "rte", torch.tensor(0.69))
    guard.observe_grad_norm(torch.tensor(2.0))
    guard.check(params, 1)  # finite: no error
    guard.observe_loss(2, "rte", torch.tensor(1.9e6))
    guard.observe_loss(3, "mrpc", torch.tensor(float("nan")))
    guard.observe_loss(4, "rte", torch.tensor(float("inf")))
    with pytest.raises(NonFiniteError, match=r"non-finite loss nan at step 3, task mrpc; last finite loss 1\.9e\+06"):
        guard.check(params, 4)


def test_guard_gradient_norm_weights_and_fp16_overflow_exception():
    params = [torch.nn.Parameter(torch.ones(3))]
    guard = NonFiniteGuard(torch.device("cpu"))
    guard.observe_loss(7, "sst", torch.tensor(0.5))
    guard.observe_grad_norm(torch.tensor(float("inf")))
    with pytest.raises(NonFiniteError, match=r"non-finite gradient norm inf at step 7, task sst; last finite loss 0\.5"
                       ):
        guard.check(params, 7)
    fp16 = NonFiniteGuard(torch.device("cpu"), check_grads=False)  # the GradScaler skips overflowed steps
    fp16.observe_loss(1, "sst", torch.tensor(0.5))
    fp16.observe_grad_norm(torch.tensor(float("inf")))
    fp16.check(params, 1)
    with torch.no_grad():
        params[0][1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"non-finite \(or overflowing\) weights after step 2"):
        fp16.check(params, 2)
    for value in (float("inf"), float("-inf"), 1e30):
        weights = [torch.nn.Parameter(torch.ones(2, 3)), torch.nn.Parameter(torch.zeros(4))]
        NonFiniteGuard(torch.device("cpu")).check(weights, 1)
        with torch.no_grad():
            weights[1][3] = value
        with pytest.raises(NonFiniteError, match="weights after step 1"):
            NonFiniteGuard(torch.device("cpu")).check(weights, 1)


def test_strict_json_writes_null_for_non_finite(tmp_path):
    from mt_dnn.evaluate import SplitResult, write_scores
    assert jsonsafe.dumps({"a": float("nan"), "b": [float("inf"), 1.5, (2, float("-inf"))]}) == \
        '{"a": null, "b": [null, 1.5, [2, null]]}'
    result = SplitResult("score_dev", ["0", "1"], [float("nan"), 1.0], [float("nan"), 1.0],
                         {"Pearson": float("nan")})
    path = write_scores(result, tmp_path, 0)
    assert strict_json_loads(path.read_text())["metrics"] == {"Pearson": None}


# ------------------------------------------------------------------------------------------- flags
@pytest.mark.parametrize("args,message", [
    (["--learning_rate", "nan"], "--learning_rate: must be a finite number, got nan"),
    (["--learning_rate", "inf"], "--learning_rate: must be a finite number, got inf"),
    (["--ratio", "nan"], "--ratio: must be a finite number"),
    (["--betas", "0.9", "nan"], "--betas: must be a finite number"),
    (["--keep_last", "0"], "--keep_last: must be >= 1"),
    (["--save_every_steps", "-1"], "--save_every_steps: must be >= 0, got -1"),
    (["--global_grad_clipping", "-1"], "--global_grad_clipping: must be >= 0, got -1.0"),
    (["--max_steps", "-3"], "--max_steps: must be >= 0"),
    (["--test_datasets", "rte,rte"], "--test_datasets: task(s) rte given more than once"),
])
def test_cli_rejects_more_bad_flags(args, message, capsys):
    assert train_cli.main(["--train_datasets", "rte"] + args) == 2
    assert message in one_line_error(capsys)


def test_duplicate_train_task_rejected(capsys):
    assert train_cli.main(["--train_datasets", "rte,mrpc,rte"]) == 2
    assert "--train_datasets: task(s) rte given more than once" in one_line_error(capsys)


# ------------------------------------------------------------------------------------------- shards
def write_task_shard(folder: Path, name: str, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = format_line("0", 1, [2, 11, 30, 3], [0, 0, 0, 0])


@pytest.mark.parametrize("bad,split,message", [
    (format_line("1", 7, [2, 11, 3], [0, 0, 0]), "dev", ":2: label 7 is outside 0..1 (task pairs has 2 classes)"),
    (format_line("1", 5, [2, 11, 3], [0, 0, 0]), "train", ":2: label 5 is outside 0..1"),
    (format_line("1", -1, [2, 11, 3], [0, 0, 0]), "train", ":2: label -1 is outside 0..1"),
    (format_line("1", 1.5, [2, 11, 3], [0, 0, 0]), "train", ":2: label 1.5 is not a class id of task pairs"),
    (format_line("1", 1, [2, 9999999, 3], [0, 0, 0]), "train",
     ":2: token id 9999999 is outside 0..127 (encoder tiny-bert has a vocabulary of 128"),
    (format_line("1", 1, [2, -4, 3], [0, 0, 0]), "test", ":2: token id -4 is outside 0..127"),
    (format_line("1", 1, [2, 5, 3], [0, 2, 0]), "dev", ":2: type id 2 is outside 0..1"),
    ('{"uid": "1", "label": 1, "token_id": [2, "x", 3], "type_id": [0, 0, 0]}', "train",
     ":2: token id must be integers"),
    ('{"uid": "1", "label": 1, "token_id": [2, 5, 3], "type_id": [0, null, 0]}', "dev",
     ":2: type id must be integers"),
    (format_line("1", 1, [2] + [5] * 80 + [3], [0] * 82), "train",
     ":2: 82 tokens after --max_seq_len 512, but encoder tiny-bert has 64 positions; use --max_seq_len 64 or less"),
])
def test_bad_shard_rows_fail_at_load_with_file_line(ws, bad, split, message):
    td = load_task_defs(ws / "tasks.yml")["pairs"]
    folder = ws / f"bad-{split}"
    last = GOOD.replace('"uid": "0"', '"uid": "2"')  # uids are unique: only the middle row is bad
    path = write_task_shard(folder, f"pairs_{split}.jsonl", [GOOD, bad, last])
    limits = encoder_limits(tiny_bert_config(), "tiny-bert")
    with pytest.raises(ShardError) as info:
        load_split(folder, td, split, 512, encoder=limits)
    assert str(info.value).startswith(f"{path}{message}")


def test_regression_and_ranking_labels_checked(ws):
    defs = load_task_defs(ws / "tasks.yml")
    folder = ws / "bad-other"
    path = write_task_shard(folder, "score_train.jsonl",
                            ['{"uid": "0", "label": 1.0, "token_id": [2, 3], "type_id": [0, 0]}',
                             '{"uid": "1", "label": NaN, "token_id": [2, 3], "type_id": [0, 0]}'])
    with pytest.raises(ShardError, match=rf"^{path}:2: label nan is not finite \(task score\)$"):
        load_split(folder, defs["score"], "train", 64)
    hyps = [[2, 5, 3]] * 3
    path = write_task_shard(folder, "pick_train.jsonl", [format_line("p", 3, hyps, [[0] * 3] * 3)])
    with pytest.raises(ShardError, match=r":1: label 3 is outside 0\.\.2 \(task pick has 3 hypotheses\)"):
        load_split(folder, defs["pick"], "train", 64)
    path = write_task_shard(folder, "pick_dev.jsonl", [format_line("p", 0, [[2, 5, 3], [2, 500, 3], [2, 3]],
                                                                   [[0] * 3, [0] * 3, [0] * 2])])
    with pytest.raises(ShardError, match=r"pick_dev\.jsonl:1: token id 500 is outside 0\.\.127"):
        load_split(folder, defs["pick"], "dev", 64, encoder=encoder_limits(tiny_bert_config(), "tiny"))


def test_bad_dev_shard_stops_the_cli_before_training_and_leaves_no_output(ws, capsys):
    data = ws / "bad-cli"
    shutil.copytree(ws / "shards", data, dirs_exist_ok=True)
    lines = (data / "pairs_dev.jsonl").read_text().splitlines()
    lines[4] = format_line("4", 7, [2, 11, 3], [0, 0, 0])
    (data / "pairs_dev.jsonl").write_text("\n".join(lines) + "\n")
    assert train_cli.main(cli(ws, "bad-cli-out/run", data_dir=data)) == 2
    assert one_line_error(capsys).endswith(f"{data / 'pairs_dev.jsonl'}:5: label 7 is outside 0..1 (task pairs has "
                                           "2 classes)")
    assert not (ws / "bad-cli-out").exists()  # the run never started: no output folder (or its parent) left


def test_shard_check_names_a_bad_row_deep_in_a_big_shard(ws, tmp_path):
    """Vectorised checks on 50k rows of 30 tokens; the first bad row is still named by its line."""
    from data_utils.shard_checks import check_encoder_fit, check_labels
    td = load_task_defs(ws / "tasks.yml")["pairs"]
    n = 50_000
    toks = [[2] + [(i * 7 + k) % 120 + 5 for k in range(28)] + [3] for i in range(n)]
    types = [[0] * 30 for _ in range(n)]
    labels = [i % 2 for i in range(n)]
    check_labels(tmp_path / "x.jsonl", td, labels)
    check_encoder_fit(tmp_path / "x.jsonl", toks, types, [30] * n, encoder_limits(tiny_bert_config(), "t"), False, 64)
    toks[n - 1][5] = 128
    with pytest.raises(ShardError, match=rf":{n}: token id 128"):
        check_encoder_fit(tmp_path / "x.jsonl", toks, types, [30] * n, encoder_limits(tiny_bert_config(), "t"),
                          False, 64)


# ------------------------------------------------------------------------------------------- YAML
def _bomb(levels: int = 9) -> str:
    parts = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    parts += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "{" + ", ".join(parts) + "}"


@pytest.mark.parametrize("field", ["dropout_p", "metric_meta"])
def test_yaml_alias_bomb_is_refused_quickly(field):
    text = ("t:\n  task_type: Classification\n  data_format: PremiseOnly\n  n_class: 2\n"
            + ("  metric_meta: [ACC]\n" if field != "metric_meta" else "") + f"  {field}: {_bomb()}\n")
    start = time.perf_counter()
    with pytest.raises(TaskDefError) as info:
        parse_task_defs(text, "bomb.yml")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert message.startswith("bomb.yml:") and "aliases expand to more than 100,000 values" in message
    assert len(message) < 200 and "\n" not in message


def test_yaml_aliases_of_normal_size_still_work():
    text = ("base: &b\n  task_type: Classification\n  data_format: PremiseOnly\n  n_class: 2\n"
            "  metric_meta: [ACC]\nother: *b\n")
    assert set(parse_task_defs(text, "ok.yml")) == {"base", "other"}


def test_yaml_error_lines_quote_at_most_80_characters_of_a_value():
    big = "x" * 100_000
    text = (f"t:\n  task_type: Classification\n  data_format: PremiseOnly\n  n_class: 2\n  metric_meta: [ACC]\n"
            f"  dropout_p: '{big}'\n")
    with pytest.raises(TaskDefError) as info:
        parse_task_defs(text, "big.yml")
    message = str(info.value)
    assert message.startswith("big.yml:6: task 't', field 'dropout_p': must be a number in [0, 1), got str 'xxx")
    assert len(message) < 80 + 80 and "..." in message
    with pytest.raises(TaskDefError) as info:
        parse_task_defs(f"t:\n  task_type: {big}\n", "big.yml")
    assert len(str(info.value)) < 250


# ------------------------------------------------------------------------------------------- prepro
def test_prepro_refuses_max_seq_len_beyond_the_encoder(tmp_path, capsys):
    import prepro_std as ps
    (tmp_path / "tasks.yml").write_text(TASK_YAML)
    assert ps.main(["--root_dir", str(tmp_path), "--task_def", str(tmp_path / "tasks.yml"),
                    "--max_seq_len", "1000", "--workers", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("prepro_std.py: error: --max_seq_len 1000 is longer than minilm-l6 accepts: its encoder has 512 "
                   "positions; use --max_seq_len 512 or less")


def test_prepro_cleans_its_own_stale_temps(tmp_path):
    import prepro_std as ps
    from data_utils.shards import shard_path
    (tmp_path / "tasks.yml").write_text("cls:\n  task_type: Classification\n  data_format: PremiseOnly\n"
                                        "  labels: [a, b]\n  metric_meta: [ACC]\n  split_names: [train]\n")
    (tmp_path / "cls_train.tsv").write_text("0\ta\tHello there.\n")
    folder = shard_path(tmp_path, "minilm-l6", "cls", "train").parent
    folder.mkdir(parents=True)
    stale = folder / f"{dead_prefix('cls_train.jsonl')}abcd1234.tmp"
    stale.write_text("half a shard")
    live = folder / f"{temp_prefix('cls_dev.jsonl')}live.tmp"
    live.write_text("being written")
    ps.run(ps.PreproConfig(root_dir=str(tmp_path), task_def=str(tmp_path / "tasks.yml"), workers=1),
           log=lambda msg: None)
    assert not stale.exists() and live.exists()


# ------------------------------------------------------------------------------------------- stale temps
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def dead_prefix(name: str) -> str:
    prefix = temp_prefix(name)
    head, _, _ = prefix.rstrip("-").rpartition("-")
    return f"{head}-{dead_pid()}-"


def test_stale_temps_of_dead_writers_are_cleaned_and_others_kept(tmp_path):
    half_written = tmp_path / f"{dead_prefix('step-4')}k3j2.tmp"
    half_written.mkdir()
    (half_written / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / f"{dead_prefix('latest')}abcd.tmp").write_text("step-4")
    parked = tmp_path / old_copy_name("best").replace(temp_prefix("best"), dead_prefix("best"))
    parked.mkdir()
    (parked / "metrics.json").write_text("{}")
    live = tmp_path / f"{temp_prefix('step-6')}zzzz.tmp"  # this process: a live writer
    live.mkdir()
    foreign = [tmp_path / ".step-4.abcdefgh", tmp_path / "notes.tmp", tmp_path / ".cache.tmp"]
    for path in foreign:
        path.mkdir()
    done = clean_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["best", live.name] + [p.name for p in foreign])
    assert (tmp_path / "best" / "metrics.json").is_file()  # a kill between the two renames: previous best back
    assert len(done) == 3 and any(d.startswith("restored best") for d in done)


def test_next_run_cleans_stale_temps_in_its_output_dir(ws):
    out = ws / "temps"
    out.mkdir()
    stale = out / f"{dead_prefix('step-4')}q1w2.tmp"
    stale.mkdir()
    Trainer(config(ws, "temps", train_datasets=["pairs"], test_datasets=["pairs"], epochs=1))
    assert not stale.exists()


# ------------------------------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def interrupted(ws):
    """A run stopped after 3 steps with step-2 and step-3 kept (copied fresh for each test)."""
    run = Trainer(config(ws, "resume-src", train_datasets=["pairs"], test_datasets=["pairs"], epochs=2,
                         save_every_steps=1, keep_last=2))
    run.fit(stop_after_steps=3)
    assert sorted(p.name for p in (ws / "resume-src").glob("step-*")) == ["step-2", "step-3"]
    return ws / "resume-src"


def fresh_copy(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


def resume_argv(ws: Path, out: str, *extra: str) -> list[str]:
    return cli(ws, out, "--epochs", "2", "--save_every_steps", "1", "--keep_last", "2", "--learning_rate",
               "0.002", "--seed", "7", "--resume", *extra)


def test_resume_with_changed_settings_is_refused_listing_them(ws, interrupted, capsys):
    fresh_copy(interrupted, ws / "resume-diff")
    assert train_cli.main(resume_argv(ws, "resume-diff", "--learning_rate", "0.01", "--train_datasets",
                                      "pairs,score", "--test_datasets", "pairs")) == 2
    line = one_line_error(capsys)
    assert "--resume:" in line and "step-3/train_config.json differs in" in line
    assert 'learning_rate (0.002 -> 0.01)' in line and 'train_datasets (["pairs"] -> ["pairs", "score"])' in line
    assert "--allow_config_change" in line
    assert not any("output_dir" in part for part in line.split("differs in")[1:])


def test_resume_with_only_harmless_changes_or_allowed_changes_runs(ws, interrupted, capsys):
    out = fresh_copy(interrupted, ws / "resume-ok")
    assert train_cli.main(resume_argv(ws, "resume-ok", "--log_every", "5", "--num_threads", "1")) == 0
    assert "resumed from" in (out / "train.log").read_text()
    out = fresh_copy(interrupted, ws / "resume-allowed")
    assert train_cli.main(resume_argv(ws, "resume-allowed", "--learning_rate", "0.001",
                                      "--allow_config_change")) == 0
    assert "--allow_config_change: learning_rate (0.002 -> 0.001)" in (out / "train.log").read_text()


@pytest.mark.parametrize("victim,damage", [(ckpt.STATE, "truncate"), (ckpt.STATE, "random"), (ckpt.STATE, "delete"),
                                           (ckpt.WEIGHTS, "truncate"), (ckpt.WEIGHTS, "random"),
                                           (ckpt.WEIGHTS, "delete"), (ckpt.CONFIG, "random")])
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(ws, interrupted, capsys, victim, damage):
    out = fresh_copy(interrupted, ws / "resume-corrupt")
    bad = out / "step-3" / victim
    data = bad.read_bytes()
    if damage == "delete":
        bad.unlink()
    else:
        bad.write_bytes(data[: len(data) // 2] if damage == "truncate" else bytes(range(256)) * 8)
    resumed = Trainer(config(ws, "resume-corrupt", train_datasets=["pairs"], test_datasets=["pairs"], epochs=2,
                             save_every_steps=1, keep_last=2, resume=True))
    resumed.fit(stop_after_steps=1)
    log = (out / "train.log").read_text()
    assert f"--resume: {bad}: " in log
    assert f"falling back to {out / 'step-2'}" in log and resumed.global_step == 3


def test_corrupt_only_checkpoint_is_one_line_naming_the_file(ws, interrupted, capsys):
    out = fresh_copy(interrupted, ws / "resume-corrupt-only")
    shutil.rmtree(out / "step-2")
    bad = out / "step-3" / ckpt.STATE
    bad.write_bytes(bad.read_bytes()[:1000])
    assert train_cli.main(resume_argv(ws, "resume-corrupt-only")) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"train.py: error: {bad}: not a readable training state (")


def test_predict_on_corrupt_weights_or_mismatched_yaml_is_one_line(ws, interrupted, capsys):
    out = fresh_copy(interrupted, ws / "predict-bad")
    folder = out / "step-3"
    yml = ws / "three-class.yml"
    yml.write_text(TASK_YAML.replace("n_class: 2\n  labels: [not, same]\n  metric_meta: [ACC, F1]",
                                     "n_class: 3\n  labels: [not, same, odd]\n  metric_meta: [ACC]"))
    assert predict_cli.main(["--checkpoint", str(folder), "--task", "pairs", "--task_def", str(yml)]) == 2
    line = one_line_error(capsys)
    assert f"{folder / ckpt.WEIGHTS}: heads.pairs.proj.weight has shape [2, 32] there but [3, 32] in this model; " \
           "task 'pairs' has a different number of classes" in line
    (folder / ckpt.WEIGHTS).write_bytes(b"\x00" * 64)
    assert predict_cli.main(["--checkpoint", str(folder), "--task", "pairs"]) == 2
    assert one_line_error(capsys).startswith(f"predict.py: error: {folder / ckpt.WEIGHTS}: not a readable "
                                             "safetensors file")
    (folder / ckpt.CONFIG).write_text("{not json")
    assert predict_cli.main(["--checkpoint", str(folder), "--task", "pairs"]) == 2
    assert one_line_error(capsys).startswith(f"predict.py: error: {folder / ckpt.CONFIG}: not valid JSON")


# ------------------------------------------------------------------------------------------- setup errors
def test_failed_setup_leaves_no_new_output_dir_but_keeps_an_existing_one(ws, capsys):
    assert train_cli.main(cli(ws, "never/started", "--train_datasets", "nli")) == 2
    assert "nli" in one_line_error(capsys) and not (ws / "never").exists()
    existing = ws / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert train_cli.main(cli(ws, "existing", "--train_datasets", "nli")) == 2
    capsys.readouterr()
    assert (existing / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]  # no empty train.log left behind either


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(ws, capsys):
    assert train_cli.main(cli(ws, "no-cuda", "--device", "cuda")) == 2
    assert "--device cuda: CUDA is not available here" in one_line_error(capsys)
    assert not (ws / "no-cuda").exists()


def test_unwritable_output_dir(ws, capsys):
    blocker = ws / "a-file"
    blocker.write_text("not a folder")
    assert train_cli.main(cli(ws, "a-file/run")) == 2
    assert f"--output_dir {blocker / 'run'}: cannot write there" in one_line_error(capsys)


def test_bad_init_checkpoint_lists_registry_and_says_hub_unreachable(ws, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    missing = ws / "no-such-model"
    assert train_cli.main(cli(ws, "bad-init", "--init_checkpoint", str(missing))) == 2
    names = ", ".join(pretrained_models.ENCODERS)
    assert "minilm-l6, bert-base-uncased" in names
    assert one_line_error(capsys) == f"train.py: error: --init_checkpoint {missing}: no such folder (registry names: " \
                                     f"{names})"
    assert train_cli.main(cli(ws, "bad-init", "--init_checkpoint", "bert-tiny-nonexistent")) == 2
    line = one_line_error(capsys)
    assert f"--init_checkpoint bert-tiny-nonexistent: not a registry name ({names}) nor a local folder" in line
    assert "the Hugging Face hub is unreachable from here" in line
    assert not (ws / "bad-init").exists()


def test_fp16_on_cpu_is_refused(ws, capsys):
    assert train_cli.main(cli(ws, "fp16-cpu", "--fp16", "--device", "cpu")) == 2
    assert one_line_error(capsys) == ("train.py: error: --fp16: float16 autocast is for CUDA; on cpu use --bf16 or "
                                      "fp32 (no flag)")


def test_untrained_test_dataset_is_refused(ws, capsys):
    assert train_cli.main(cli(ws, "untrained", "--test_datasets", "pairs,score")) == 2
    assert "--test_datasets: score not in --train_datasets; its head would be untrained" in one_line_error(capsys)


def test_log_and_metrics_links_planted_in_the_output_dir_are_refused(ws, capsys):
    """As root, a train.log or metrics.jsonl symlink made every run append to the file it points to."""
    victim = ws / "victim.txt"
    victim.write_text("precious\n")
    out = ws / "planted"
    out.mkdir()
    (out / "train.log").symlink_to(victim)
    assert train_cli.main(cli(ws, "planted", "--resume")) == 2
    assert one_line_error(capsys) == (f"train.py: error: --output_dir: {out / 'train.log'}: is a symbolic link; "
                                      "output is never written through a link (remove it)")
    (out / "train.log").unlink()
    assert train_cli.main(cli(ws, "planted", "--max_steps", "1", "--save_every_steps", "1")) == 0
    capsys.readouterr()
    (out / "metrics.jsonl").unlink(missing_ok=True)
    (out / "metrics.jsonl").symlink_to(victim)  # beside a checkpoint that --resume continues
    assert train_cli.main(cli(ws, "planted", "--resume", "--max_steps", "1", "--save_every_steps", "1")) == 2
    assert one_line_error(capsys) == (f"train.py: error: {out / 'metrics.jsonl'}: is a symbolic link; output is "
                                      "never written through a link (remove it)")
    link = ws / "log-link.txt"
    link.symlink_to(victim)
    assert train_cli.main(cli(ws, "planted-2", "--log_file", str(link))) == 2
    assert one_line_error(capsys).startswith(f"train.py: error: --log_file: {link}: is a symbolic link")
    assert victim.read_text() == "precious\n"


def test_a_folder_as_log_file_or_task_def_is_one_line(ws, capsys):
    assert train_cli.main(cli(ws, "log-folder", "--log_file", str(ws))) == 2
    assert one_line_error(capsys) == f"train.py: error: --log_file {ws}: is a folder; name a file"
    assert train_cli.main(cli(ws, "task-folder", "--task_def", str(ws))) == 2
    assert one_line_error(capsys) == f"train.py: error: {ws}: is a folder, not a task definition file"
    assert not (ws / "log-folder").exists() and not (ws / "task-folder").exists()


def test_fsdp_without_torchrun_is_refused(ws, capsys):
    """It trained unsharded without a word."""
    assert train_cli.main(cli(ws, "fsdp-alone", "--fsdp")) == 2
    assert one_line_error(capsys) == ("train.py: error: --fsdp: shards the model across the processes torchrun "
                                      "starts, and this run is a single process; launch it with torchrun "
                                      "--nproc_per_node N (N >= 2), or drop --fsdp")
    assert not (ws / "fsdp-alone").exists()


def test_a_one_row_regression_dev_set_is_refused_before_training(ws, capsys):
    """scipy's bare 'x and y must have length at least 2' came after a whole epoch."""
    folder = ws / "one-row"
    shutil.copytree(ws / "shards", folder)
    first = (folder / "score_dev.jsonl").read_text().splitlines()[0]
    (folder / "score_dev.jsonl").write_text(first + "\n")
    args = cli(ws, "one-row-run", "--train_datasets", "score", data_dir=folder)
    assert train_cli.main(args) == 2
    assert one_line_error(capsys) == (f"train.py: error: {folder / 'score_dev.jsonl'}: 1 labelled row(s), but metric "
                                      "Pearson of task score needs at least 2")
    assert not (ws / "one-row-run").exists()
    assert train_cli.main(cli(ws, "one-row-run", "--train_datasets", "score", "--max_eval_samples", "1")) == 2
    assert one_line_error(capsys).endswith("score_dev.jsonl (--max_eval_samples 1): 1 labelled row(s), but metric "
                                           "Pearson of task score needs at least 2")


def test_a_five_thousand_digit_label_names_its_file_and_line(ws, capsys):
    folder = ws / "long-label"
    shutil.copytree(ws / "shards", folder)
    lines = (folder / "pairs_dev.jsonl").read_text().splitlines()
    lines[1] = re.sub(r'"label": \d+', '"label": ' + "1" * 5000, lines[1])
    (folder / "pairs_dev.jsonl").write_text("\n".join(lines) + "\n")
    assert train_cli.main(cli(ws, "long-label-run", data_dir=folder)) == 2
    assert one_line_error(capsys) == (f"train.py: error: {folder / 'pairs_dev.jsonl'}:2: not valid JSON (an integer "
                                      "of more than 4300 digits)")


def test_damaged_encoder_weights_and_xlnet_folders_are_one_line(ws, capsys):
    """A corrupt pytorch_model.bin gave a 40-line UnpicklingError; XLNet 'has -1 positions'."""
    from transformers import XLNetConfig
    for name, data in (("pytorch_model.bin", b"\x80\x02not a pickle at all" * 10), ("model.safetensors", b"\xff" * 64)):
        folder = ws / f"damaged-{name}"
        folder.mkdir()
        shutil.copy(ws / "tiny-bert" / "config.json", folder / "config.json")
        (folder / name).write_bytes(data)
        assert train_cli.main(cli(ws, "damaged-run", "--init_checkpoint", str(folder))) == 2
        line = one_line_error(capsys)
        assert line.startswith(f"train.py: error: --init_checkpoint {folder}: cannot load the encoder weights from "
                               f"{folder / name} (")
        assert ("UnpicklingError" if name.endswith(".bin") else "SafetensorError") in line
    xlnet = ws / "xlnet"
    AutoModel.from_config(XLNetConfig(vocab_size=128, d_model=32, n_layer=1, n_head=2, d_inner=64)).save_pretrained(xlnet)
    assert train_cli.main(cli(ws, "xlnet-run", "--init_checkpoint", str(xlnet))) == 2
    assert one_line_error(capsys) == (f"train.py: error: --init_checkpoint {xlnet}: xlnet encoders summarise a "
                                      "sequence in its last token, and this project's heads read the first ([CLS]) "
                                      "token; not supported here")
    assert not (ws / "damaged-run").exists() and not (ws / "xlnet-run").exists()


def test_a_full_disk_while_saving_is_one_line_and_leaves_nothing_half_written(ws, capsys, monkeypatch):
    from safetensors import SafetensorError
    from mt_dnn import checkpoint as ckpt_module

    def disk_full(*_args, **_kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ckpt_module, "save_model", disk_full)
    out = ws / "disk-full"
    assert train_cli.main(cli(ws, "disk-full")) == 2
    assert one_line_error(capsys) == (f"train.py: error: {out / 'best'}: cannot write (No space left on device); "
                                      "nothing half-written was left")
    assert not [p.name for p in out.iterdir() if "sage-tmp" in p.name or p.name in ("best", "latest")]


@pytest.mark.subprocess
def test_a_file_size_limit_in_a_real_run_is_one_line(ws, tmp_path):
    """RLIMIT_FSIZE makes every write past 60 kB fail with EFBIG, as a full disk fails them: the 100 kB weights
    file cannot be written, and the run says so in one line with no temp folder left."""
    import resource
    import signal

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))

    out = tmp_path / "limited"
    args = cli(ws, "unused", "--output_dir", str(out), "--num_threads", "1")
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=Path(__file__).resolve().parents[1],
                          preexec_fn=limit, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = re.findall(r"train\.py: error: [^\r\n]*", proc.stderr)
    assert errors == [f"train.py: error: {out / 'best'}: cannot write (File too large); nothing half-written was "
                      "left"], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".") or p.name == "best") == []


# ------------------------------------------------------------------------------------------- catalogue
def test_catalogue_names_existing_tests():
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "reliability.md").read_text(encoding="utf-8")
    refs = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", text)
    assert len(refs) > 40
    for path, name in refs:
        assert (root / path).is_file(), path
        if name:
            assert re.search(rf"^def {name}\(", (root / path).read_text(encoding="utf-8"), re.M), f"{path}::{name}"
    assert "docs/reliability.md" in (root / "README.md").read_text(encoding="utf-8")


def test_readers_of_metrics_jsonl_take_null_as_nan(tmp_path):
    import math
    from experiments.sweep.results import read_metrics
    path = tmp_path / "metrics.jsonl"
    record = {"epoch": 0, "step": 3, "dev": {"stsb_dev": {"Pearson": float("nan"), "Spearman": 1.0}},
              "glue_average": float("nan")}
    path.write_text(jsonsafe.dumps(record) + "\n")
    strict_json_loads(path.read_text())
    (back,) = read_metrics(path)
    assert math.isnan(back["score"]) and math.isnan(back["dev"]["stsb_dev"]["Pearson"])
    assert back["dev"]["stsb_dev"]["Spearman"] == 1.0


def test_untagged_temps_of_earlier_versions_are_cleaned_once_untouched_for_an_hour(tmp_path):
    old = time.time() - 2 * 3600
    names = [".step-4.k3j2x9_a", ".latest.abcd1234.tmp", ".rte_dev_scores_0.json.q1w2e3r4.tmp",
             ".rte_train.jsonl.zzzzzzzz.tmp", ".best.old"]
    for name in names:
        path = tmp_path / name
        if name.endswith(".tmp"):
            path.write_text("half")
        else:
            path.mkdir()
            (path / "model.safetensors").write_bytes(b"x")
            os.utime(path / "model.safetensors", (old, old))
        os.utime(path, (old, old))
    fresh = tmp_path / ".step-6.abcdefgh"  # possibly still being written by an older version: kept
    fresh.mkdir()
    other = tmp_path / ".notes.abcdefgh.tmp"  # not a name this project writes: kept
    other.write_text("x")
    os.utime(other, (old, old))
    clean_stale_temps(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["best", fresh.name, other.name])


def test_divergence_with_sensitivity_logging_writes_no_nan_record(ws, capsys):
    out = ws / "diverge-tracked"
    assert train_cli.main(cli(ws, "diverge-tracked", "--learning_rate", "1e6", "--max_steps", "4",
                              "--log_sensitivity_every", "1", "--log_every", "0")) == 2
    assert "training diverged" in one_line_error(capsys)
    for line in (out / "sensitivity.jsonl").read_text().splitlines():
        strict_json_loads(line)


def test_encoder_limits_of_other_encoder_families():
    from transformers import DebertaV2Config, RobertaConfig
    roberta = encoder_limits(RobertaConfig(vocab_size=50265, max_position_embeddings=514, pad_token_id=1,
                                           type_vocab_size=1), "roberta-base")
    assert (roberta.vocab_size, roberta.type_vocab_size, roberta.max_positions) == (50265, 1, 512)
    deberta = encoder_limits(DebertaV2Config(vocab_size=128100, type_vocab_size=0, max_position_embeddings=512),
                             "deberta-v3-base")
    assert deberta.type_vocab_size is None and deberta.max_positions == 512  # its type ids are not embedded
    from data_utils.shard_checks import check_encoder_fit
    check_encoder_fit(Path("x.jsonl"), [[1, 5, 2]], [[0, 1, 1]], [3], deberta, False, 512)
    with pytest.raises(ShardError, match=r"x\.jsonl:1: type id 1 is outside 0\.\.0"):
        check_encoder_fit(Path("x.jsonl"), [[0, 5, 2]], [[0, 1, 1]], [3], roberta, False, 512)

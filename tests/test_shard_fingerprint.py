"""Shard fingerprints: a run records the size and CRC-32 of every shard it reads, and ``--resume`` refuses a shard
whose bytes changed since the checkpoint (another task's rows under this task's name), in one line naming it.

The same bytes (touched, so the shard cache rebuilds) resume exactly; ``--allow_config_change`` goes on and logs
the change; a checkpoint written before fingerprints were recorded resumes as before.
"""
from __future__ import annotations

import os
import re
import shutil
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

import train as train_cli
from conftest import tiny_bert_config
from data_utils import shard_cache, shard_fingerprint
from data_utils.task_def import load_task_defs
from mt_dnn import checkpoint as ckpt
from mt_dnn.batcher import load_split
from mt_dnn.config import parse_args
from mt_dnn.trainer import Trainer
from workspace import TASK_YAML, write_shards


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("fingerprint")
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config()).save_pretrained(root / "tiny-bert")
    (root / "tasks.yml").write_text(TASK_YAML, encoding="utf-8")
    write_shards(root / "shards", sizes=(32, 16, 16))
    write_shards(root / "other", sizes=(40, 16, 16), seed=1)  # "MRPC rows": other data under the same names
    return root


def argv(ws: Path, out: str, data: str, *extra: str) -> list[str]:
    return ["--train_datasets", "pairs", "--test_datasets", "pairs", "--task_def", str(ws / "tasks.yml"),
            "--data_dir", str(ws / data), "--init_checkpoint", str(ws / "tiny-bert"), "--output_dir",
            str(ws / out), "--no_tensorboard", "--batch_size", "8", "--max_seq_len", "64", "--optim_impl",
            "foreach", "--log_every", "2", "--epochs", "2", "--save_every_steps", "1", "--keep_last", "2",
            "--seed", "7", *extra]


def interrupted(ws: Path, out: str) -> Path:
    """A run on its own copy of the shards, stopped after 3 of its 8 steps (step-3 kept), as a kill would."""
    data = ws / f"{out}-shards"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(ws / "shards", data)
    Trainer(parse_args(argv(ws, out, data.name))).fit(stop_after_steps=3)
    assert (ws / out / "step-3").is_dir()
    return data


def record(path: Path) -> tuple[int, str]:
    """(size, CRC-32 as 8 hex digits) computed here, independently of the project's code."""
    data = path.read_bytes()
    return len(data), f"{zlib.crc32(data):08x}"


def one_line_error(capsys) -> str:
    errors = re.findall(r"train\.py: error: [^\r\n]*", capsys.readouterr().err)
    assert len(errors) == 1, errors
    return errors[0]


# ---------------------------------------------------------------------------------------------- the record
def test_loading_a_split_records_the_caches_key_without_hashing_again(ws, monkeypatch):
    td = load_task_defs(ws / "tasks.yml")["pairs"]
    path = ws / "shards" / "pairs_train.jsonl"
    size, crc = record(path)
    calls = []
    real = shard_cache._crc_file
    monkeypatch.setattr(shard_cache, "_crc_file", lambda p, start=0: calls.append((Path(p).name, start)) or
                        real(p, start))
    load_split(ws / "shards", td, "train", 64)  # builds the cache (a build hashes the shard again, to see it
    for cache in (True, False):                  # did not change meanwhile); later loads hash it once
        calls.clear()
        data = load_split(ws / "shards", td, "train", 64, limit=5, cache=cache)
        assert data.fingerprint == {"file": str(path), "size": size, "crc32": int(crc, 16)}  # the whole file's
        assert calls.count(("pairs_train.jsonl", 0)) == 1  # the shard itself is read for its CRC once
    header_key = shard_cache.open_cache(shard_cache.cache_path(path), shard_cache.shard_key(path)).header["key"]
    assert (header_key["size"], header_key["crc32"]) == (size, int(crc, 16))


def test_changes_name_each_changed_missing_or_new_shard():
    saved = {"a_train": {"file": "d/a_train.jsonl", "size": 10, "crc32": 0xABC},
             "a_dev": {"file": "d/a_dev.jsonl", "size": 5, "crc32": 1},
             "a_test": {"file": "d/a_test.jsonl", "size": 5, "crc32": 2}}
    now = {"a_train": {"file": "e/a_train.jsonl", "size": 10, "crc32": 0xABC},  # moved, same bytes: the same data
           "a_dev": {"file": "d/a_dev.jsonl", "size": 5, "crc32": 3},
           "b_dev": {"file": "d/b_dev.jsonl", "size": 1, "crc32": 4}}
    assert shard_fingerprint.changes(saved, saved) == []
    assert shard_fingerprint.changes(saved, now) == [
        "d/a_dev.jsonl (5 bytes, CRC-32 00000001 then, 5 bytes, CRC-32 00000003 now)",
        "d/a_test.jsonl (read then, not now)", "d/b_dev.jsonl (read now, not then)"]
    assert shard_fingerprint.difference("s.pt", None, now) is None  # a state written before the record existed
    assert shard_fingerprint.difference("s.pt", saved, now).startswith("s.pt was written reading other data: d/a_dev")
    with pytest.raises(ValueError, match=r"^s\.pt: its record of the shards read is malformed"):
        shard_fingerprint.difference("s.pt", {"a_train": {"file": "x", "size": "10", "crc32": 1}}, now)


def test_the_training_state_records_every_shard_the_run_reads(ws):
    data = interrupted(ws, "recorded")
    state = ckpt.load_training_state(ws / "recorded" / "step-3")
    expected = {}
    for split in ("train", "dev", "test"):
        size, crc = record(data / f"pairs_{split}.jsonl")
        expected[f"pairs_{split}"] = {"file": str(data / f"pairs_{split}.jsonl"), "size": size, "crc32": int(crc, 16)}
    assert state["shards"] == expected


# ---------------------------------------------------------------------------------------------- --resume
@pytest.mark.parametrize("split", ["train", "dev"])
def test_resume_refuses_a_replaced_shard_naming_it(ws, capsys, split):
    out = f"replaced-{split}"
    data = interrupted(ws, out)
    shard = data / f"pairs_{split}.jsonl"
    then = record(shard)
    shutil.copyfile(ws / "other" / f"pairs_{split}.jsonl", shard)
    now = record(shard)
    assert then != now
    capsys.readouterr()
    assert train_cli.main(argv(ws, out, data.name, "--resume")) == 2
    state = ws / out / "step-3" / ckpt.STATE
    assert one_line_error(capsys) == (
        f"train.py: error: --resume: {state} was written reading other data: {shard} ({then[0]} bytes, CRC-32 "
        f"{then[1]} then, {now[0]} bytes, CRC-32 {now[1]} now); resume with the same data, or pass "
        "--allow_config_change")


def test_resume_refuses_a_same_size_edit(ws, capsys):
    data = interrupted(ws, "same-size")
    shard = data / "pairs_train.jsonl"
    text = shard.read_text()
    label = '"label": 0' if '"label": 0' in text else '"label":0'
    assert label in text
    stat = shard.stat()
    shard.write_text(text.replace(label, label[:-1] + "1", 1))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime: only the bytes differ
    capsys.readouterr()
    assert train_cli.main(argv(ws, "same-size", data.name, "--resume")) == 2
    assert f"was written reading other data: {shard} (" in one_line_error(capsys)


def _finish(ws: Path, out: str, data: str, *extra: str) -> dict:
    """--resume to the end of the 2 epochs; the final weights."""
    assert train_cli.main(argv(ws, out, data, "--resume", *extra)) == 0
    return load_file(str(ckpt.step_checkpoints(ws / out)[0] / ckpt.WEIGHTS))


def test_the_same_bytes_resume_exactly(ws):
    assert train_cli.main(argv(ws, "full", "shards")) == 0
    assert ckpt.step_checkpoints(ws / "full")[0].name == "step-8"
    full = load_file(str(ws / "full" / "step-8" / ckpt.WEIGHTS))
    data = interrupted(ws, "touched")
    for shard in data.glob("*.jsonl"):  # new mtimes: the shard cache rebuilds, the fingerprint stays
        os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10 ** 9))
    resumed = _finish(ws, "touched", data.name)
    assert resumed.keys() == full.keys() and all(torch.equal(resumed[k], full[k]) for k in full)
    assert "was written reading other data" not in (ws / "touched" / "train.log").read_text()


def test_allow_config_change_goes_on_with_a_replaced_shard_and_logs_it(ws):
    data = interrupted(ws, "allowed")
    shard = data / "pairs_train.jsonl"
    shutil.copyfile(ws / "other" / "pairs_train.jsonl", shard)
    _finish(ws, "allowed", data.name, "--allow_config_change")
    log = (ws / "allowed" / "train.log").read_text()
    state = ws / "allowed" / "step-3" / ckpt.STATE
    assert f"--resume with --allow_config_change: {state} was written reading other data: {shard} (" in log
    assert "resumed from" in log
    size, crc = record(shard)  # the checkpoints from there on record the data this run read
    assert ckpt.load_training_state(ckpt.step_checkpoints(ws / "allowed")[0])["shards"]["pairs_train"]["crc32"] == int(crc, 16)


def test_checkpoint_without_fingerprints_resumes_as_before(ws):
    data = interrupted(ws, "older")
    path = ws / "older" / "step-3" / ckpt.STATE
    state = torch.load(path, weights_only=True)
    del state["shards"]
    torch.save(state, path)
    shutil.copyfile(ws / "other" / "pairs_dev.jsonl", data / "pairs_dev.jsonl")
    _finish(ws, "older", data.name)
    log = (ws / "older" / "train.log").read_text()
    assert "resumed from" in log and "was written reading other data" not in log

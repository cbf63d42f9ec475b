"""calc_metrics.py with MT-DNN's command line (``--task_def --task --std_input --score``): the metrics of a score
file against its canonical TSV equal predict.py's for the same run, for every row task type."""
from __future__ import annotations

import ast
import json

import pytest

import calc_metrics as calc_cli
import predict as predict_cli
from tool_runs import TASKS, trained_run, write_canonical


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return trained_run(tmp_path_factory, "calc_metrics")


def _calc(ws, task: str, score, capsys) -> tuple[int, str, str]:
    code = calc_cli.main(["--task_def", str(ws / "tasks.yml"), "--task", task, "--std_input",
                          str(write_canonical(ws, task)), "--score", str(score)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("task", TASKS)
def test_metrics_equal_predict_pys_for_the_same_run(ws, task, capsys):
    assert predict_cli.main(["--checkpoint", str(ws / "run" / "best"), "--task", task, "--task_def",
                             str(ws / "tasks.yml"), "--task_id", str(TASKS.index(task)), "--prep_input",
                             str(ws / "shards" / f"{task}_dev.jsonl"), "--with_label", "--score",
                             str(ws / f"{task}_scores.json")]) == 0
    predicted = ast.literal_eval(capsys.readouterr().out.strip())
    code, out, err = _calc(ws, task, ws / f"{task}_scores.json", capsys)
    assert (code, err) == (0, "")
    assert ast.literal_eval(out.strip()) == predicted and set(predicted) == set(
        json.loads((ws / "run" / f"{task}_dev_scores_0.json").read_text())["metrics"])
    code, out, _ = _calc(ws, task, ws / "run" / f"{task}_dev_scores_0.json", capsys)  # train.py's file too
    assert code == 0 and ast.literal_eval(out.strip()) == predicted


def test_rows_are_matched_by_uid_not_position(ws, capsys):
    src = json.loads((ws / "run" / "tri_dev_scores_0.json").read_text())
    n = len(src["uids"])
    order = list(reversed(range(n)))
    flipped = {"metrics": {}, "uids": [src["uids"][i] for i in order],
               "predictions": [src["predictions"][i] for i in order],
               "scores": [v for i in order for v in src["scores"][3 * i:3 * i + 3]]}
    (ws / "flipped.json").write_text(json.dumps(flipped), encoding="utf-8")
    _, out, _ = _calc(ws, "tri", ws / "flipped.json", capsys)
    _, same, _ = _calc(ws, "tri", ws / "run" / "tri_dev_scores_0.json", capsys)
    assert ast.literal_eval(out.strip()) == ast.literal_eval(same.strip())


def test_other_rows_or_another_layout_are_one_line(ws, capsys):
    src = json.loads((ws / "run" / "tri_dev_scores_0.json").read_text())
    short = dict(src, uids=src["uids"][1:], predictions=src["predictions"][1:], scores=src["scores"][3:])
    (ws / "short.json").write_text(json.dumps(short), encoding="utf-8")
    code, out, err = _calc(ws, "tri", ws / "short.json", capsys)
    tsv = ws / "canonical" / "tri_dev.tsv"
    assert (code, out) == (2, "")
    assert err == (f"calc_metrics.py: error: --std_input {tsv}: 1 of its uids are not in {ws / 'short.json'} "
                   f"(first: t0); the two files must hold the same rows\n")
    code, _, err = _calc(ws, "pairs", ws / "run" / "tri_dev_scores_0.json", capsys)
    assert code == 2 and err == (f"calc_metrics.py: error: {ws / 'run' / 'tri_dev_scores_0.json'}: 'scores' holds "
                                 f"72 values for 24 rows; a task with n_class 2 needs 48\n")


def test_a_test_split_is_refused_not_scored_against_its_placeholder_labels(ws, capsys):
    tsv = write_canonical(ws, "tri", "test")  # GLUE-style test rows: their labels are placeholders
    code, out, err = calc_cli.main(["--task_def", str(ws / "tasks.yml"), "--task", "tri", "--std_input", str(tsv),
                                    "--score", str(ws / "run" / "tri_test_scores_0.json")]), *capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == (f"calc_metrics.py: error: --std_input {tsv}: a test split (its labels are placeholders); "
                   "score a dev split\n")

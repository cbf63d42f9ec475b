"""prepare_distillation_data.py with MT-DNN's command line (``--task_def --task --std_input --score --std_output
[--add_soft_label]``): the canonical TSV with each row's label replaced by (or followed by) its probability of
class 1 from a score file in MT-DNN's layout; what MT-DNN's version would write wrongly is refused. This project's
own ``--runs`` mode is covered in tests/test_objectives.py."""
from __future__ import annotations

import json

import pytest

import predict as predict_cli
import prepare_distillation_data as distill
from tool_runs import trained_run, write_canonical


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = trained_run(tmp_path_factory, "distill_tsv")
    assert predict_cli.main(["--checkpoint", str(root / "run" / "best"), "--task", "pairs", "--task_def",
                             str(root / "tasks.yml"), "--task_id", "0", "--prep_input",
                             str(root / "shards" / "pairs_dev.jsonl"), "--score", str(root / "pairs_scores.json")]) == 0
    return root


def _args(ws, out: str, task: str = "pairs") -> list[str]:
    return ["--task_def", str(ws / "tasks.yml"), "--task", task, "--std_input", str(write_canonical(ws, task)),
            "--score", str(ws / "pairs_scores.json"), "--std_output", str(ws / out)]


def _expected(ws, add: bool) -> list[str]:
    """Each TSV row with P(class 1) of its uid, read from the score file by hand (two values per row)."""
    scores = json.loads((ws / "pairs_scores.json").read_text())
    p1 = {uid: scores["scores"][2 * i + 1] for i, uid in enumerate(scores["uids"])}
    rows = []
    for line in (ws / "canonical" / "pairs_dev.tsv").read_text().splitlines():
        uid, label, *texts = line.split("\t")
        rows.append("\t".join([uid, label, str(p1[uid]), *texts] if add else [uid, str(p1[uid]), *texts]))
    return rows


@pytest.mark.parametrize("add", [False, True])
def test_mtdnn_command_line_writes_the_probability_of_class_1(ws, add, capsys):
    out = f"soft_{add}.tsv"
    assert distill.main(_args(ws, out) + (["--add_soft_label"] if add else [])) == 0
    assert capsys.readouterr().out == f"{ws / out}\n"
    assert (ws / out).read_text().splitlines() == _expected(ws, add)
    assert len(_expected(ws, add)) == 24 and all(0 < float(r.split("\t")[2 if add else 1]) < 1
                                                 for r in _expected(ws, add))


@pytest.mark.parametrize("args,message", [
    (lambda ws: _args(ws, "x.tsv", "tri"),
     "--task tri: MT-DNN's prepare_distillation_data.py writes the probability of class 1 only, a soft target for "
     "2-class Classification; this is a 3-class Classification task (--runs writes every class's soft targets)"),
    (lambda ws: _args(ws, "x.tsv", "score"),
     "--task score: MT-DNN's prepare_distillation_data.py writes the probability of class 1 only, a soft target for "
     "2-class Classification; this is a 1-class Regression task (--runs writes every class's soft targets)"),
    (lambda ws: _args(ws, "x.tsv") + ["--runs", str(ws / "run")],
     "--task: MT-DNN's flags (--task, --std_input, --score, --std_output) and --runs, --tasks, --data_dir, "
     "--output_dir are two ways to run; give one"),
    (lambda ws: _args(ws, "x.tsv")[:-2], "the following arguments are required: --std_output"),
    (lambda ws: _args(ws, "x.tsv")[:-2] + ["--std_output", str(ws / "pairs_scores.json")],
     "--std_output {ws}/pairs_scores.json: that is an input file"),
])
def test_what_it_cannot_honour_is_one_line(ws, args, message, capsys):
    assert distill.main(args(ws)) == 2
    assert capsys.readouterr().err == f"prepare_distillation_data.py: error: {message.format(ws=ws)}\n"
    assert not (ws / "x.tsv").exists()


def test_a_row_the_score_file_lacks_is_named_by_line(ws, capsys):
    args = _args(ws, "x.tsv")
    tsv = ws / "canonical" / "pairs_dev_extra.tsv"
    tsv.write_text(write_canonical(ws, "pairs").read_text() + "extra\tsame\tp\th\n", encoding="utf-8")
    args[args.index("--std_input") + 1] = str(tsv)
    assert distill.main(args) == 2
    assert capsys.readouterr().err == (f"prepare_distillation_data.py: error: {tsv}:25: uid 'extra' is not in "
                                       f"{ws / 'pairs_scores.json'}\n")
    assert not (ws / "x.tsv").exists()


def test_a_score_file_of_other_rows_is_refused_not_matched_by_uid(ws, capsys):
    args = _args(ws, "x.tsv")
    tsv = ws / "canonical" / "pairs_dev_head.tsv"  # fewer rows than scored: the scores of another split, by uid
    tsv.write_text("".join(write_canonical(ws, "pairs").read_text().splitlines(keepends=True)[:20]), encoding="utf-8")
    args[args.index("--std_input") + 1] = str(tsv)
    uids = json.loads((ws / "pairs_scores.json").read_text())["uids"]
    assert distill.main(args) == 2
    assert capsys.readouterr().err == (f"prepare_distillation_data.py: error: {ws / 'pairs_scores.json'} holds 4 "
                                       f"uids {tsv} lacks (first: {sorted(uids[20:])[0]}); the two files must hold "
                                       "the same rows\n")
    assert not (ws / "x.tsv").exists()

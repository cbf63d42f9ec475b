"""A sweep's committed runs CSV read back (experiments/sweep/results.py): after the run folders are deleted the
report is rebuilt from it (every number and file alike, the markdown saying so), a finished folder wins over its
row, `sweep.py run --skip_recorded` does not train a recorded run again and `status` lists it, a row recorded
with other train.py flags than the spec's is refused, and every bad row is a one-line error naming the file and
line."""
from __future__ import annotations

import csv
import json
import math
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

import sweep as sweep_cli
from experiments.sweep import report, runner
from experiments.sweep.results import collect, ledger_path, read_ledger
from experiments.sweep.spec import load_spec, train_argv
from test_sweep import GOOD

DEV = {"rte": ("rte_dev", ("ACC",)), "mrpc": ("mrpc_dev", ("ACC", "F1"))}


def _score(run, epoch: int) -> float:
    """Epoch 1 is the best, epoch 0 the worst: the middle epoch is neither best nor last."""
    return 50.0 + 10 * run.learning_rate * 1e3 + run.seed + {0: -3.0, 1: 2.5, 2: 1.0}[epoch] + run.beta3 / 7


def finish(spec, run, shift: float = 0.0, nan: bool = False) -> None:
    """A finished run folder as the runner leaves it: metrics.jsonl (3 epochs) and the done marker."""
    folder = runner.run_dir(spec, run)
    folder.mkdir(parents=True, exist_ok=True)
    ds, names = DEV[run.task]
    lines = []
    for epoch in range(3):
        value = _score(run, epoch) + shift
        metrics = {m: (None if nan and m == names[-1] else value + i) for i, m in enumerate(names)}
        lines.append(json.dumps({"epoch": epoch, "dev": {ds: metrics}, "glue_average": value}))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    runner.write_run_info(spec, run)
    (folder / runner.DONE).write_text(json.dumps({"seconds": 100.0 + run.seed / 10}), encoding="utf-8")


@pytest.fixture
def finished(tmp_path):
    """The test spec (24 runs) with seeds 1 and 2 finished (16 runs, one with a NaN F1) and reported."""
    path = tmp_path / "demo.yml"
    path.write_text(GOOD.replace("/tmp/nowhere/runs", str(tmp_path / "runs"))
                    + f"results_dir: {tmp_path / 'results'}\n", encoding="utf-8")
    spec = load_spec(path)
    done = [run for run in spec.runs() if run.seed in (1, 2)]
    for i, run in enumerate(done):
        finish(spec, run, nan=i == 5 and run.task == "mrpc")
    report.write_report(spec)
    return path, spec, done


def _files(spec) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(spec.results_dir.iterdir())}


def test_report_is_rebuilt_from_the_csv_after_the_folders_are_deleted(finished):
    _, spec, done = finished
    before, files = collect(spec), _files(spec)
    assert len(before) == 16 and len(files) == 4
    assert any(math.isnan(v) for r in before for ms in r.best_metrics.values() for v in ms.values())
    shutil.rmtree(spec.runs_dir)
    after = collect(spec)
    assert all(r.recorded for r in after) and not any(r.recorded for r in before)
    assert repr([replace(r, recorded=False) for r in after]) == repr(before)  # repr: NaN != NaN, prints alike
    recorded = read_ledger(spec)[done[0].run_id]
    assert (recorded.epochs, recorded.best_epoch, recorded.seconds) == (3, 1, 100.1)
    assert recorded.best_score == _score(done[0], 1) and recorded.last_score == _score(done[0], 2)
    assert recorded.best_metrics == {"rte_dev": {"ACC": _score(done[0], 1)}}
    report.write_report(spec)
    rebuilt = _files(spec)
    said = " (16 read back from demo_runs.csv: their run folders are gone)"
    assert rebuilt.pop("demo.md").decode() == files.pop("demo.md").decode().replace("runs finished", "runs finished"
                                                                                      + said, 1)
    assert rebuilt == files


def test_each_row_records_the_fingerprint_of_the_flags_its_run_was_started_with(finished):
    _, spec, done = finished
    rows = {row["run_id"]: row for row in csv.DictReader(ledger_path(spec).open(encoding="utf-8"))}
    assert list(next(iter(rows.values())))[-2:] == ["flags", "run_dir"]
    for run in done:
        argv = json.loads((runner.run_dir(spec, run) / runner.RUN_INFO).read_text(encoding="utf-8"))["train_argv"]
        assert argv == train_argv(spec, run, runner.run_dir(spec, run))
        assert rows[run.run_id]["flags"] == runner.flags_digest(argv)
        assert len(rows[run.run_id]["flags"]) == 16
    assert len({row["flags"] for row in rows.values()}) == 16  # the grid's values are flags too
    other = train_argv(spec, done[0], runner.run_dir(spec, done[0]))
    other[other.index("--epochs") + 1] = "3"
    assert runner.flags_digest(other) != rows[done[0].run_id]["flags"]


def test_a_row_recorded_with_other_flags_is_refused_and_one_without_any_is_taken(finished, capsys):
    path, spec, done = finished
    shutil.rmtree(spec.runs_dir)
    path.write_text(path.read_text().replace("epochs: 2", "epochs: 3"), encoding="utf-8")  # same runs_dir
    changed = load_spec(path)
    message = (f"{ledger_path(spec)}:2: run {done[0].run_id} was recorded with other train.py flags than the spec "
               "gives it now; delete the row or use another runs_dir")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        collect(changed)
    for command in ("report", "status"):
        assert sweep_cli.main([command, str(path)]) == 2
        assert capsys.readouterr().err.strip() == f"sweep.py: error: {message}"
    rows = list(csv.DictReader(ledger_path(spec).open(encoding="utf-8")))
    for row in rows:
        row["flags"] = ""  # as written before fingerprints were kept: taken as it is, and written back empty
    _write_rows(spec, rows)
    assert len(collect(changed)) == 16
    report.write_report(changed)
    assert {row["flags"] for row in csv.DictReader(ledger_path(spec).open(encoding="utf-8"))} == {""}


def test_a_finished_folder_wins_over_its_row_and_an_unfinished_one_does_not(finished):
    _, spec, done = finished
    rerun, killed = done[0], done[1]
    finish(spec, rerun, shift=5.0)  # finished again, with other numbers
    (runner.run_dir(spec, killed) / runner.DONE).unlink()  # started again and killed
    by_id = {r.run.run_id: r for r in collect(spec)}
    assert by_id[rerun.run_id].best_score == _score(rerun, 1) + 5.0
    assert by_id[killed.run_id].best_score == _score(killed, 1)  # the recorded result still stands
    assert len(by_id) == 16


def test_rows_outside_the_spec_or_its_runs_dir_are_ignored_and_no_csv_records_nothing(finished, tmp_path):
    path, spec, _ = finished
    (tmp_path / "narrow.yml").write_text(path.read_text().replace("seeds: [1, 2, 3]", "seeds: [2]"),
                                         encoding="utf-8")
    narrow = load_spec(tmp_path / "narrow.yml")  # same name and results_dir: same runs CSV
    assert {r.run.seed for r in read_ledger(narrow).values()} == {2} and len(read_ledger(narrow)) == 8
    (tmp_path / "moved.yml").write_text(path.read_text().replace(str(tmp_path / "runs"), str(tmp_path / "other")),
                                        encoding="utf-8")
    assert read_ledger(load_spec(tmp_path / "moved.yml")) == {}  # recorded under another runs_dir
    ledger_path(spec).unlink()
    assert read_ledger(spec) == {}


def _edit_row(spec, line: int, column: str, value: str) -> None:
    rows = list(csv.DictReader(ledger_path(spec).open(encoding="utf-8")))
    rows[line - 2][column] = value
    _write_rows(spec, rows)


def _write_rows(spec, rows: list[dict]) -> None:
    with ledger_path(spec).open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _rename_column(spec, old: str, new: str) -> None:
    path = ledger_path(spec)
    text = path.read_text(encoding="utf-8").split("\n", 1)
    path.write_text(text[0].replace(old, new) + "\n" + text[1], encoding="utf-8")


@pytest.mark.parametrize("edit, message", [
    (lambda s: _edit_row(s, 3, "best_score", "high"), "demo_runs.csv:3: best_score 'high' is not a number"),
    (lambda s: _edit_row(s, 4, "seconds", "?"), "demo_runs.csv:4: seconds '?' is not a number"),
    (lambda s: _edit_row(s, 2, "learning_rate", "0.5"),
     "demo_runs.csv:2: run rte/adamax/lr0.0001_beta3-0.75_seed1 is recorded with other settings "
     "('rte', 'adamax', 0.5, 0.75, 1.0); delete the row or fix the spec"),
    (lambda s: _edit_row(s, 2, "best_rte_dev_ACC", ""),
     "demo_runs.csv:2: run rte/adamax/lr0.0001_beta3-0.75_seed1 has no best_<dev set>_<metric> values"),
    (lambda s: _rename_column(s, "best_rte_dev_ACC", "best_rte_ACC"),
     "demo_runs.csv:2: column 'best_rte_ACC' is not best_<dev set>_<metric>"),
])
def test_a_bad_row_is_a_one_line_error_naming_file_and_line(finished, capsys, edit, message):
    path, spec, _ = finished
    shutil.rmtree(spec.runs_dir)
    edit(spec)
    with pytest.raises(ValueError) as error:
        collect(spec)
    assert str(error.value) == f"{ledger_path(spec)}{message[len('demo_runs.csv'):]}"
    assert sweep_cli.main(["report", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"sweep.py: error: {error.value}"


def test_run_skip_recorded_leaves_recorded_runs_without_a_folder_and_status_lists_them(finished, monkeypatch, capsys):
    path, spec, done = finished
    for run in done[:10]:
        shutil.rmtree(runner.run_dir(spec, run))
    ran = []

    def execute(spec, run, version=None, devices=None):  # a finished folder is skipped, anything else (fake) fails
        if (runner.run_dir(spec, run) / runner.DONE).is_file():
            return runner.Outcome(run, runner.run_dir(spec, run), "skipped")
        ran.append(run)
        return runner.Outcome(run, runner.run_dir(spec, run), "failed", 0.0, 1)

    monkeypatch.setattr(runner, "execute", execute)
    assert sweep_cli.main(["status", str(path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0] == (f"16 finished runs are recorded in {ledger_path(spec)}; `run --skip_recorded` does not "
                      "train one whose folder is gone again")
    assert out[-1] == "6 done, 8 new, 10 recorded"
    assert sweep_cli.main(["run", str(path), "--skip_recorded"]) == 1  # the 8 runs of seed 3 (fake) fail
    out = capsys.readouterr().out
    assert {r.seed for r in ran} == {3} and len(ran) == 8
    assert out.count("] recorded ") == 10 and out.count("] skipped ") == 6
    ran.clear()
    assert sweep_cli.main(["run", str(path)]) == 1  # by default a run whose folder is gone trains again
    assert sorted(r.run_id for r in ran) == sorted([r.run_id for r in done[:10]]
                                                   + [r.run_id for r in spec.runs() if r.seed == 3])

"""experiments/demo/run_demo.py without training: the tables it prints from fake metrics.jsonl files, with the
selection (each optimizer's best lr, by last-epoch dev average) and the differences worked out by hand; the check
against committed runs; README.md's demo table against the committed runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_utils.metrics import glue_average
from experiments.demo import run_demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo():
    return run_demo


# (vaderpol ACC, F1, MCC), (vaderval Pearson, Spearman) at the last epoch, and the average by hand:
# mean within each task, then of the two tasks.
LAST = {
    ("adamax", "1e-4"): ((76, 73, 52), (65, 66), 66.25),     # (67 + 65.5) / 2
    ("adamax", "3e-4"): ((80, 79, 60), (68, 69), 70.75),     # (73 + 68.5) / 2
    ("adamax-sage", "1e-4"): ((81, 80, 61), (69, 71), 72.0),  # (74 + 70) / 2
    ("adamax-sage", "3e-4"): ((79, 79, 58), (70, 71), 71.25),  # (72 + 70.5) / 2
}


def record(epoch, pol, val, average):
    dev = {"vaderpol_dev": dict(zip(("ACC", "F1", "MCC"), pol)),
           "vaderval_dev": dict(zip(("Pearson", "Spearman"), val))}
    return {"epoch": epoch, "step": 64 * (epoch + 1), "dev": dev, "glue_average": average}


def write_runs(root: Path, last=LAST, seconds=90.0):
    for (name, lr), (pol, val, average) in last.items():
        folder = root / f"{name}_lr{lr}"
        folder.mkdir(parents=True)
        # epoch 0 scores higher than epoch 1 everywhere: the demo must report the last epoch, not the best one
        lines = [record(0, (99, 99, 99), (99, 99), 99.0), record(1, pol, val, average)]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
        if seconds is not None:
            (folder / "demo_run.json").write_text(json.dumps({"seconds": seconds}), encoding="utf-8")


def test_the_hand_averages_are_train_pys_glue_average():
    for pol, val, average in LAST.values():
        assert glue_average(record(1, pol, val, average)["dev"]) == pytest.approx(average)


def test_tables_from_fake_runs(demo, tmp_path, capsys):
    write_runs(tmp_path)
    assert demo.main(["--out_dir", str(tmp_path), "--report_only"]) == 0
    out = capsys.readouterr().out
    # Adamax: 70.75 (3e-4) > 66.25 (1e-4); Adamax-SAGE: 72.0 (1e-4) > 71.25 (3e-4)
    assert "| Adamax | 1e-4 | 76.0 | 73.0 | 52.0 | 65.0 | 66.0 | 66.25 |  | 1.5 min |" in out
    assert "| Adamax | 3e-4 | 80.0 | 79.0 | 60.0 | 68.0 | 69.0 | 70.75 | yes | 1.5 min |" in out
    assert "| Adamax-SAGE | 1e-4 | 81.0 | 80.0 | 61.0 | 69.0 | 71.0 | 72.00 | yes | 1.5 min |" in out
    assert "| Adamax-SAGE | 3e-4 | 79.0 | 79.0 | 58.0 | 70.0 | 71.0 | 71.25 |  | 1.5 min |" in out
    assert "| both at lr 1e-4 | 66.25 | 72.00 | +5.75 |" in out
    assert "| both at lr 3e-4 | 70.75 | 71.25 | +0.50 |" in out
    assert "| each at its best lr on dev (Adamax 3e-4, Adamax-SAGE 1e-4) | 70.75 | 72.00 | +1.25 |" in out
    assert "one seed (2018), 2 epochs, last-epoch scores; the same dev set picks" in out
    assert "99" not in out


def test_a_tie_goes_to_the_smaller_lr_and_untimed_runs_say_so(demo, tmp_path, capsys):
    last = dict(LAST)
    last[("adamax", "1e-4")] = ((80, 79, 60), (68, 69), 70.75)  # now equal to adamax at 3e-4
    write_runs(tmp_path, last, seconds=None)
    # the grid given larger lr first: the tie must still go to 1e-4
    demo.main(["--out_dir", str(tmp_path), "--report_only", "--learning_rates", "3e-4,1e-4"])
    out = capsys.readouterr().out
    assert "| Adamax | 1e-4 | 80.0 | 79.0 | 60.0 | 68.0 | 69.0 | 70.75 | yes | n/a |" in out
    assert "| Adamax | 3e-4 | 80.0 | 79.0 | 60.0 | 68.0 | 69.0 | 70.75 |  | n/a |" in out
    assert "| each at its best lr on dev (Adamax 1e-4, Adamax-SAGE 1e-4) | 70.75 | 72.00 | +1.25 |" in out


def test_bad_runs_and_flags_stop_with_one_line(demo, tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"adamax_lr1e-4/metrics.jsonl: missing"):
        demo.main(["--out_dir", str(tmp_path), "--report_only"])
    write_runs(tmp_path)
    bad = tmp_path / "adamax-sage_lr3e-4" / "metrics.jsonl"
    bad.write_text('{"epoch": 0}\n{"epoch": 1, "dev": {}}\n', encoding="utf-8")
    with pytest.raises(SystemExit, match=r"adamax-sage_lr3e-4/metrics.jsonl:2: not a dev record"):
        demo.main(["--out_dir", str(tmp_path), "--report_only"])
    with pytest.raises(SystemExit):
        demo.main(["--out_dir", str(tmp_path), "--report_only", "--learning_rates", "1e-4,fast"])
    assert "--learning_rates: 'fast' is not a positive number" in capsys.readouterr().err


def test_a_second_demo_reuses_finished_runs_and_replaces_the_others_on_purpose(demo, tmp_path, monkeypatch, capsys):
    """train.py is replaced by a fake that records its command line and writes the run's metrics. A run is
    reused only when this demo finished it with the same flags; any other is trained again with --overwrite,
    so two runs never share a folder."""
    calls = []

    def fake_run(cmd, check, cwd):
        out = Path(cmd[cmd.index("--output_dir") + 1])
        calls.append(out.name)
        assert cmd[1].endswith("train.py") and cmd[-1] == "--overwrite" and "--resume" not in cmd
        assert not (out / "demo_run.json").exists()  # the old record goes before train.py starts
        name, lr = out.name.rsplit("_lr", 1)
        pol, val, average = LAST[(name, lr)]
        (out / "metrics.jsonl").write_text(json.dumps(record(1, pol, val, average)) + "\n", encoding="utf-8")
    monkeypatch.setattr(demo.subprocess, "run", fake_run)
    runs = sorted(f"{name}_lr{lr}" for name, lr in LAST)
    write_runs(tmp_path)  # finished runs of an older demo: their records carry no flags
    assert demo.main(["--out_dir", str(tmp_path)]) == 0
    assert sorted(calls) == runs
    assert demo.main(["--out_dir", str(tmp_path)]) == 0 and len(calls) == 4  # all four reused
    assert capsys.readouterr().out.count("finished before with the same flags, reused") == 4
    (tmp_path / "adamax_lr3e-4" / "demo_run.json").unlink()  # killed: train.py never finished
    assert demo.main(["--out_dir", str(tmp_path)]) == 0 and calls[4:] == ["adamax_lr3e-4"]
    assert demo.main(["--out_dir", str(tmp_path), "--epochs", "3"]) == 0  # other flags: not the same runs
    assert sorted(calls[5:]) == runs
    assert demo.main(["--out_dir", str(tmp_path), "--epochs", "3", "--rerun"]) == 0 and sorted(calls[9:]) == runs


def test_check_names_each_differing_cell_and_ignores_wall_time(demo, tmp_path, capsys):
    """--save_expected keeps each run's last record; --check passes on the same records (other wall times) and
    names the one cell a changed record prints differently."""
    write_runs(tmp_path / "first", seconds=90.0)
    assert demo.main(["--out_dir", str(tmp_path / "first"), "--report_only",
                      "--save_expected", str(tmp_path / "expected")]) == 0
    saved = (tmp_path / "expected" / "adamax_lr1e-4" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["epoch"] for line in saved] == [1]  # the last record only
    write_runs(tmp_path / "second", seconds=300.0)
    capsys.readouterr()
    assert demo.main(["--out_dir", str(tmp_path / "second"), "--report_only",
                      "--check", str(tmp_path / "expected")]) == 0
    assert "The scores are the committed ones" in capsys.readouterr().out
    changed = tmp_path / "second" / "adamax_lr1e-4" / "metrics.jsonl"
    lines = changed.read_text(encoding="utf-8").splitlines()
    last = json.loads(lines[-1])
    last["dev"]["vaderpol_dev"]["ACC"] = 75.94  # prints 75.9 instead of 76.0; the average is left as it was
    changed.write_text("\n".join(lines[:-1] + [json.dumps(last)]) + "\n", encoding="utf-8")
    assert demo.main(["--out_dir", str(tmp_path / "second"), "--report_only",
                      "--check", str(tmp_path / "expected")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"run_demo.py: {tmp_path / 'second'} differs from {tmp_path / 'expected'}: line 5, Adamax 1e-4: "
                   "vaderpol ACC 75.9 (committed 76.0)"]


def test_without_wall_time_keeps_every_score_cell(demo):
    row = "| Adamax | 1e-4 | 75.8 | 73.1 | 51.8 | 65.6 | 65.9 | 66.31 |  | 10.9 min |"
    assert demo.without_wall_time(row) == [["Adamax", "1e-4", "75.8", "73.1", "51.8", "65.6", "65.9", "66.31", ""]]
    other = "| both at lr 1e-4 | 66.31 | 61.79 | -4.52 |\nDev set, one seed"
    assert demo.without_wall_time(other) == [["both at lr 1e-4", "66.31", "61.79", "-4.52"], ["Dev set, one seed"]]


def readme_demo_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start, end = text.index("<!-- demo-table -->\n"), text.index("<!-- /demo-table -->")
    return text[start + len("<!-- demo-table -->\n"):end].strip("\n")


def test_readme_demo_table_is_the_committed_runs(demo):
    """The README's block is run_demo.py's report of the committed runs (wall times aside, which the committed
    records leave out), and its caption names the optimizer implementation that produced them."""
    expected = demo.report(demo.EXPECTED, demo.LEARNING_RATES, demo.DEFAULT_EPOCHS)
    block = readme_demo_block()
    assert demo.without_wall_time(block) == demo.without_wall_time(expected)
    assert f"Optimizer step: {demo.IMPLEMENTATION}." in block.splitlines()[0]
    assert "| Adamax-SAGE | 3e-4 |" in block and "| each at its best lr on dev" in block

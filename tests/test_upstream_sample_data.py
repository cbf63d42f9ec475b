"""MT-DNN's and the SAGE repository's data commands on the authors' sample data.

The SAGE repository ships raw GLUE-layout files (``sample_data/input``: 35 files, SNLI and SciTail included) and
the shards its glue_prepro.py + prepro_std.py made of them with bert-base-uncased (``sample_data/output``, one
JSON object per line: uid, label, token_id, type_id, attention_mask); copies live in
tests/fixtures/sage_repo/sample_data. The same command lines run here (MiniLM-L6, whose vocabulary is
bert-base-uncased's, for the model) and every shard must hold the same rows token for token. This project's
shards leave out ``attention_mask``, all ones without padding, so it is compared as that.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import prepro_std as ps
from experiments.glue import glue_prepro as gp
from mt_dnn.cli_flags import GLUE_PREPRO, PREPRO_STD

PREPRO_STD_FLAGS, GLUE_PREPRO_FLAGS = PREPRO_STD.no_effect, GLUE_PREPRO.no_effect

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "fixtures" / "sage_repo" / "sample_data"
TASK_DEF = "experiments/glue/glue_task_def.yml"
MODEL = "minilm-l6"
EXPECTED = sorted(p.stem for p in (SAMPLE / "output").glob("*.json"))


def upstream_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def as_upstream(path: Path) -> list[dict]:
    """This project's shard rows in the upstream line layout: its keys in order, then the attention mask."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        assert list(rec) == ["uid", "label", "token_id", "type_id"], path
        rows.append({**rec, "attention_mask": [1] * len(rec["token_id"])})
    return rows


def assert_same_shards(shard_dir: Path) -> None:
    assert sorted(p.stem for p in shard_dir.glob("*.jsonl")) == EXPECTED
    for name in EXPECTED:
        want, got = upstream_rows(SAMPLE / "output" / f"{name}.json"), as_upstream(shard_dir / f"{name}.jsonl")
        assert [list(r) for r in got] == [list(r) for r in want], name  # same keys in the same order
        assert got == want, name


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """MT-DNN's tests/test_prepro.py, step 1: ``glue_prepro.py --root_dir run_test/sample_data``."""
    data = tmp_path_factory.mktemp("run_test") / "sample_data"
    shutil.copytree(SAMPLE / "input", data)
    proc = run("-m", "experiments.glue.glue_prepro", "--root_dir", str(data))
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr
    return data


def test_the_fixture_holds_all_35_inputs_and_shards():
    assert len([p for p in (SAMPLE / "input").rglob("*.tsv")]) == 35
    assert len(EXPECTED) == 35


@pytest.mark.subprocess
def test_mtdnn_test_prepro_command_lines_give_the_authors_35_shards(converted):
    """Step 2 of MT-DNN's tests/test_prepro.py, as typed there (the model aside)."""
    assert sorted(p.name for p in (converted / "canonical_data").glob("*.tsv")) == [f"{n}.tsv" for n in EXPECTED]
    proc = run("prepro_std.py", "--model", MODEL, "--root_dir", str(converted / "canonical_data"),
               "--task_def", TASK_DEF)
    assert proc.returncode == 0, proc.stderr
    assert_same_shards(converted / "canonical_data" / MODEL)


def test_qqp_and_snli_canonical_rows_are_mtdnns(converted):
    """The rows MT-DNN's glue_prepro.py writes for the two tasks whose shards differed: QQP's uid is the row
    number (not the id column) for train/dev and the id for test; SNLI's GLUE layout keeps its index column and
    its test file's gold label."""
    canonical = converted / "canonical_data"
    lines = {n: (canonical / f"{n}.tsv").read_text(encoding="utf-8").splitlines() for n in
             ("qqp_train", "qqp_test", "snli_test")}
    assert lines["qqp_train"] == ["0\t0\tHow is the life of a math student? Could you describe your own experiences?"
                                  "\tWhich level of prepration is enough for the exam jlpt5?"]
    assert [ln.split("\t")[:2] for ln in lines["qqp_test"]] == [["0", "0"]]
    assert [ln.split("\t")[:2] for ln in lines["snli_test"]] == [["0", "neutral"]]


@pytest.mark.parametrize("flags,cpus", [
    # SAGE's experiments/glue/prepro.sh (its --model roberta-large aside), $1 = MT-DNN's --do_padding
    (["--do_lower_case", "--do_padding"], None),
    # MT-DNN's experiments/glue/prepro.sh: 32 workers on its authors' machine, modelled as 8 CPUs
    (["--workers", "32"], 8),
    # the line: MT-DNN's tokenizer flags
    (["--do_padding", "--transformer_cache", ".cache", "--do_lower"], None),
], ids=["sage_prepro_sh", "mtdnn_prepro_sh", "mtdnn_tokenizer_flags"])
def test_upstream_prepro_std_flags_give_the_same_shards(converted, tmp_path, monkeypatch, capsys, flags, cpus):
    root = tmp_path / "canonical_data"
    shutil.copytree(converted / "canonical_data", root, ignore=shutil.ignore_patterns(MODEL))
    if cpus:
        from data_utils import resources
        monkeypatch.setattr(resources, "usable_cpus", lambda: cpus)
        monkeypatch.setenv("RAYON_NUM_THREADS", "1")  # the tokenizer's threads stay few on a small machine
    argv = ["--model", MODEL, "--root_dir", str(root), "--task_def", str(ROOT / TASK_DEF), *flags]
    assert ps.main(argv) == 0
    assert_same_shards(root / MODEL)
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    given = [f for f in flags if f in PREPRO_STD_FLAGS]
    assert warnings == [f"prepro_std.py: warning: {f}{' .cache' if f == '--transformer_cache' else ''} has no "
                        f"effect here ({PREPRO_STD_FLAGS[f]})" for f in given]


@pytest.mark.subprocess
def test_mtdnn_glue_prepro_line_with_old_glue(tmp_path):
    """The issue's ``glue_prepro.py --root_dir data --old_glue``: one notice each for --old_glue and --seed, and
    the same canonical files as without them."""
    data = tmp_path / "data"
    shutil.copytree(SAMPLE / "input", data)
    proc = run("-m", "experiments.glue.glue_prepro", "--root_dir", str(data), "--old_glue", "--seed", "13")
    assert proc.returncode == 0, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if "warning" in ln] == [
        f"glue_prepro.py: warning: --old_glue has no effect here ({GLUE_PREPRO_FLAGS['--old_glue']})",
        f"glue_prepro.py: warning: --seed 13 has no effect here ({GLUE_PREPRO_FLAGS['--seed']})"]
    assert sorted(p.stem for p in (data / "canonical_data").glob("*.tsv")) == EXPECTED


def test_root_dir_and_out_dir(tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(SAMPLE / "input" / "RTE", data / "RTE")
    assert gp.main(["--root_dir", str(data), "--tasks", "rte", "--out_dir", str(tmp_path / "elsewhere")]) == 0
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["rte_dev.tsv", "rte_test.tsv",
                                                                         "rte_train.tsv"]
    assert not (data / "canonical_data").exists()


def test_root_dir_with_glue_dir_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        gp.main(["--root_dir", str(tmp_path / "a"), "--glue_dir", str(tmp_path / "b")])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"glue_prepro.py: error: --root_dir {tmp_path / 'a'} and --glue_dir {tmp_path / 'b'} both name the raw "
        "GLUE folder; give one")


@pytest.mark.parametrize("argv,message", [
    (["--transformer_cache"], "argument --transformer_cache: expected one argument"),
    (["--do_padding", "yes"], "unrecognized arguments: yes"),
])
def test_upstream_flags_parse_as_upstream(argv, message, capsys):
    """A switch takes no value and --transformer_cache exactly one, as in MT-DNN's argparse."""
    with pytest.raises(SystemExit):
        ps.build_parser().parse_args(argv)
    assert capsys.readouterr().err.splitlines()[-1].endswith(message)


def test_docs_name_every_upstream_data_flag():
    text = (ROOT / "docs" / "mtdnn.md").read_text(encoding="utf-8")
    assert [f for f in (*PREPRO_STD_FLAGS, *GLUE_PREPRO_FLAGS) if f"`{f}`" not in text] == []

"""Bounded YAML and JSON reading: alias bombs, deep nesting, huge integers and oversized files end in one line
naming the file (and line) in every reader the project has: task definitions, sweep specs, paper settings,
train configs, metrics records, tracker logs, shards, SQuAD files, submission inputs, encoder configs."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from data_utils import safe_load
from data_utils.safe_load import DataFileError, loads_json, parse_yaml, read_json
from data_utils.task_def import TaskDefError, parse_task_defs

ROOT = Path(__file__).resolve().parents[1]
CLS = "  task_type: Classification\n  data_format: PremiseOnly\n  metric_meta: [ACC]\n"


def _bomb(levels: int = 9) -> str:
    parts = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    parts += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "{" + ", ".join(parts) + "}"


# ------------------------------------------------------------------------------------------- YAML
def test_n_class_of_a_billion_is_refused_before_any_label_is_built():
    start = time.perf_counter()
    with pytest.raises(TaskDefError) as info:
        parse_task_defs("t:\n" + CLS + "  n_class: 1000000000\n", "big.yml")
    assert time.perf_counter() - start < 5
    assert str(info.value) == ("big.yml:5: task 't', field 'n_class': n_class 1000000000 is more than the 100,000 "
                               "this project takes")
    assert parse_task_defs("t:\n" + CLS + "  n_class: 100000\n", "ok.yml")["t"].n_class == 100_000


def test_deep_nesting_is_refused_while_scanning():
    """PyYAML's scanner is quadratic in the depth of '[[[[': 100,000 levels took seconds before the refusal."""
    start = time.perf_counter()
    with pytest.raises(DataFileError) as info:
        parse_yaml("a: " + "[" * 100_000, "deep.yml")
    assert time.perf_counter() - start < 2
    assert str(info.value) == "deep.yml:1: not valid YAML: nested more than 64 levels deep"
    block = "".join(f"{' ' * i}k{i}:\n" for i in range(70))
    with pytest.raises(DataFileError, match=r"^block\.yml:\d+: not valid YAML: nested more than 64 levels deep$"):
        parse_yaml(block, "block.yml")
    assert parse_yaml("a: " + "[" * 60 + "]" * 60, "ok.yml").data == {"a": eval_free_nest(59)}


def eval_free_nest(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


def test_aliases_that_nest_deeper_than_the_bound_are_refused():
    chain = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 70))
    with pytest.raises(DataFileError, match=r"^chain\.yml:\d+: YAML nested more than 64 levels deep through "
                                            r"aliases$"):
        parse_yaml(chain, "chain.yml")


def test_integers_of_thousands_of_digits_are_refused_with_their_line():
    with pytest.raises(DataFileError) as info:
        parse_yaml("a: 1\nb: " + "7" * 5000 + "\n", "long.yml")
    assert str(info.value) == "long.yml:2: an integer of 5000 digits; no setting takes more than 100"
    with pytest.raises(TaskDefError, match=r"^f\.yml:5: an integer of 5000 digits"):
        parse_task_defs("t:\n" + CLS + "  n_class: " + "9" * 5000 + "\n", "f.yml")


def test_oversized_yaml_is_refused_before_parsing(monkeypatch):
    monkeypatch.setattr(safe_load, "MAX_YAML_CHARS", 1000)
    with pytest.raises(DataFileError) as info:
        parse_yaml("a: " + "x" * 2000, "huge.yml")
    assert str(info.value) == "huge.yml: 2,003 characters of YAML, more than the 1,000 this reader takes"


def test_sweep_spec_alias_bomb_is_refused_quickly(tmp_path):
    """The sweep spec used plain yaml.safe_load: a bomb in train_args hung the sweep."""
    from experiments.sweep.spec import SpecError, load_spec
    spec = tmp_path / "bomb.yml"
    spec.write_text("name: s\nruns_dir: runs\ntasks: [rte]\noptimizers: [adamax]\nlearning_rates: [1.0e-4]\n"
                    f"seeds: [1]\ntrain_args:\n  epochs: 1\n  bomb: {_bomb()}\n", encoding="utf-8")
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert time.perf_counter() - start < 5
    assert str(info.value).startswith(f"{spec}:9: YAML aliases expand to more than 100,000 values here")


def test_sweep_spec_grid_size_and_names_are_bounded(tmp_path):
    from experiments.sweep.spec import SpecError, parse_spec
    base = ("name: {name}\nruns_dir: runs\ntasks: [{task}]\noptimizers: [adamax]\nlearning_rates: [{lrs}]\n"
            "seeds: [{seeds}]\n")
    many = dict(name="s", task="rte", lrs=", ".join(f"{i}.0e-5" for i in range(1, 501)),
                seeds=", ".join(map(str, range(201))))
    with pytest.raises(SpecError) as info:
        parse_spec(base.format(**many), "grid.yml")
    assert str(info.value) == ("grid.yml: the grid has 100,500 runs (tasks x seeds x learning rates x beta3), more "
                               "than the 100,000 a spec may hold; split the sweep")
    plain = dict(lrs="1.0e-4", seeds="1")
    with pytest.raises(SpecError) as info:
        parse_spec(base.format(name="../../x", task="rte", **plain), "name.yml")
    assert str(info.value) == ("name.yml:1: field 'name': '../../x' cannot name a folder or file (it must be one "
                               "plain name: no '/' or '\\', not '.' or '..')")
    with pytest.raises(SpecError, match=r"^task\.yml:3: field 'tasks': '\.\.' cannot name a folder or file"):
        parse_spec(base.format(name="s", task="'..'", **plain), "task.yml")


def test_paper_settings_are_read_within_the_same_bounds(tmp_path):
    from scripts import generate as gen
    bad = tmp_path / "settings.yml"
    bad.write_text("common: " + _bomb() + "\n", encoding="utf-8")
    with pytest.raises(gen.SettingsError, match=rf"^{bad}:1: YAML aliases expand to more than 100,000 values"):
        gen.load_settings(bad)


# ------------------------------------------------------------------------------------------- JSON
@pytest.mark.parametrize("text,message", [
    ("{not json", "f.json: not valid JSON (Expecting property name enclosed in double quotes, line 1)"),
    ('{"epoch":\n' + "1" * 5000 + "}", "f.json: not valid JSON (an integer of more than 4300 digits, line 2)"),
    ("[" * 100_000, "f.json: not valid JSON (nested too deeply)"),
    ("[" * 70 + "]" * 70, "f.json: not valid JSON (nested more than 64 levels deep)"),
])
def test_json_errors_are_one_line(text, message):
    with pytest.raises(DataFileError) as info:
        loads_json(text, "f.json")
    assert str(info.value) == message
    assert loads_json("[" * 64 + "]" * 64, "ok.json") == eval_free_nest(63)


def test_json_lines_name_their_line_and_files_their_encoding(tmp_path):
    with pytest.raises(DataFileError) as info:
        loads_json("7" * 5000, "m.jsonl", 3, check_depth=False)
    assert str(info.value) == "m.jsonl:3: not valid JSON (an integer of more than 4300 digits)"
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"a":\n"caf\xe9"}')
    with pytest.raises(DataFileError) as info:
        read_json(latin)
    assert str(info.value) == f"{latin}: not valid JSON (not UTF-8 at byte offset 10, line 2)"
    with pytest.raises(DataFileError, match=rf"^{tmp_path}: is a folder, not a JSON file$"):
        read_json(tmp_path)


def _deep(levels: int) -> str:
    return '{"epoch": ' + "[" * levels + "1" + "]" * levels + "}"


def test_train_config_best_metrics_and_encoder_config_are_bounded(tmp_path):
    from data_utils.glue_submission import SubmissionError, best_epoch_tag
    from mt_dnn.config import load_config
    from module import encoders
    config = tmp_path / "train_config.json"
    config.write_text(_deep(100_000))
    with pytest.raises(ValueError, match=rf"^{config}: not valid JSON \(nested too deeply\)$"):
        load_config(config)
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "metrics.json").write_text('{"epoch": ' + "9" * 5000 + "}")
    with pytest.raises(SubmissionError, match=r"metrics\.json: not valid JSON \(an integer of more than 4300 "
                                              r"digits, line 1\)$"):
        best_epoch_tag(tmp_path)
    encoder = tmp_path / "encoder_config.json"
    encoder.write_text(_deep(200))
    with pytest.raises(ValueError, match=rf"^{encoder}: not valid JSON \(nested more than 64 levels deep\)$"):
        encoders.config_from_file(encoder)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(_deep(100_000))
    with pytest.raises(ValueError, match=rf"^--init_checkpoint {folder}: not a model folder \({folder}/config\.json: "
                                         r"not valid JSON \(nested too deeply\)\)$"):
        encoders.load_config(str(folder), "--init_checkpoint")


def test_metrics_records_tracker_logs_and_stamps_are_bounded(tmp_path):
    from mt_dnn.sensitivity_log import read_log
    from experiments.sweep.results import read_metrics
    import prepro_std
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"epoch": 0, "dev": {"a_dev": {"ACC": 1.0}}, "glue_average": 1.0}\n' + _deep(5000) + "\n")
    with pytest.raises(ValueError, match=rf"^{metrics}:2: not an evaluation record"):
        read_metrics(metrics)
    log = tmp_path / "sensitivity.jsonl"
    log.write_text('{"step": ' + "1" * 5000 + "}\n")
    with pytest.raises(ValueError, match=rf"^{log}:1: not valid JSON \(an integer of more than 4300 digits\)$"):
        read_log(log)
    shard = tmp_path / "t_train.jsonl"
    shard.write_text("")
    prepro_std._stamp_path(shard).write_text(_deep(100_000))
    assert prepro_std._up_to_date(shard, "x") is False  # a damaged stamp only means: rebuild


def test_squad_file_nested_too_deeply_is_one_line(tmp_path):
    from data_utils.squad import SquadError, read_squad
    path = tmp_path / "qa_train.json"
    path.write_text('{"data": ' + "[" * 100 + "]" * 100 + "}")
    with pytest.raises(SquadError) as info:
        read_squad(path, True, False)
    assert str(info.value) == f"{path}: not valid JSON (nested more than 64 levels deep)"


def test_every_reader_in_the_project_goes_through_the_bounded_readers():
    """No module of the project parses YAML or JSON from a file on its own (tests and benches excluded)."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", "bench", ".venv") or rel == Path("data_utils/safe_load.py"):
            continue
        text = path.read_text(encoding="utf-8")
        for call in ("yaml.safe_load(", "yaml.load(", "yaml.compose(", "json.load(", "json.loads("):
            if call in text:
                offenders.append(f"{rel}: {call}")
    assert offenders == []
    assert json.loads("1") == 1  # the standard reader itself is fine for text the project just wrote

"""Where the project writes: no output file is opened through a symbolic link, no derived name leaves its folder,
no output goes into the filesystem root, a system folder, the home folder or a folder holding the inputs, and a
failed write (a full disk) is one line naming the file with nothing half-written left behind."""
from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from data_utils import safe_paths
from data_utils.atomic import atomic_folder, atomic_write
from data_utils.safe_paths import (LogFileHandler, WriteError, append_line, check_output_root, open_output,
                                   plain_name, write_failure)

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- symlinks
def test_output_files_are_never_opened_through_a_symlink(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    for name in ("train.log", "metrics.jsonl", "sensitivity.jsonl", "sweep.log"):
        (tmp_path / name).symlink_to(target)
        message = f"{tmp_path / name}: is a symbolic link; output is never written through a link (remove it)"
        with pytest.raises(ValueError) as info:
            open_output(tmp_path / name, "a")
        assert str(info.value) == message
        with pytest.raises(ValueError, match="is a symbolic link"):
            append_line(tmp_path / name, "{}\n")
        with pytest.raises(ValueError, match="is a symbolic link"):
            LogFileHandler(tmp_path / name)
    dangling = tmp_path / "dangling.log"
    dangling.symlink_to(tmp_path / "created-through-the-link")
    with pytest.raises(ValueError, match="is a symbolic link"):
        open_output(dangling, "w")
    assert target.read_text() == "precious\n" and not (tmp_path / "created-through-the-link").exists()
    with pytest.raises(ValueError, match=rf"^{tmp_path}: is a folder; name a file$"):
        open_output(tmp_path, "a")


def test_tracker_and_tensorboard_folders_refuse_links(tmp_path):
    from mt_dnn.sensitivity_log import SensitivityTracker
    import torch
    (tmp_path / "sensitivity.jsonl").symlink_to(tmp_path / "elsewhere")
    encoder = _tiny_encoder()
    with pytest.raises(ValueError, match="sensitivity.jsonl: is a symbolic link"):
        SensitivityTracker(encoder, torch.optim.SGD(encoder.parameters(), lr=0.1), tmp_path / "sensitivity.jsonl",
                           1, 0.5)
    assert not (tmp_path / "elsewhere").exists()
    (tmp_path / "tensorboard").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ValueError, match=r"tensorboard: is a symbolic link; output is never written through a "
                                         r"link \(remove it\)$"):
        safe_paths.refuse_symlink(tmp_path / "tensorboard")


def _tiny_encoder():
    from transformers import AutoModel
    from conftest import tiny_bert_config
    return AutoModel.from_config(tiny_bert_config())


# ------------------------------------------------------------------------------------------- names
@pytest.mark.parametrize("name", ["..", ".", "", " ", "a/b", "../x", "a\\b", "x\0y"])
def test_plain_name_refuses_what_would_leave_the_folder(name):
    with pytest.raises(ValueError) as info:
        plain_name(name, "--tag")
    assert str(info.value) == (f"--tag: {name!r} cannot name a folder or file (it must be one plain name: no '/' "
                               "or '\\', not '.' or '..')")


def test_model_names_that_leave_root_dir_are_refused_by_prepro(tmp_path, capsys):
    import prepro_std
    from data_utils import shards
    root = tmp_path / "data" / "canonical"
    root.mkdir(parents=True)
    (root / "rte_train.tsv").write_text("0\tentailment\ta\tb\n")
    for model in ("..", ".", "/"):
        assert prepro_std.main(["--model", model, "--root_dir", str(root), "--tasks", "rte", "--workers", "1"]) == 1
        err = capsys.readouterr().err.strip()
        last = os.path.basename(os.path.normpath(model))
        assert err == (f"prepro_std.py: error: --model {model}: the shard folder's name (the model's last path "
                       f"part): {last!r} cannot name a folder or file (it must be one plain name: no '/' or '\\', "
                       "not '.' or '..')")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["canonical", "data", "rte_train.tsv"]
    assert shards.model_short_name("org/model-name") == "model-name"
    assert shards.model_short_name("../models/bert/") == "bert"
    assert shards.model_short_name("minilm-l6") == "minilm-l6"


def test_tags_splits_and_study_names_stay_plain(tmp_path, capsys):
    import glue_submission
    import prepare_distillation_data
    import predict
    from experiments.sweep.study import write_study
    assert predict.main(["--checkpoint", str(tmp_path), "--task", "t", "--tag", "../../escape"]) == 2
    assert capsys.readouterr().err.startswith("predict.py: error: --tag: '../../escape' cannot name a folder")
    assert glue_submission.main([str(tmp_path), "--out", str(tmp_path / "sub"), "--tag", "a/b"]) == 2
    assert capsys.readouterr().err.startswith("glue_submission.py: error: --tag: 'a/b' cannot name a folder")
    assert prepare_distillation_data.main(["--runs", str(tmp_path), "--tasks", "rte", "--data_dir",
                                           str(tmp_path / "d"), "--output_dir", str(tmp_path / "o"),
                                           "--split", "../train"]) == 2
    assert "--split: '../train' cannot name a folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"^--name: '\.\./x' cannot name a folder"):
        write_study([], "../x", tmp_path)


# ------------------------------------------------------------------------------------------- output roots
def test_obviously_wrong_output_roots_are_refused(tmp_path, monkeypatch):
    home = tmp_path / "home"
    work = home / "project" / "run-here"
    data = tmp_path / "data" / "shards"
    for folder in (work, data):
        folder.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    cases = {
        "/": "the filesystem root",
        "/tmp": "a top-level system folder",
        "/usr": "a top-level system folder",
        "~": "the home folder",
        str(home): "the home folder",
        "..": "a folder above the current directory",
        str(ROOT): "this project's source",
        str(ROOT.parent): "a folder holding this project's source",
        str(data): f"the input {data}",
        str(data.parent): f"a folder holding the input {data}",
    }
    for path, why in cases.items():
        with pytest.raises(ValueError) as info:
            check_output_root(path, "--output_dir", (data, None, "minilm-l6"))
        assert str(info.value) == f"--output_dir {path}: refusing to write into {why}; name a folder of its own", path
    for fine in (".", "checkpoints/run", str(tmp_path / "runs" / "a"), str(data / "student")):
        check_output_root(fine, "--output_dir", (data,))


def test_train_export_and_submission_refuse_the_root(tmp_path, capsys, monkeypatch):
    import export
    import glue_submission
    import train
    monkeypatch.setenv("HOME", str(tmp_path))
    assert train.main(["--train_datasets", "rte", "--output_dir", "/"]) == 2
    assert capsys.readouterr().err.strip() == ("train.py: error: --output_dir /: refusing to write into the "
                                               "filesystem root; name a folder of its own")
    assert export.main(["--checkpoint", str(tmp_path / "run" / "best"), "--out", str(tmp_path), "--overwrite"]) == 2
    assert capsys.readouterr().err.strip() == (f"export.py: error: --out {tmp_path}: refusing to write into the home "
                                               "folder; name a folder of its own")
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    assert glue_submission.main([str(run), "--out", str(tmp_path / "runs"), "--overwrite"]) == 2
    assert capsys.readouterr().err.strip() == (f"glue_submission.py: error: --out {tmp_path / 'runs'}: refusing to "
                                               f"write into a folder holding the input {run}; name a folder of its "
                                               "own")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "runs"]


def test_a_sweep_refuses_runs_and_results_in_the_root(tmp_path, capsys):
    import sweep
    spec = tmp_path / "s.yml"
    for field, line in (("runs_dir", "runs_dir: /\n"), ("results_dir", "runs_dir: runs\nresults_dir: /usr\n")):
        spec.write_text(f"name: s\n{line}tasks: [rte]\noptimizers: [adamax]\nlearning_rates: [1.0e-4]\nseeds: [1]\n",
                        encoding="utf-8")
        assert sweep.main(["run", str(spec)]) == 2
        where, why = ("/", "the filesystem root") if field == "runs_dir" else ("/usr", "a top-level system folder")
        assert capsys.readouterr().err.strip() == (f"sweep.py: error: {spec}: {field} {where}: refusing to write "
                                                   f"into {why}; name a folder of its own")


# ------------------------------------------------------------------------------------------- write failures
def _full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "rte_dev_scores_0.json"
    target.write_text("the previous complete file")
    with pytest.raises(WriteError) as info:
        with atomic_write(target) as handle:
            handle.write("x")
            _full()
    assert str(info.value) == f"{target}: cannot write (No space left on device); nothing half-written was left"
    assert isinstance(info.value, OSError) and target.read_text() == "the previous complete file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    with pytest.raises(WriteError, match=rf"^{tmp_path / 'best'}: cannot write \(File too large\)"):
        with atomic_folder(tmp_path / "best", overwrite=True) as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]
    with pytest.raises(ValueError, match="not a write failure"):  # other errors pass through unchanged
        with atomic_write(target) as handle:
            raise ValueError("not a write failure")
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "elsewhere")
    assert write_failure(missing, target) is missing


def test_safetensors_and_torch_save_renderings_of_a_full_disk_are_write_errors(tmp_path):
    from safetensors import SafetensorError
    rust = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert str(write_failure(rust, tmp_path / "best")) == (f"{tmp_path / 'best'}: cannot write (No space left on "
                                                           "device); nothing half-written was left")
    old = SafetensorError('Error while serializing: IoError(Os { code: 122, kind: FilesystemQuotaExceeded, '
                          'message: "Disk quota exceeded" })')
    assert "cannot write (Disk quota exceeded)" in str(write_failure(old, tmp_path))
    torch_full = RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                              "data/0: file write failed")
    assert "cannot write (file write failed)" in str(write_failure(torch_full, tmp_path))
    other = SafetensorError("Error while deserializing header: header too large")
    assert write_failure(other, tmp_path) is other


def test_a_failed_append_is_cut_back_to_whole_records(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    append_line(path, '{"epoch": 0}\n')
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 4:
            return real_write(fd, bytes(data[:4]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safe_paths.os, "write", half_then_full)
    with pytest.raises(WriteError, match=rf"^{path}: cannot write \(No space left on device\)"):
        append_line(path, '{"epoch": 1, "dev": {}}\n')
    monkeypatch.undo()
    assert path.read_text() == '{"epoch": 0}\n'


def test_a_log_file_that_cannot_be_written_warns_once_and_stops(tmp_path, capsys):
    import logging
    handler = LogFileHandler(tmp_path / "train.log")
    handler.stream.close()  # every later write fails, as on a full disk
    log = logging.getLogger("test-log-file-failure")
    log.propagate, log.handlers = False, [handler]
    log.warning("one")
    log.warning("two")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: {tmp_path / 'train.log'}: cannot write the log (")
    assert handler.failed

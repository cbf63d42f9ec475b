"""--report_to: what a run reports to TensorBoard, MLflow and W&B, read back with each tool's own reader.

The MLflow run is MiniLM-L6 on a small pairs task, stopped mid-run and resumed: the resumed attempt continues the
same MLflow run, whose params are the run's settings, whose dev metrics per epoch equal ``metrics.jsonl`` and whose
training losses equal the trainer's own log. TensorBoard's events of the same run are read with its
EventAccumulator. W&B runs offline (WANDB_MODE=offline) and its run file is read record by record.
"""
from __future__ import annotations

import dataclasses
import json
import struct
import sys
from pathlib import Path

import pytest

import train as train_cli
from mt_dnn.config import TrainConfig
from mt_dnn.trainer import Trainer
from workspace import config, make_workspace

PAIRS = dict(train_datasets=["pairs"], test_datasets=["pairs"], max_train_samples=32, batch_size=8, log_every=2,
             save_every_steps=2, tensorboard=True)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory, "reporting")


@pytest.fixture(scope="module")
def mlflow_run(ws, tmp_path_factory):
    """MiniLM-L6, 2 epochs of 4 steps, reporting to TensorBoard and MLflow; stopped after 6 steps (a step
    checkpoint at 6, epoch 0 evaluated at 4) and resumed to the end."""
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    mp.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mp.setenv("HF_MLFLOW_LOG_ARTIFACTS", "1")  # transformers' switch: best/ copied into the run's artifacts
    kw = dict(PAIRS, init_checkpoint="minilm-l6", report_to=["tensorboard", "mlflow"], learning_rate=5e-5)
    first = Trainer(config(ws, "minilm", **kw))
    first.fit(stop_after_steps=6)
    second = Trainer(config(ws, "minilm", resume=True, **kw))
    second.fit()
    yield ws / "minilm", first, second
    mp.undo()


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.training
def test_mlflow_run_has_the_settings_the_epochs_metrics_and_the_best_folder(mlflow_run):
    from mlflow.tracking import MlflowClient
    out, first, second = mlflow_run
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    runs = client.search_runs(["0"])
    assert len(runs) == 1  # the resumed attempt continued the same run
    run = runs[0]
    assert json.loads((out / "reporting.json").read_text())["mlflow"]["run_id"] == run.info.run_id
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert len(params) == len(dataclasses.fields(TrainConfig))
    assert (params["train_datasets"], params["init_checkpoint"], params["optimizer"]) == ("pairs", "minilm-l6",
                                                                                           "usadamax")
    assert (params["learning_rate"], params["beta3"], params["betas"], params["resume"]) == ("5e-05", "0.75",
                                                                                           "0.9,0.999", "False")
    assert run.data.tags["resumed.resume"] == "True"  # MLflow params are immutable: what the resume changed
    assert run.data.tags["best_checkpoint"] == str((out / "best").resolve())
    records = _metrics(out)
    assert [r["epoch"] for r in records] == [0, 1] and [r["step"] for r in records] == [4, 8]
    best = json.loads((out / "best" / "metrics.json").read_text())
    assert run.data.tags["best_epoch"] == str(best["epoch"])
    for name, values in records[0]["dev"].items():
        for metric in values:
            history = client.get_metric_history(run.info.run_id, f"dev/{name}/{metric}")
            assert [(m.step, m.value) for m in history] == [(r["step"], r["dev"][name][metric]) for r in records]
    average = client.get_metric_history(run.info.run_id, "dev/average")
    assert [(m.step, m.value) for m in average] == [(r["step"], r["glue_average"]) for r in records]
    epochs = client.get_metric_history(run.info.run_id, "epoch")
    assert [(m.step, m.value) for m in epochs] == [(4, 0.0), (8, 1.0)]
    artifacts = sorted(a.path for a in client.list_artifacts(run.info.run_id, "best"))
    assert artifacts == sorted(f"best/{p.name}" for p in (out / "best").iterdir())
    copied = Path(client.download_artifacts(run.info.run_id, "best/metrics.json", str(out.parent / "dl")))
    assert copied.read_bytes() == (out / "best" / "metrics.json").read_bytes()
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in loss] == first.loss_log + second.loss_log
    assert [s for s, _ in first.loss_log + second.loss_log] == [2, 4, 6, 8]


@pytest.mark.training
def test_tensorboard_events_hold_the_same_dev_metrics_and_losses(mlflow_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, first, second = mlflow_run
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    records = _metrics(out)
    for name, values in records[0]["dev"].items():
        for metric in values:
            got = [(e.step, e.value) for e in events.Scalars(f"dev/{name}/{metric}")]
            want = [(r["step"], pytest.approx(r["dev"][name][metric], rel=1e-6)) for r in records]
            assert got == want
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (s, pytest.approx(v, rel=1e-6)) for s, v in first.loss_log + second.loss_log]


def test_report_to_none_writes_no_reporter_files(ws):
    Trainer(config(ws, "none", **dict(PAIRS, epochs=1, report_to=["none"]))).fit()
    names = {p.name for p in (ws / "none").iterdir()}
    assert not names & {"tensorboard", "mlruns", "wandb", "reporting.json"}
    assert "metrics.jsonl" in names


def _wandb_records(run_file: Path) -> list:
    """The records of a W&B run file: a 7-byte header, then LevelDB-log blocks of 32 KiB whose chunks (4-byte
    checksum, 2-byte length, 1-byte type: 1 full, 2 first, 3 middle, 4 last) hold protobuf Records."""
    from wandb.proto import wandb_internal_pb2 as pb
    raw, block = run_file.read_bytes(), 32768
    assert raw[:4] == b":W&B"
    pos, chunks, records = 7, b"", []
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunks += raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def test_wandb_offline_run_holds_the_settings_metrics_and_best_path(ws, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    trainer = Trainer(config(ws, "wandb", **dict(PAIRS, epochs=2, report_to=["wandb"], tensorboard=False)))
    trainer.fit()
    out = ws / "wandb"
    run_id = json.loads((out / "reporting.json").read_text())["wandb"]["run_id"]
    (run_file,) = (out / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    records = _wandb_records(run_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    settings = {u.key: json.loads(u.value_json) for u in run.config.update if u.key != "_wandb"}
    assert settings == {k: str(v) if not isinstance(v, (list, tuple)) else ",".join(map(str, v))
                        for k, v in dataclasses.asdict(trainer.cfg).items()}
    history: dict[str, list] = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            row = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            for key, value in row.items():
                history.setdefault(key, []).append((row["_step"], value))
    records_ = _metrics(out)
    for name, values in records_[0]["dev"].items():
        for metric in values:
            assert history[f"dev/{name}/{metric}"] == [(r["step"], pytest.approx(r["dev"][name][metric]))
                                                       for r in records_]
    assert history["train/loss"] == [(s, pytest.approx(v)) for s, v in trainer.loss_log]
    summary = {("/".join(u.nested_key) or u.key): json.loads(u.value_json)
               for r in records if r.WhichOneof("record_type") == "summary" for u in r.summary.update}
    assert summary["best_checkpoint"] == str((out / "best").resolve())


# ---------------------------------------------------------------------------------------------- refusals
def _train(ws: Path, out: str, *extra: str) -> list[str]:
    return ["--train_datasets", "pairs", "--task_def", str(ws / "tasks.yml"), "--data_dir", str(ws / "shards"),
            "--init_checkpoint", str(ws / "tiny-bert"), "--output_dir", str(ws / out), "--epochs", "1",
            "--device", "cpu", *extra]


@pytest.mark.parametrize("flags, message", [
    (["--report_to", "comet"], "--report_to: unknown reporter 'comet'; known: tensorboard, mlflow, wandb, all, none"),
    (["--report_to", "none", "mlflow"], "--report_to: 'none' cannot be combined with other reporters"),
    (["--report_to", "tensorboard", "--no_tensorboard"],
     "--report_to: names tensorboard while --no_tensorboard turns it off; drop one of them"),
])
def test_bad_report_to_is_refused_in_one_line(ws, capsys, flags, message):
    assert train_cli.main(_train(ws, "bad-report", *flags)) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"train.py: error: {message}"]
    assert not (ws / "bad-report").exists()


@pytest.mark.parametrize("name, pip", [("mlflow", "mlflow-skinny"), ("wandb", "wandb")])
def test_a_reporter_whose_package_is_missing_is_refused_before_the_run_starts(ws, capsys, monkeypatch, name, pip):
    monkeypatch.setitem(sys.modules, name, None)  # what an absent package looks like to importlib
    assert train_cli.main(_train(ws, "missing-package", "--report_to", "tensorboard", name)) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"train.py: error: --report_to {name}: the {name} package is not installed here; pip install {pip}"]
    assert not (ws / "missing-package").exists()


def test_only_rank_0_reports(tmp_path):
    """Other ranks start no reporter and write nothing, but know that reporting is on: the optimizer statistics
    the reporters receive are gathered by a collective every rank joins."""
    from mt_dnn import reporting
    cfg = TrainConfig(train_datasets=["rte"], output_dir=str(tmp_path), report_to=["tensorboard", "mlflow"])
    other = reporting.start(cfg, tmp_path, is_main=False)
    assert not other and other.wanted and list(tmp_path.iterdir()) == []
    assert not reporting.start(TrainConfig(train_datasets=["rte"], report_to=["none"]), tmp_path, True).wanted


def test_report_to_takes_a_list_as_hugging_face_does():
    from mt_dnn.config import parse_args
    assert parse_args(["--train_datasets", "rte", "--report_to", "tensorboard", "mlflow"]).report_to == [
        "tensorboard", "mlflow"]
    assert parse_args(["--train_datasets", "rte"]).report_to is None


def test_a_reporter_that_cannot_start_is_one_line_and_leaves_no_run_folder(ws, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus-scheme://nowhere")
    assert train_cli.main(_train(ws, "cannot-start", "--report_to", "mlflow")) == 2
    (line,) = [text for text in capsys.readouterr().err.splitlines() if text.startswith("train.py:")]
    assert line.startswith("train.py: error: --report_to mlflow: starting failed (")
    assert "bogus-scheme" in line
    assert not (ws / "cannot-start").exists()

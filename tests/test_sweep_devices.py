"""GPUs for a sweep's runs, without a GPU: the machine's GPUs are faked through ``CUDA_VISIBLE_DEVICES`` (or
torch's device count), train.py is replaced by a script that records the environment its process receives and
holds its device until every run of the batch has started, so runs that shared a device, or did not run at the
same time, fail. Each run at a time gets its own GPU(s), the run records name them, several GPUs per run go
through torchrun, CPU machines keep their environment, and every bad setting is one line before anything runs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import sweep as sweep_cli
from experiments.sweep import devices, runner
from experiments.sweep.spec import RunSpec, load_spec
from test_sweep_runs import TASK_YAML

pytestmark = [pytest.mark.subprocess]


SPEC = """
name: gpus
runs_dir: {root}/runs
results_dir: {root}/results
tasks: [pairs]
optimizers: [adamax]
learning_rates: [1.0e-3, 2.0e-3]
seeds: {seeds}
parallel: {parallel}
train_args:
  task_def: {root}/tasks.yml
  epochs: 1
"""

# Stands in for train.py: records what its process sees, holds its GPU(s) exclusively while it runs (O_EXCL: a
# second process on the same GPUs at the same time fails), waits until FAKE_BARRIER processes have started (so
# the first runs did run at once), and writes one evaluation record for the report.
FAKE_TRAIN = r'''
import json, os, sys, time
from pathlib import Path
out = Path(sys.argv[sys.argv.index("--output_dir") + 1])
visible = os.environ.get("CUDA_VISIBLE_DEVICES")
rank = os.environ.get("LOCAL_RANK", "0")
(out / f"seen-{rank}.json").write_text(json.dumps({"CUDA_VISIBLE_DEVICES": visible, "LOCAL_RANK": rank,
                                                  "WORLD_SIZE": os.environ.get("WORLD_SIZE"), "argv": sys.argv[1:]}))
busy, started = Path(os.environ["FAKE_BUSY_DIR"]), Path(os.environ["FAKE_BUSY_DIR"] + "-started")
held = busy / f"{visible}-rank{rank}"
if visible:  # CPU runs hold no device
    os.close(os.open(held, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
(started / f"{out.name}-{os.getpid()}").touch()
deadline = time.time() + 120
while len(list(started.iterdir())) < int(os.environ["FAKE_BARRIER"]):
    if time.time() > deadline:
        sys.exit("the runs did not run at the same time")
    time.sleep(0.05)
seed = int(sys.argv[sys.argv.index("--seed") + 1])
record = {"epoch": 0, "dev": {"pairs_dev": {"ACC": 50.0 + seed, "F1": 60.0 + seed}}, "glue_average": 55.0 + seed}
(out / "metrics.jsonl").write_text(json.dumps(record) + "\n")
held.unlink(missing_ok=True)
'''


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    (tmp_path / "tasks.yml").write_text(TASK_YAML, encoding="utf-8")
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN, encoding="utf-8")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy-started").mkdir()
    monkeypatch.setattr(runner, "TRAIN_PY", tmp_path / "fake_train.py")
    monkeypatch.setenv("FAKE_BUSY_DIR", str(tmp_path / "busy"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 0)  # a CPU machine unless a test fakes GPUs
    return tmp_path


def spec_file(ws: Path, parallel: int = 4, extra: str = "", seeds: str = "[1, 2]") -> Path:
    path = ws / "gpus.yml"
    path.write_text(SPEC.format(root=ws, parallel=parallel, seeds=seeds) + extra, encoding="utf-8")
    return path


def seen(ws: Path) -> dict[str, list[dict]]:
    """run_id -> what each of its processes saw, by LOCAL_RANK."""
    spec = load_spec(ws / "gpus.yml")
    return {run.run_id: [json.loads(p.read_text()) for p in sorted(runner.run_dir(spec, run).glob("seen-*.json"))]
            for run in spec.runs()}


def records(ws: Path, name: str) -> dict[str, dict]:
    spec = load_spec(ws / "gpus.yml")
    return {run.run_id: json.loads((runner.run_dir(spec, run) / name).read_text()) for run in spec.runs()}


def test_four_parallel_runs_on_four_gpus_each_see_exactly_one_distinct_device(ws, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setenv("FAKE_BARRIER", "4")
    assert sweep_cli.main(["run", str(spec_file(ws))]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "4 runs, 4 at a time on GPUs 0 | 1 | 2 | 3, under" in out and out.count(" done ") == 4
    views = seen(ws)
    assert all(len(v) == 1 for v in views.values())  # one process per run
    devices_seen = [v[0]["CUDA_VISIBLE_DEVICES"] for v in views.values()]
    assert sorted(devices_seen) == ["0", "1", "2", "3"]
    assert all(v[0]["WORLD_SIZE"] is None for v in views.values())  # plain train.py, no torchrun
    for run_id, info in records(ws, runner.RUN_INFO).items():  # the run's records name its device
        assert info["devices"] == [views[run_id][0]["CUDA_VISIBLE_DEVICES"]]
        assert "--output_dir" in info["train_argv"] and "CUDA" not in json.dumps(info["train_argv"])
    assert {k: v["devices"] for k, v in records(ws, runner.DONE).items()} == \
        {k: [v[0]["CUDA_VISIBLE_DEVICES"]] for k, v in views.items()}
    spec = load_spec(ws / "gpus.yml")
    for run in spec.runs():
        first = (runner.run_dir(spec, run) / runner.LOG).read_text().splitlines()[0]
        assert f" new: CUDA_VISIBLE_DEVICES={views[run.run_id][0]['CUDA_VISIBLE_DEVICES']} " in first
    assert (ws / "results" / "gpus_runs.csv").is_file()


def test_a_gpus_list_names_the_devices_the_runs_share_out(ws, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")
    monkeypatch.setenv("FAKE_BARRIER", "2")
    path = spec_file(ws, parallel=2, seeds="[1]")
    assert sweep_cli.main(["run", str(path), "--gpus", "6,3"]) == 0, capsys.readouterr().err
    assert "2 at a time on GPUs 6 | 3," in capsys.readouterr().out
    assert sorted(v[0]["CUDA_VISIBLE_DEVICES"] for v in seen(ws).values()) == ["3", "6"]


def test_several_gpus_per_run_go_through_torchrun_one_process_per_gpu(ws, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    monkeypatch.setenv("FAKE_BARRIER", "4")  # 2 runs at a time x 2 processes
    path = spec_file(ws, parallel=2, extra="gpus_per_run: 2\nthreads_per_run: 1\n", seeds="[1]")
    assert sweep_cli.main(["run", str(path)]) == 0, capsys.readouterr().err
    assert "2 at a time on GPUs 0,1 | 2,3," in capsys.readouterr().out
    views = seen(ws)
    assert sorted(p["CUDA_VISIBLE_DEVICES"] for v in views.values() for p in v) == ["0,1", "0,1", "2,3", "2,3"]
    for run_id, procs in views.items():
        assert [(p["LOCAL_RANK"], p["WORLD_SIZE"]) for p in procs] == [("0", "2"), ("1", "2")]
        assert procs[0]["argv"][-2:] == ["--num_threads", "1"]
    info = records(ws, runner.RUN_INFO)
    assert sorted(i["devices"] for i in info.values()) == [["0", "1"], ["2", "3"]]
    spec = load_spec(path)
    log = (runner.run_dir(spec, spec.runs()[0]) / runner.LOG).read_text().splitlines()[0]
    assert " -m torch.distributed.run --standalone --nproc_per_node 2 " in log


def test_a_cpu_machine_keeps_the_runs_environment(ws, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_BARRIER", "2")
    path = spec_file(ws, parallel=2, seeds="[1]")
    assert sweep_cli.main(["run", str(path)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "2 runs, 2 at a time, under" in out and " GPU" not in out
    assert [v[0]["CUDA_VISIBLE_DEVICES"] for v in seen(ws).values()] == [None, None]
    assert [i["devices"] for i in records(ws, runner.RUN_INFO).values()] == [["cpu"], ["cpu"]]


def test_gpus_cpu_hides_the_machines_gpus_from_every_run(ws, monkeypatch, capsys):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("FAKE_BARRIER", "1")
    path = spec_file(ws, parallel=1, seeds="[1]")
    assert sweep_cli.main(["run", str(path), "--gpus", "cpu"]) == 0, capsys.readouterr().err
    assert "1 at a time on the CPU, under" in capsys.readouterr().out
    views = seen(ws)
    assert [v[0]["CUDA_VISIBLE_DEVICES"] for v in views.values()] == ["", ""]
    assert [i["devices"] for i in records(ws, runner.RUN_INFO).values()] == [["cpu"], ["cpu"]]


def test_torchs_device_count_stands_in_for_an_unset_cuda_visible_devices(ws, monkeypatch, capsys):
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 2)
    assert devices.visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5e1a, 3")
    assert devices.visible_gpus() == ["GPU-5e1a", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert devices.visible_gpus() == []


def test_a_resumed_run_keeps_its_record_and_names_the_devices_it_continues_on(ws, monkeypatch):
    monkeypatch.setenv("FAKE_BARRIER", "1")
    spec = load_spec(spec_file(ws, parallel=1))
    run = RunSpec("pairs", "adamax", 1e-3, 0.75, 1)
    folder = runner.write_run_info(spec, run, {"commit": "abc", "dirty": False}, ["1"])
    before = json.loads((folder / runner.RUN_INFO).read_text())
    assert before["devices"] == ["1"]
    (folder / "latest").write_text("step-4\n", encoding="utf-8")  # killed after a checkpoint
    assert runner.state(spec, run) == "resume"
    assert runner.execute(spec, run, {"commit": "def", "dirty": True}, ["3"]).status == "done"
    after = json.loads((folder / runner.RUN_INFO).read_text())
    assert after == dict(before, devices=["3"])  # flags and the code it started with stay
    assert json.loads((folder / "seen-0.json").read_text())["CUDA_VISIBLE_DEVICES"] == "3"
    assert "--resume" in json.loads((folder / "seen-0.json").read_text())["argv"]


GPU_ERRORS = [  # (CUDA_VISIBLE_DEVICES, extra args, spec addition, the one line)
    ("0,1,2,3", ["--gpus", "0,,1"], "", "--gpus: expected comma-separated GPU ids such as 0,1,2,3, got '0,,1'"),
    ("0,1,2,3", ["--gpus", ""], "", "--gpus: expected comma-separated GPU ids such as 0,1,2,3, got ''"),
    ("0,1,2,3", ["--gpus", "0;1"], "", "--gpus: expected comma-separated GPU ids such as 0,1,2,3, got '0;1'"),
    ("0,1,2,3", ["--gpus", "1,2,1"], "", "--gpus: GPU 1 is listed twice in '1,2,1'"),
    ("0,1,2,3", ["--gpus", "7"], "", "--gpus: GPU 7 is not visible here (CUDA_VISIBLE_DEVICES=0,1,2,3)"),
    (None, ["--gpus", "0"], "", "--gpus: GPU 0 is not visible here (torch sees no GPU)"),
    ("0,1,2,3", ["--parallel", "5"], "", "--parallel: 5 run(s) at a time x 1 GPU(s) per run need 5 GPUs; 4 are "
     "given (CUDA_VISIBLE_DEVICES=0,1,2,3); lower it or give more GPUs"),
    ("0,1,2,3", ["--gpus", "0,1"], "", "{spec}: parallel: 4 run(s) at a time x 1 GPU(s) per run need 4 GPUs; 2 "
     "are given (--gpus 0,1); lower it or give more GPUs"),
    ("0,1,2,3", ["--parallel", "2"], "gpus_per_run: 3\n", "--parallel: 2 run(s) at a time x 3 GPU(s) per run "
     "need 6 GPUs; 4 are given (CUDA_VISIBLE_DEVICES=0,1,2,3); lower it or give more GPUs"),
    (None, ["--parallel", "1"], "gpus_per_run: 2\n", "{spec}: gpus_per_run: 2 GPUs per run, but no GPU is visible "
     "here"),
    ("", ["--parallel", "1", "--gpus_per_run", "2"], "", "--gpus_per_run: 2 GPUs per run, but no GPU is visible "
     "here"),
    ("0,1", ["--parallel", "1", "--gpus", "cpu", "--gpus_per_run", "2"], "",
     "--gpus_per_run: 2 GPUs per run, but --gpus cpu hides them"),
    ("0,1,2,3", ["--gpus_per_run", "0"], "", "--gpus_per_run: must be >= 1, got 0"),
]


@pytest.mark.parametrize("visible, args, extra, message", GPU_ERRORS,
                         ids=[f"{i}-{m.split(':')[0]}" for i, (_, _, _, m) in enumerate(GPU_ERRORS)])
def test_bad_gpu_settings_are_one_line_naming_the_flag_before_anything_runs(ws, monkeypatch, capsys, visible,
                                                                            args, extra, message):
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    path = spec_file(ws, extra=extra)
    assert sweep_cli.main(["run", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert err == f"sweep.py: error: {message.format(spec=path)}\n"
    assert not (ws / "runs").exists() and not os.listdir(ws / "busy-started")

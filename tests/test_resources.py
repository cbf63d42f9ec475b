"""Thread and process counts are bounded by the CPUs this process may use: --num_threads 100000 made torch
start 100,000 OpenMP threads (a MemoryError traceback); a worker count of that size forks as many processes."""
from __future__ import annotations

import os

import pytest

from data_utils import resources
from data_utils.resources import check_parallelism, parallelism_limit, usable_cpus


def test_the_limit_is_four_per_usable_cpu_and_at_least_eight():
    cpus = len(os.sched_getaffinity(0))
    assert usable_cpus() == cpus
    assert parallelism_limit() == max(8, 4 * cpus)
    assert check_parallelism("--num_threads", parallelism_limit()) == parallelism_limit()
    with pytest.raises(ValueError) as info:
        check_parallelism("--num_threads", 100_000)
    assert str(info.value) == (f"--num_threads: 100000 threads on {cpus} usable CPU(s); at most "
                               f"{max(8, 4 * cpus)} (4 per CPU) are accepted")


def test_every_parallelism_flag_is_checked(monkeypatch, capsys, tmp_path):
    import prepro_std
    import sweep
    import train
    monkeypatch.setattr(resources, "usable_cpus", lambda: 4)  # limit 16 on any machine
    assert train.main(["--train_datasets", "rte", "--num_threads", "100000", "--output_dir",
                       str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == ("train.py: error: --num_threads: 100000 threads on 4 usable CPU(s); "
                                               "at most 16 (4 per CPU) are accepted")
    assert train.main(["--train_datasets", "rte", "--num_workers", "17", "--output_dir", str(tmp_path / "run")]) == 2
    assert "--num_workers: 17 processes on 4 usable CPU(s); at most 16" in capsys.readouterr().err
    assert prepro_std.main(["--workers", "1000", "--root_dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == ("prepro_std.py: error: --workers: 1000 processes on 4 usable CPU(s); "
                                               "at most 16 (4 per CPU) are accepted")
    spec = tmp_path / "s.yml"
    spec.write_text("name: s\nruns_dir: runs\ntasks: [rte]\noptimizers: [adamax]\nlearning_rates: [1.0e-4]\n"
                    "seeds: [1]\nparallel: 64\n", encoding="utf-8")
    assert sweep.main(["run", str(spec)]) == 2
    assert capsys.readouterr().err.strip() == (f"sweep.py: error: {spec}: parallel: 64 runs on 4 usable CPU(s); at "
                                               "most 16 (4 per CPU) are accepted")
    assert sweep.main(["run", str(spec), "--parallel", "2", "--threads_per_run", "50"]) == 2
    assert "--threads_per_run: 50 threads on 4 usable CPU(s)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()

"""A one-task run from HF run_glue.py's data flags (``--train_file``... or ``--dataset_name``): the task
definition is written to ``{output_dir}-data/task_def.yml`` (beside the run folder: a run never writes into its
input), its shards are built next to it, and the run's
``--task_def``, ``--data_dir`` and datasets point at them; training and prediction are then unchanged."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from data_utils import shards
from data_utils.atomic import atomic_write
from data_utils.run_glue_task import TASK, RunGlueData, task_definition_text
from mt_dnn.config import TrainConfig

#: (task-definition file, root folder, encoder, max_seq_len) -> builds the shards (prepro_std.py's run)
BuildShards = Callable[[Path, Path, str, int], None]


def requested(cfg: TrainConfig) -> RunGlueData:
    return RunGlueData(cfg.train_file, cfg.validation_file, cfg.test_file, cfg.dataset_name, cfg.dataset_config_name)


def data_folder(cfg: TrainConfig) -> Path:
    out = Path(cfg.output_dir).resolve()
    return out.with_name(out.name + "-data")


def prepare(cfg: TrainConfig, build_shards: BuildShards, build: bool = True) -> TrainConfig:
    """The run's config for its one task; ``build`` is False on the ranks that wait for rank 0's shards."""
    data = requested(cfg)
    if cfg.train_datasets:
        raise ValueError("--train_file/--dataset_name make a one-task run of their own; drop --train_datasets "
                         f"{','.join(cfg.train_datasets)}")
    if cfg.test_datasets and cfg.test_datasets != [TASK]:
        raise ValueError(f"--test_datasets: a one-task run evaluates its task, named '{TASK}'; drop --test_datasets "
                         f"{','.join(cfg.test_datasets)}")
    folder = data_folder(cfg)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for flag in ("task_def", "data_dir"):  # replaced below: a value the user gave would be ignored
        if getattr(cfg, flag) != defaults[flag]:
            raise ValueError(f"--{flag} {getattr(cfg, flag)}: a one-task run (--train_file/--dataset_name) writes its "
                             f"own task definition and shards, in {folder}; drop --{flag}")
    task_def = folder / "task_def.yml"
    if build:
        text = task_definition_text(data)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(task_def) as handle:
            handle.write(text)
        build_shards(task_def, folder, cfg.init_checkpoint, cfg.max_seq_len)
    return dataclasses.replace(cfg, task_def=str(task_def),
                               data_dir=str(folder / shards.model_short_name(cfg.init_checkpoint)),
                               train_datasets=[TASK], test_datasets=[TASK])

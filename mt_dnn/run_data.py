"""The shards a run reads: one training split per ``--train_datasets`` task and the dev/test splits of each
``--test_datasets`` entry, checked as they load (lengths against the encoder, labels scorable)."""
from __future__ import annotations

import logging
from typing import Mapping, Sequence

from data_utils.metrics import check_scorable
from data_utils.shard_checks import EncoderLimits
from data_utils.shards import find_shard
from data_utils.task_def import TaskDef, dataset_splits, dataset_task
from mt_dnn.batcher import TaskData, load_split
from mt_dnn.config import TrainConfig

log = logging.getLogger("sage.train")


def train_sets(cfg: TrainConfig, task_defs: Mapping[str, TaskDef], limits: EncoderLimits) -> list[TaskData]:
    sets = []
    for task in cfg.train_datasets:
        td = task_defs[task]
        splits = td.train_splits()
        if not splits:  # e.g. the SAGE repo's `split_names: [test_labeled]`: MT-DNN reads {task}_train anyway
            log.info("%s: task %s lists no train split in split_names; reading %s_train as MT-DNN does",
                     cfg.task_def, task, task)
            splits = ("train",)
        sets.append(load_split(cfg.data_dir, td, splits[0], cfg.max_seq_len, cfg.max_train_samples, limits,
                               cache=cfg.shard_cache))
    return sets


def eval_sets(cfg: TrainConfig, task_defs: Mapping[str, TaskDef], limits: EncoderLimits) -> list[TaskData]:
    sets = []
    for name in cfg.test_datasets:
        td = task_defs[dataset_task(name)]
        for split in dataset_splits(td, name):
            path = find_shard(cfg.data_dir, td.name, split)
            if not path.is_file() and split in td.test_splits():
                log.info("no %s shard: skipping test predictions for %s_%s", path, td.name, split)
                continue
            if not path.is_file() and split not in td.split_names:  # MT-DNN's {task}_dev, when present
                continue
            sets.append(load_split(cfg.data_dir, td, split, cfg.max_seq_len, cfg.max_eval_samples, limits,
                                   cache=cfg.shard_cache))
            if td.has_labels(split) and not td.token_level:  # found now, not after the first epoch
                limited = f" (--max_eval_samples {cfg.max_eval_samples})" if cfg.max_eval_samples else ""
                check_scorable(td, sets[-1].labels, f"{path}{limited}")
    return sets


def refuse_untrained_heads(cfg: TrainConfig, warm_heads: Sequence[str]) -> None:
    """A --test_datasets task that is neither trained here nor loaded from --init_checkpoint would be scored
    with a randomly initialised head."""
    known = set(cfg.train_datasets) | set(warm_heads)
    untrained = [t for t in cfg.test_datasets if dataset_task(t) not in known]
    if untrained:
        raise ValueError(f"--test_datasets: {', '.join(untrained)} not in --train_datasets; its head would be "
                         "untrained (random), so its scores would mean nothing")

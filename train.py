#!/usr/bin/env python
"""Multi-task fine-tuning with SAGE optimizers: ``python train.py --train_datasets rte --optimizer usadamax ...``.

Flags follow MT-DNN's names (``python train.py --help``); the run writes checkpoints, score files, submission
files, a log and TensorBoard scalars under ``--output_dir``. Data-parallel: ``torchrun --nproc_per_node N
train.py ...`` (DDP; add ``--fsdp`` to shard with FSDP2).
"""
from __future__ import annotations

import argparse
import sys


def _launch_settings(argv) -> tuple[str, float, str | None]:
    """--device, --dist_timeout and the legacy launcher's --local_rank, needed before the full parse so every
    rank can join the group (on its own GPU) first."""
    from mt_dnn.config import TrainConfig
    default_timeout = TrainConfig.dist_timeout  # a bad value is reported by the full parse, after joining
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--device", default="auto")
    pre.add_argument("--dist_timeout", type=float, default=default_timeout)
    pre.add_argument("--local_rank", "--local-rank", dest="local_rank", nargs="?", default=None)
    known, _ = pre.parse_known_args(argv)
    timeout = known.dist_timeout if known.dist_timeout > 0 else default_timeout
    return known.device, timeout, known.local_rank


def _build_shards(task_def, root, model: str, max_seq_len: int) -> None:
    """prepro_std.py's shards for a one-task run's --train_file/--dataset_name (up-to-date ones are kept)."""
    import prepro_std
    prepro_std.run(prepro_std.PreproConfig(model=model, root_dir=str(root), task_def=str(task_def),
                                           max_seq_len=max_seq_len, workers=1))


def main(argv=None) -> int:
    from mt_dnn import distributed as dist_utils
    from mt_dnn.config import parse_args
    from mt_dnn.stop_signals import Interrupted, Stopped, interrupt_on_signals
    from mt_dnn.trainer import Trainer
    argv = sys.argv[1:] if argv is None else argv
    env = None
    try:
        with interrupt_on_signals():  # before training starts (and after a second signal): stop at once
            device, timeout, local_rank = _launch_settings(argv)
            env = dist_utils.from_environment(local_rank)
            dist_utils.init_process_group(env, device, timeout)
            with dist_utils.agree_on_errors(env):
                cfg = parse_args(argv)
            if cfg.train_file or cfg.dataset_name:  # run_glue.py's data flags: rank 0 builds, the others wait
                from mt_dnn import one_task
                with dist_utils.agree_on_errors(env):
                    cfg = one_task.prepare(cfg, _build_shards, build=env.is_main)
            Trainer(cfg, env).fit()
    except (ValueError, OSError) as exc:  # OSError: a full disk (WriteError), an unreadable file
        # a RankError is raised on every rank: report it from rank 0 and from the rank that saw the problem
        if env is None or env.is_main or getattr(exc, "origin", env.rank) == env.rank:
            print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:  # every rank stops at the same step; one line
        if env is None or env.is_main:
            print(f"train.py: {exc}", file=sys.stderr)
        return exc.exit_code
    except Interrupted as exc:
        if env is None or env.is_main:
            print(f"train.py: {exc}", file=sys.stderr)
        return exc.exit_code
    finally:
        dist_utils.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

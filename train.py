#!/usr/bin/env python
"""Multi-task fine-tuning with SAGE optimizers: ``python train.py --train_datasets rte --optimizer usadamax ...``.

Flags follow MT-DNN's names (``python train.py --help``); the run writes checkpoints, score files, submission
files, a log and TensorBoard scalars under ``--output_dir``.
"""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    from mt_dnn.config import parse_args
    from mt_dnn.trainer import Trainer
    try:
        cfg = parse_args(argv)
        Trainer(cfg).fit()
    except (ValueError, FileNotFoundError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run under torchrun: train like ``train.py`` for N steps, keeping what would go to TensorBoard, then write (rank
0) the logged sensitivity means and the true mean over the whole (gathered) optimizer state as JSON."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mt_dnn import distributed as dist_utils  # noqa: E402
from mt_dnn.config import parse_args  # noqa: E402
from mt_dnn.optimizer_stats import MEAN_SENSITIVITY  # noqa: E402
from mt_dnn.trainer import StepHook, Trainer  # noqa: E402


def true_mean(optimizer) -> float:
    """Sum and count over every SAGE parameter's whole state tensor (shards gathered: a collective)."""
    total, count = 0.0, 0
    for group in optimizer.param_groups:
        if not group["sage"]:
            continue
        for p in group["params"]:
            ipt = optimizer.state[p]["exp_avg_ipt"]
            full = ipt.full_tensor() if hasattr(ipt, "full_tensor") else ipt
            total += float(full.double().sum())
            count += full.numel()
    return total / count


def main() -> int:
    stop_after, out, argv = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    env = dist_utils.from_environment()
    dist_utils.init_process_group(env, "cpu")
    try:
        logged: list[float] = []

        class Keep(StepHook):
            def logged(self, trainer, values: dict) -> None:
                if MEAN_SENSITIVITY in values:
                    logged.append(values[MEAN_SENSITIVITY])
        trainer = Trainer(parse_args(argv), env, hooks=[Keep()])
        trainer.fit(stop_after_steps=stop_after)
        truth = true_mean(trainer.optimizer)
        shard_local = trainer.optimizer.sage_stats()[MEAN_SENSITIVITY]  # the optimizer's own, per rank
        if env.is_main:
            out.write_text(json.dumps({"logged": logged, "true": truth, "optimizer_own": shard_local,
                                       "sharded": any(type(p) is not torch.nn.Parameter and hasattr(p, "to_local")
                                                      for p in trainer.model.parameters())}))
    finally:
        dist_utils.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

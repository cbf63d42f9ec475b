"""End to end on real data: GLUE MRPC from ../shared/glue -> canonical TSV -> shards -> MiniLM-L6 fine-tuned
with Adamax-SAGE for a bounded number of steps. The loss must go down and dev accuracy beat the majority class."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import prepro_std
from mt_dnn.config import TrainConfig
from mt_dnn.trainer import Trainer

pytestmark = [pytest.mark.training]

ROOT = Path(__file__).resolve().parents[1]
TASK_DEF = ROOT / "experiments" / "glue" / "glue_task_def.yml"


def test_minilm_learns_mrpc_slice(glue_dir, tmp_path):
    from experiments.glue import glue_prepro
    canonical = tmp_path / "canonical"
    glue_prepro.convert(glue_dir, canonical, TASK_DEF, tasks=["mrpc"], log=lambda _: None)
    prepro_std.run(prepro_std.PreproConfig(model="minilm-l6", root_dir=str(canonical), task_def=str(TASK_DEF),
                                           tasks=("mrpc",), max_seq_len=128), log=lambda _: None)
    cfg = TrainConfig(train_datasets=["mrpc"], test_datasets=["mrpc"], task_def=str(TASK_DEF),
                      data_dir=str(canonical / "minilm-l6"), init_checkpoint="minilm-l6",
                      output_dir=str(tmp_path / "run"), optimizer="usadamax", learning_rate=3e-4, beta3=0.8,
                      batch_size=16, epochs=2, max_train_samples=640, max_seq_len=128, log_every=5,
                      tensorboard=False, seed=2018)
    trainer = Trainer(cfg)
    history = trainer.fit()
    losses = [loss for _, loss in trainer.loss_log]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4, losses
    dev = next(d for d in trainer.eval_sets if d.split == "dev")
    majority = 100.0 * Counter(dev.labels).most_common(1)[0][1] / len(dev)
    assert max(h["dev"]["mrpc_dev"]["ACC"] for h in history) > majority + 1.0, (history, majority)

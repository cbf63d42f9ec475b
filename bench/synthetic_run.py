"""A training workspace that needs no download: a random encoder built from a config, a task definition and
synthetic shards, for benches and the GPU check.

``bert-base`` is BERT-base's shape (12 x 768, 110M parameters); ``tiny`` a 2-layer, 64-wide BERT for CPU smoke
runs. The shards hold two classification tasks whose sequences have lengths spread over ``max_len``, so a
``--compile`` run meets every length bucket. Nothing here claims accuracy: the weights are random.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from data_utils.shards import format_line

TASKS = """
pairs:
  task_type: Classification
  data_format: PremiseAndOneHypothesis
  n_class: 2
  metric_meta: [ACC]
  split_names: [train, dev]
triple:
  task_type: Classification
  data_format: PremiseOnly
  n_class: 3
  metric_meta: [ACC]
  split_names: [train, dev]
"""
SHAPES = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "small": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
}


@dataclass(frozen=True)
class Workspace:
    root: Path
    encoder: Path
    task_def: Path
    data_dir: Path


def make_workspace(root: Path, shape: str = "bert-base", rows: int = 512, max_len: int = 128,
                   dropout: float = 0.1, seed: int = 0) -> Workspace:
    """Write the random encoder, the task file and ``rows`` training (and 64 dev) rows per task."""
    from transformers import AutoModel, BertConfig
    root = Path(root)
    torch.manual_seed(seed)
    config = BertConfig(max_position_embeddings=max(512, max_len), hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, **SHAPES[shape])
    encoder = root / f"encoder-{shape}"
    if not (encoder / "config.json").is_file():
        AutoModel.from_config(config).save_pretrained(encoder)
    (root / "tasks.yml").write_text(TASKS, encoding="utf-8")
    data = root / "shards"
    data.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for task, n_class in (("pairs", 2), ("triple", 3)):
        for split, count in (("train", rows), ("dev", 64)):
            lines = []
            for i in range(count):
                length = rng.randint(8, max_len)  # every length bucket gets batches
                ids = [101] + [rng.randint(1000, 29000) for _ in range(length - 2)] + [102]
                types = [0] * (length // 2) + [1] * (length - length // 2) if task == "pairs" else [0] * length
                lines.append(format_line(f"{i}", rng.randrange(n_class), ids, types))
            (data / f"{task}_{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Workspace(root, encoder, root / "tasks.yml", data)


def train_config(ws: Workspace, out: str, **overrides):
    """A TrainConfig on the workspace (AdamW-SAGE, no TensorBoard, no evaluation, no step checkpoints)."""
    from mt_dnn.config import TrainConfig
    base = dict(train_datasets=["pairs"], test_datasets=[], task_def=str(ws.task_def), data_dir=str(ws.data_dir),
                init_checkpoint=str(ws.encoder), output_dir=str(ws.root / out), optimizer="usadamw",
                learning_rate=2e-5, batch_size=32, epochs=1, max_seq_len=128, log_every=1000, tensorboard=False,
                warmup=0.0, seed=1, shard_cache=False)
    base.update(overrides)
    return TrainConfig(**base)

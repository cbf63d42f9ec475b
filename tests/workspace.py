"""What the trainer-level tests train on: the tiny task definitions of tests/fixtures/tiny_tasks.yml, synthetic
shards for them, a tiny random BERT, and a TrainConfig that points at all three."""
from __future__ import annotations

import random
from pathlib import Path

import torch
from transformers import AutoModel

from conftest import tiny_bert_config
from data_utils.shards import format_line
from mt_dnn.config import TrainConfig

TASK_YAML = (Path(__file__).resolve().parent / "fixtures" / "tiny_tasks.yml").read_text(encoding="utf-8")


def _seq(rng: random.Random, signal: int) -> list[int]:
    """Token ids whose first content token carries the label, so the tasks are learnable."""
    n = rng.randint(3, 20)
    return [2] + [10 + signal] + [rng.randint(20, 120) for _ in range(n)] + [3]


def write_shards(folder: Path, sizes=(96, 48, 32), seed=0) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for task, n in zip(("pairs", "score", "pick"), sizes):
        for split, count in (("train", n), ("dev", 24), ("test", 10)):
            if split == "test" and task != "pairs":
                continue
            lines = []
            for i in range(count):
                if task == "pairs":
                    y = rng.randint(0, 1) if split != "test" else 0
                    a, b = _seq(rng, y), _seq(rng, 0)[1:]
                    lines.append(format_line(f"{i}", y, a + b, [0] * len(a) + [1] * len(b)))
                elif task == "score":
                    y = rng.randint(0, 4)
                    ids = _seq(rng, y)
                    lines.append(format_line(f"s{i}", float(y), ids, [0] * len(ids)))
                else:
                    y = rng.randint(0, 2)
                    hyps = [_seq(rng, 5 if k == y else 6) for k in range(3)]
                    lines.append(format_line(f"p{i}", y, hyps, [[0] * len(h) for h in hyps]))
            (folder / f"{task}_{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_workspace(tmp_path_factory, name: str, **model_config) -> Path:
    """A folder with a tiny random BERT (seed 0; ``model_config`` overrides its config), the task
    definitions of TASK_YAML and their shards: what the trainer-level tests train on."""
    root = tmp_path_factory.mktemp(name)
    torch.manual_seed(0)
    AutoModel.from_config(tiny_bert_config(**model_config)).save_pretrained(root / "tiny-bert")
    (root / "tasks.yml").write_text(TASK_YAML, encoding="utf-8")
    write_shards(root / "shards")
    return root


def config(ws: Path, out: str, **kw) -> TrainConfig:
    base = dict(train_datasets=["pairs", "score", "pick"], test_datasets=["pairs", "score", "pick"],
                task_def=str(ws / "tasks.yml"), data_dir=str(ws / "shards"), init_checkpoint=str(ws / "tiny-bert"),
                output_dir=str(ws / out), optimizer="usadamax", learning_rate=2e-3, batch_size=8, epochs=2,
                batch_size_eval=16, max_seq_len=64, log_every=2, tensorboard=False, optim_impl="foreach",
                warmup=0.1, seed=7)
    base.update(kw)
    return TrainConfig(**base)


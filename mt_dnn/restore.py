"""Rebuild a trained MTDNNModel from a checkpoint folder, with no hub access.

The architecture comes from the encoder config saved next to the weights (older checkpoints fall back to the
run's ``--init_checkpoint``), the heads from the run's task definitions. Used by predict.py, export.py,
prepare_distillation_data.py and the analyses.

A task definition that disagrees with the one the model was trained with (``task_labels.json``: labels reordered
or renamed, another n_class or task type) is refused, never followed: shards hold class ids that were numbered by
some version of the YAML, so the project cannot tell whether the user means the trained names or the new ones,
and either guess writes wrong label names (a flipped GLUE submission, a wrong ``id2label``) or wrong metrics.
A class-count change is caught first by the weights' shapes (the same line as for checkpoints without the file).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from data_utils.task_def import TaskDef, dataset_task, load_task_defs, select_tasks
from module import encoders
from mt_dnn import checkpoint as ckpt
from mt_dnn import task_labels
from mt_dnn.config import TrainConfig, load_config
from mt_dnn.model import MTDNNModel, build_model


RESTORE_HINT = "the model's outputs follow the trained definition: put it back in the YAML"


@dataclass
class Restored:
    folder: Path                  # the checkpoint folder the weights came from
    cfg: TrainConfig              # the training run's configuration
    model: MTDNNModel             # on CPU, in training mode (as constructed)
    task_defs: dict[str, TaskDef]
    pad_id: int


def restore(folder: Path, task_def: Optional[str] = None) -> Restored:
    """The model saved in ``folder`` (a ``best/`` or ``step-N/`` folder written by train.py)."""
    folder = Path(folder)
    cfg = load_config(folder / ckpt.CONFIG)
    task_def_path = task_def or cfg.task_def
    names = list(dict.fromkeys(cfg.train_datasets + [dataset_task(d) for d in cfg.test_datasets]))
    task_defs = select_tasks(load_task_defs(task_def_path), names, source=task_def_path)
    saved = folder / ckpt.ENCODER_CONFIG
    config = (encoders.config_from_file(saved) if saved.is_file()
              else encoders.load_config(cfg.init_checkpoint))
    encoder = encoders.load_encoder(cfg.init_checkpoint, cfg.encoder_type, config=config)
    model = build_model(encoder, task_defs, cfg.model_settings())
    ckpt.load_weights(model, folder)
    task_labels.check(task_labels.read(folder) or {}, task_defs, str(folder / task_labels.FILE), task_defs,
                      source=str(task_def_path), hint=RESTORE_HINT)
    pad_id = config.pad_token_id if config.pad_token_id is not None else 0
    return Restored(folder, cfg, model, task_defs, pad_id)

"""Head layouts: which [CLS] pooler a task head reads, as each of the three networks users come with defines it.

- ``encoder``: the encoder's own pretrained pooler (a fresh dense + tanh for encoders that have none), then the
  task's dropout and linear layer. This project's network from the start, the default for a run from a bare
  encoder (so earlier runs and results keep their numbers), and the layout of MT-DNN checkpoints from before
  its per-task poolers (bare ``scoring_list.N`` linear layers).
- ``sage``: the SAGE repository's network (``SANBertNetwork``): one freshly initialised pooler shared by all
  tasks (dropout ``--dropout_p`` on the [CLS] state, dense, ``--pooler_actf``, default tanh), then the task's
  dropout and linear layer. The encoder's own pooler stays in the weights but is never used.
- ``mtdnn``: today's MT-DNN: each task its own fresh pooler (the task's dropout, dense, activation) and linear
  layer, no dropout in between. MT-DNN looks the activation up by name in a module that never imports ``nn``,
  so every name falls back to no activation there: this layout's default ``--pooler_actf`` is ``linear``.

A run that starts from a trained model takes that model's layout: the ``head_layout`` in its
``train_config.json`` (configs without the field are ``encoder``), or for an MT-DNN/SAGE ``.pt`` what its tensor
names say (mt_dnn/upstream_checkpoint.py). Asking for another layout is an error, not a silent re-wiring.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from module.pooler import ACTIVATIONS
from mt_dnn.settings import ModelSettings

LAYOUTS = ("encoder", "sage", "mtdnn")
#: each layout's pooler activation when --pooler_actf is not given
DEFAULT_ACTF = {"encoder": "tanh", "sage": "tanh", "mtdnn": "linear"}


def layout_of(value: Optional[str]) -> str:
    """A config's head_layout; configs written before the field existed hold none and mean ``encoder``."""
    return value or "encoder"


def actf_of(layout: Optional[str], actf: Optional[str]) -> str:
    return actf or DEFAULT_ACTF[layout_of(layout)]


def check(layout: Optional[str], actf: Optional[str]) -> Optional[str]:
    """Why this (layout, activation) pair cannot be built, or None."""
    if layout is not None and layout not in LAYOUTS:
        return f"--head_layout: unknown layout '{layout}'; known: {', '.join(LAYOUTS)}"
    if actf is not None and actf not in ACTIVATIONS:
        return f"--pooler_actf: unknown activation '{actf}'; known: {', '.join(ACTIVATIONS)}"
    if layout_of(layout) == "encoder" and actf not in (None, "tanh"):
        return (f"--pooler_actf {actf}: the encoder head layout reads the encoder's own pooler, which applies tanh; "
                "use --head_layout sage or mtdnn for a pooler with another activation")
    return None


@dataclass(frozen=True)
class Found:
    """The layout a trained checkpoint was built with."""
    layout: Optional[str]   # None: nothing in it reads a pooler, so any layout fits
    actf: Optional[str]     # None: the layout's default
    where: str


def resolve(model: ModelSettings, found: Optional[Found]) -> ModelSettings:
    """``model`` with the layout this run builds: the checkpoint's, else --head_layout, else ``encoder``.

    An explicit --head_layout or --pooler_actf that differs from the checkpoint's is refused in one line."""
    if found is None or found.layout is None:
        layout = layout_of(model.head_layout)
        problem = check(layout, model.pooler_actf)
        if problem:
            raise ValueError(problem)
        return dataclasses.replace(model, head_layout=layout)
    if model.head_layout is not None and model.head_layout != found.layout:
        raise ValueError(f"--head_layout {model.head_layout}: {found.where} was trained with the {found.layout} "
                         "head layout; drop the flag to continue it as it was trained")
    actf = model.pooler_actf
    if actf is not None and actf_of(found.layout, actf) != actf_of(found.layout, found.actf):
        raise ValueError(f"--pooler_actf {actf}: {found.where} was trained with pooler activation "
                         f"{actf_of(found.layout, found.actf)}; drop the flag to continue it as it was trained")
    problem = check(found.layout, found.actf)
    if problem:
        raise ValueError(f"{found.where}: {problem}")
    return dataclasses.replace(model, head_layout=found.layout, pooler_actf=model.pooler_actf or found.actf)

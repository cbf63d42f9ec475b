"""Run under torchrun: train like ``train.py`` but stop after N optimizer steps, as a killed job would."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mt_dnn import distributed as dist_utils  # noqa: E402
from mt_dnn.config import parse_args  # noqa: E402
from mt_dnn.trainer import Trainer  # noqa: E402


def main() -> int:
    stop_after, argv = int(sys.argv[1]), sys.argv[2:]
    env = dist_utils.from_environment()
    dist_utils.init_process_group(env, "cpu")
    try:
        Trainer(parse_args(argv), env).fit(stop_after_steps=stop_after)
    finally:
        dist_utils.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

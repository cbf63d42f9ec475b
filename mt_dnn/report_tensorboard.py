"""TensorBoard scalars in ``OUTPUT_DIR/tensorboard`` (``--report_to tensorboard``, the default)."""
from __future__ import annotations

from data_utils.safe_paths import refuse_symlink
from mt_dnn.reporter_base import Reporter, RunInfo


class TensorBoardReporter(Reporter):
    def __init__(self, run: RunInfo):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(refuse_symlink(run.output_dir / "tensorboard")))

    def scalars(self, values: dict, step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()

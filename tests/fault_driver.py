"""Run a CLI (train.py, export.py, glue_submission.py, prepro_std.py) with one fault injected at a precise point:
``python tests/fault_driver.py POINT[:ARG][@RANK] SCRIPT [flags...]``.

The faults are real: the process sends itself SIGKILL (nothing runs after it, as with the OOM killer or a
power loss), or SIGTERM/SIGINT (handled as a scheduler's preemption or Ctrl-C would be). The point is reached
deterministically by wrapping the function where it lies, so no test depends on timing. ``@RANK`` injects
only in the torchrun rank of that number. Points:

- ``kill_after_step:N``: right after optimizer step N, before anything of that step is saved
- ``kill_in_eval:E``: during epoch E's evaluation, after its first score file is written
- ``kill_after_eval:E``: after epoch E's evaluation (metrics.jsonl, best/ written), before its checkpoint
- ``kill_in_checkpoint:NAME``: while the checkpoint folder NAME (step-6, best) is written, weights done
- ``term_at_batch:N`` / ``int_at_batch:N``: SIGTERM / SIGINT during micro-batch N's forward
- ``term_in_setup``: SIGTERM while the run reads its inputs, before training starts
- ``pause_after_step:N``: after step N, create the file named by $FAULT_READY and wait for $FAULT_GO
- ``kill_between_renames``: after atomic_folder parks the previous folder, before the new one takes its place
- ``kill_in_export``: after the export's files are in its temp folder, before the self-check
- ``int_in_prepro:N``: SIGINT while a shard is written, at its N-th chunk
"""
from __future__ import annotations

import importlib
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _kill() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _wrap(owner, name: str, before=None, after=None) -> None:
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        if before is not None:
            before(*args, **kwargs)
        result = original(*args, **kwargs)
        if after is not None:
            after(result, *args, **kwargs)
        return result
    setattr(owner, name, wrapper)


def _count(limit: int, action):
    """Run ``action`` at the ``limit``-th call."""
    calls = [0]

    def hook(*_args, **_kwargs):
        calls[0] += 1
        if calls[0] == limit:
            action()
    return hook


def _trainer_faults(point: str, arg: str) -> None:
    from mt_dnn import trainer as trainer_mod
    from mt_dnn.trainer import Trainer
    if point == "kill_after_step":
        _wrap(Trainer, "optimizer_step", after=lambda _r, self: self.global_step == int(arg) and _kill())
    elif point == "kill_in_eval":
        _wrap(trainer_mod, "write_scores", after=lambda _r, result, out, epoch: epoch == int(arg) and _kill())
    elif point == "kill_after_eval":
        _wrap(Trainer, "evaluate", after=lambda _r, self, epoch: epoch == int(arg) and _kill())
    elif point == "kill_in_checkpoint":
        from mt_dnn import checkpoint
        _wrap(checkpoint, "save_model",
              after=lambda _r, model, filename: Path(filename).parent.name.startswith(f".{arg}.") and _kill())
    elif point in ("term_at_batch", "int_at_batch"):
        signum = signal.SIGTERM if point == "term_at_batch" else signal.SIGINT
        _wrap(Trainer, "micro_batch_loss", before=_count(int(arg), lambda: os.kill(os.getpid(), signum)))
    elif point == "term_in_setup":
        _wrap(trainer_mod, "load_task_defs", before=lambda *a: os.kill(os.getpid(), signal.SIGTERM))
    elif point == "pause_after_step":
        def pause(_r, self):
            if self.global_step == int(arg):
                Path(os.environ["FAULT_READY"]).write_text(str(os.getpid()))
                while not Path(os.environ["FAULT_GO"]).exists():
                    time.sleep(0.05)
        _wrap(Trainer, "optimizer_step", after=pause)
    else:
        raise SystemExit(f"fault_driver.py: unknown point {point!r}")


def _file_faults(point: str, arg: str) -> None:
    if point == "kill_between_renames":
        from data_utils import atomic
        real_replace = os.replace

        def replace(src, dst):
            real_replace(src, dst)
            if Path(dst).name.endswith(atomic.old_copy_name("").split("-", 1)[1]):  # the previous one parked
                _kill()
        atomic.os.replace = replace
    elif point == "kill_in_export":
        from mt_dnn import hf_export
        _wrap(hf_export, "self_check", before=lambda *a, **k: _kill())
    elif point == "int_in_prepro":
        import prepro_std
        prepro_std.CHUNK_ROWS = 2
        _wrap(prepro_std, "check_unique_uids", before=_count(int(arg), lambda: os.kill(os.getpid(), signal.SIGINT)))
    else:
        _trainer_faults(point, arg)


def run_with_fault(fault: str, script: str, args: list, timeout: float = 300, **env) -> "subprocess.CompletedProcess":
    """For tests: ``script``'s main(args) in a fresh process, one thread, offline, with ``fault`` injected."""
    import subprocess
    environ = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **env)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        environ.pop(key, None)
    return subprocess.run([sys.executable, str(Path(__file__)), fault, script, *map(str, args)], cwd=ROOT,
                          env=environ, capture_output=True, text=True, timeout=timeout)


def main() -> int:
    # a user's process starts with Python's own Ctrl-C handler; an ignored SIGINT inherited from the test process
    # would make every interrupt case pass through silently
    signal.signal(signal.SIGINT, signal.default_int_handler)
    spec, script, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    spec, _, rank = spec.partition("@")
    point, _, arg = spec.partition(":")
    if not rank or rank == os.environ.get("RANK", "0"):
        _file_faults(point, arg)
    return importlib.import_module(script).main(argv)


if __name__ == "__main__":
    sys.exit(main())

"""The first GPU run, in one command: correctness of every CUDA path, then what each costs (``make gpu-check``).

No GLUE data and no downloaded model: the encoder is a random BERT-base built from its config, the data
synthetic (bench/synthetic_run.py). Sections run in this order, each within its own time budget (about nine
minutes in all); a step that would start past its section's budget is skipped and says so:

  a. the fused optimizer kernel against float64 on every BERT-base shape (fp32/bf16/fp16 parameters, AMP-scaled
     gradients, a misaligned bucket, NaN gradients), the self-check probe of every kernel variant, and the
     CUDA-only tests (``pytest -m cuda``);
  b. ``--compile`` under CUDA graphs against eager: padding rows, gradient accumulation, dropout masks that
     change between replays;
  c. eager BERT-base training in fp32, bf16 and fp16: samples/s, host syncs per step and where they come from;
  d. the optimizer step against the memory floor and torch's fused AdamW, host time, table-cache misses;
  e. DDP's unused-parameter search (2 GPUs or more), host syncs of a SMART micro-batch and of a resumed fused
     step, then BERT-base ``--compile``: compile time and memory per length bucket against eager speed.

Everything goes into one JSON file (``--out``) and a printed table, ratios side by side. A failed check is a
row with its one-line error (exit status 1), never the end of the run.

``--smoke`` is the CPU rehearsal that ``make test`` runs: tiny shapes, every section exercised where a CPU can
(the C kernel instead of Triton, an ``aot_eager`` compile instead of CUDA graphs, gloo instead of NCCL), the
rest skipped with the reason.

    python -m bench.gpu_check [--out bench/out/gpu_check.json] [--sections abcde] [--budget_scale 1.0]
    python -m bench.gpu_check --smoke --out /tmp/smoke.json
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run by its file path, where the project's packages do not import
    print("gpu_check.py: error: run it from the repository root as: python -m bench.gpu_check [flags]",
          file=sys.stderr)
    raise SystemExit(2)

from bench.gpu_check_core import SECTIONS, Check, results, table, write_json  # noqa: E402


# ------------------------------------------------------------------------------------------------ CLI
def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="CPU rehearsal: tiny shapes, CUDA-only steps skipped")
    p.add_argument("--device", default=None, help="default: cuda when available (cpu with --smoke)")
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "gpu_check.json"), help="the results file (JSON)")
    p.add_argument("--sections", default="abcde", help="which sections, in the fixed order (e.g. 'ad')")
    p.add_argument("--budget_scale", type=float, default=1.0, help="multiply every section's time budget")
    p.add_argument("--workdir", default=None, help="where the random encoder and synthetic data go (default: a "
                                                   "temporary folder)")
    args = p.parse_args(argv)
    if set(args.sections) - set(SECTIONS):
        p.error(f"--sections: unknown section(s) {''.join(sorted(set(args.sections) - set(SECTIONS)))}; "
                f"choose from {''.join(SECTIONS)}")
    if args.budget_scale <= 0:
        p.error("--budget_scale: must be > 0")
    device = args.device or ("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {device}: CUDA is not available here (use --smoke for the CPU rehearsal)")
    if not device.startswith("cuda") and not args.smoke:
        p.error("no CUDA device: this check is for a GPU; --smoke runs its CPU rehearsal")
    args.device = torch.device(device)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    from bench import gpu_check_sections as sections
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="gpu-check-")))
        check = Check(args.device, args.smoke, workdir, args.budget_scale)
        for sid in SECTIONS:
            if sid in args.sections:
                with check.section(sid):
                    sections.RUNNERS[sid](check)
                write_json(Path(args.out), results(check, started))  # what ran so far survives a kill
    data = results(check, started)
    write_json(Path(args.out), data)
    print(table(check))
    print(f"results: {args.out}" + (f"; failed: {', '.join(data['failed'])}" if data["failed"] else ""))
    return 1 if data["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Assemble a GLUE submission folder: ``python glue_submission.py --out glue_submission RUN [RUN ...] [--zip]``.

Each input is a training run's output folder (its best epoch's test predictions), a folder of predict.py output
with ``--tag predict``, or one ``{task}_{split}_submission_{tag}.tsv`` file. The folder gets the benchmark's
file names (CoLA.tsv, SST-2.tsv, ..., MNLI-m.tsv, MNLI-mm.tsv, AX.tsv from ``mnli_ax_test`` predictions), each
checked for the header, label names and the official number of test rows; ``--zip`` also writes the upload.
"""
from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("inputs", nargs="+", help="run output folders, prediction folders or submission TSV files")
    p.add_argument("--out", required=True, help="the submission folder to write")
    p.add_argument("--tag", default=None,
                   help="take folders' *_submission_TAG.tsv files (default: each run's best epoch)")
    p.add_argument("--zip", action="store_true", help="also write OUT.zip, ready to upload")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from data_utils.glue_submission import GLUE_FILES, assemble
    try:
        summary = assemble(args.inputs, args.out, args.tag, args.overwrite, args.zip,
                           report=lambda line: print(f"glue_submission.py: {line}", file=sys.stderr))
    except (ValueError, OSError) as exc:
        print(f"glue_submission.py: error: {exc}", file=sys.stderr)
        return 2
    if summary["missing"]:
        print(f"glue_submission.py: warning: {len(summary['missing'])} of {len(GLUE_FILES)} benchmark files "
              f"missing: {', '.join(summary['missing'])}", file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

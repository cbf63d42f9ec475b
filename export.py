#!/usr/bin/env python
"""Export a trained checkpoint as a Hugging Face folder: ``python export.py --checkpoint OUT/best --out hf_model``.

Without ``--task``: the encoder and its tokenizer (``AutoModel.from_pretrained(hf_model)``). With ``--task rte``
(a Classification or Regression task): ``AutoModelForSequenceClassification.from_pretrained(hf_model)`` with the
task's labels as id2label/label2id and its problem_type. The export is reloaded and compared with the checkpoint
before it is moved into place; a head with no exact Hugging Face counterpart is refused with the reason.
id2label is the order the head was trained with: a run whose YAML was since edited to other labels (order, names)
or another task type is refused (the checkpoint's ``task_labels.json`` records the trained ones).
"""
from __future__ import annotations

import argparse
import json
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a best/ or step-N/ folder written by train.py")
    p.add_argument("--out", required=True, help="the Hugging Face folder to write")
    p.add_argument("--task", default=None, help="also export this task's head (sequence classification)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer name or folder (default: the encoder the run started from)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from mt_dnn.hf_export import export
    try:
        summary = export(args.checkpoint, args.out, args.task, args.tokenizer, args.overwrite,
                         report=lambda line: print(f"export.py: {line}", file=sys.stderr))
    except (ValueError, OSError) as exc:
        print(f"export.py: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

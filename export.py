#!/usr/bin/env python
"""Export a trained checkpoint as a Hugging Face folder: ``python export.py --checkpoint OUT/best --out hf_model``.

Without ``--task``: the encoder and its tokenizer (``AutoModel.from_pretrained(hf_model)``). With ``--task rte``
(a Classification or Regression task): ``AutoModelForSequenceClassification.from_pretrained(hf_model)`` with the
task's labels as id2label/label2id and its problem_type. The export is reloaded and compared with the checkpoint
before it is moved into place; a head with no exact Hugging Face counterpart is refused with the reason.
id2label is the order the head was trained with: a run whose YAML was since edited to other labels (order, names)
or another task type is refused (the checkpoint's ``task_labels.json`` records the trained ones).
The folder carries a model card (``README.md``). ``--push_to_hub`` uploads it to the Hugging Face Hub
(``--hub_model_id``, ``--hub_token``, as transformers' TrainingArguments name them).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a best/, epoch-N/ or step-N/ folder written by train.py")
    p.add_argument("--out", required=True, help="the Hugging Face folder to write")
    p.add_argument("--task", default=None, help="also export this task's head (sequence classification)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer name or folder (default: the encoder the run started from)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    hub = p.add_argument_group("Hugging Face Hub (as transformers' TrainingArguments)")
    hub.add_argument("--push_to_hub", action="store_true", help="upload the exported folder to the Hub")
    hub.add_argument("--hub_model_id", default=None,
                     help="the Hub repository (default: the --out folder's name, under the token's user); also "
                          "the name the model card's loading snippet uses")
    hub.add_argument("--hub_token", default=None, help="the Hub token (default: HF_TOKEN or `hf auth login`'s)")
    hub.add_argument("--hub_private_repo", action="store_true", help="create the repository as private")
    return p


def _hub_token(args, repo: str) -> "str | None":
    """The push's token, checked (with the repository id) before anything is written; flags that only a push reads
    are refused alone."""
    if not args.push_to_hub:
        for flag in ("hub_token", "hub_private_repo"):
            if getattr(args, flag):
                raise ValueError(f"--{flag}: only used with --push_to_hub")
        return None
    from mt_dnn.hub_push import check_repo_id, token_for_push
    check_repo_id(repo)
    return token_for_push(args.hub_token)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from mt_dnn.hf_export import export
    from mt_dnn.hub_push import HubError, push
    repo = args.hub_model_id or (Path(args.out).name if args.push_to_hub else None)
    try:
        token = _hub_token(args, repo)
        summary = export(args.checkpoint, args.out, args.task, args.tokenizer, args.overwrite,
                         report=lambda line: print(f"export.py: {line}", file=sys.stderr), repo=repo)
    except (ValueError, OSError) as exc:
        print(f"export.py: error: {exc}", file=sys.stderr)
        return 2
    if token is not None:
        try:
            summary["pushed"] = push(Path(args.out), repo, token, args.hub_private_repo)
        except HubError as exc:
            print(f"export.py: error: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

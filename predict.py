#!/usr/bin/env python
"""Predict with a trained checkpoint: ``python predict.py --checkpoint OUT/best --task rte --split dev``.

Writes ``{task}_{split}_scores_{tag}.json`` (metrics when the split has labels, predictions, uids, scores) and, for
test splits, the GLUE submission TSV, into ``--output_dir`` (default: the checkpoint folder). Span tasks also write
``{task}_{split}_predictions_{tag}.json`` (SQuAD's format), SequenceLabeling tasks ``..._predictions_{tag}.conll``
(columns); their test "submission" is that same format.

The task definitions must agree with those the model was trained with (the checkpoint's ``task_labels.json``):
a YAML whose labels were reordered or renamed, or whose task type changed, is refused rather than followed, since
predictions are class ids named through the YAML and the shards' class ids were numbered by some version of it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="a best/ or step-N/ folder written by train.py")
    p.add_argument("--task", required=True, help="task name from the checkpoint's task definitions")
    p.add_argument("--split", default="dev", help="split name, e.g. dev, test, matched_dev")
    p.add_argument("--data_dir", default=None, help="shard folder (default: the training run's --data_dir)")
    p.add_argument("--task_def", default=None, help="task-definition YAML (default: the training run's)")
    p.add_argument("--output_dir", default=None)
    p.add_argument("--tag", default="predict", help="suffix of the output file names")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--max_seq_len", type=int, default=None)
    p.add_argument("--device", default="auto")
    return p


def run(args) -> dict:
    from data_utils.metrics import check_scorable
    from data_utils.shard_checks import encoder_limits
    from data_utils.shards import find_shard
    from mt_dnn.batcher import load_split
    from mt_dnn.evaluate import predict_split, write_scores, write_submission
    from mt_dnn.restore import restore
    from mt_dnn.runtime import pick_device

    from data_utils.safe_paths import check_output_root, plain_name
    folder = Path(args.checkpoint)
    plain_name(args.tag, "--tag")  # it names the output files
    if args.output_dir is not None:
        check_output_root(args.output_dir, "--output_dir", (args.data_dir,))
    restored = restore(folder, args.task_def)
    cfg, task_defs, model = restored.cfg, restored.task_defs, restored.model
    if args.task not in task_defs:
        raise ValueError(f"--task: '{args.task}' is not a task of this checkpoint ({', '.join(task_defs)})")
    td = task_defs[args.task]
    if args.split not in td.split_names:
        raise ValueError(f"--split: task {args.task} has splits {', '.join(td.split_names)}, not '{args.split}'")
    device = pick_device(args.device)
    model.to(device)
    limits = encoder_limits(model.encoder.config, cfg.init_checkpoint)
    data = load_split(args.data_dir or cfg.data_dir, td, args.split, args.max_seq_len or cfg.max_seq_len,
                      encoder=limits, cache=cfg.shard_cache)
    if td.has_labels(args.split) and not td.token_level:
        check_scorable(td, data.labels, str(find_shard(args.data_dir or cfg.data_dir, td.name, args.split)))
    result = predict_split(model, data, args.batch_size, device, restored.pad_id)
    out_dir = Path(args.output_dir or folder)
    scores = write_scores(result, out_dir, args.tag)
    summary = {"dataset": result.dataset, "metrics": result.metrics, "scores_file": str(scores)}
    if result.official is not None:
        summary["predictions_file"] = str(out_dir / f"{result.dataset}_predictions_{args.tag}{result.official[0]}")
    if result.metrics is None:
        sub = write_submission(result, td, out_dir / f"{result.dataset}_submission_{args.tag}.tsv")
        summary["submission_file"] = str(sub)
    return summary


def main(argv=None) -> int:
    from data_utils import jsonsafe
    args = build_parser().parse_args(argv)
    try:
        summary = run(args)
    except (ValueError, OSError) as exc:
        print(f"predict.py: error: {exc}", file=sys.stderr)
        return 2
    print(jsonsafe.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

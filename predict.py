#!/usr/bin/env python
"""Predict with a trained checkpoint: ``python predict.py --checkpoint OUT/best --task rte --split dev``.

Writes ``{task}_{split}_scores_{tag}.json`` (metrics when the split has labels, predictions, uids, scores) and, for
test splits, the GLUE submission TSV, into ``--output_dir`` (default: the checkpoint folder). Span tasks also write
``{task}_{split}_predictions_{tag}.json`` (SQuAD's format), SequenceLabeling tasks ``..._predictions_{tag}.conll``
(columns); their test "submission" is that same format. Score files are in MT-DNN's layout (one flat ``scores``
list: data_utils/score_file.py).

MT-DNN's command line works as written: ``--task_def --task --task_id --prep_input SHARD [--with_label] --score
FILE --max_seq_len --batch_size_eval [--metric] --checkpoint`` writes only the score file at ``--score`` (metrics
only with ``--with_label``, printed as MT-DNN prints them); ``--checkpoint`` may be MT-DNN's or the SAGE
repository's ``.pt``, whose ``scoring_list.{--task_id}`` head predicts ``--task``.

The task definitions must agree with those the model was trained with (the checkpoint's ``task_labels.json``):
a YAML whose labels were reordered or renamed, or whose task type changed, is refused rather than followed, since
predictions are class ids named through the YAML and the shards' class ids were numbered by some version of it.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
from pathlib import Path
from typing import Optional

from mt_dnn.cli_flags import PREDICT

MTDNN_MAX_SEQ_LEN = 512  # MT-DNN's predict.py default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a best/, epoch-N/ or step-N/ folder written by train.py, or an "
                                                       "MT-DNN / SAGE-repository .pt checkpoint")
    p.add_argument("--task", required=True, help="task name from the task definitions")
    p.add_argument("--split", default=None, help="split name, e.g. dev, test, matched_dev (default: dev)")
    p.add_argument("--data_dir", default=None, help="shard folder (default: the training run's --data_dir)")
    p.add_argument("--task_def", default=None, help="task-definition YAML (default: the training run's; for a .pt: "
                                                    "experiments/glue/glue_task_def.yml, as MT-DNN)")
    p.add_argument("--output_dir", default=None)
    p.add_argument("--tag", default="predict", help="suffix of the output file names")
    p.add_argument("--batch_size", "--batch_size_eval", dest="batch_size", type=int, default=64)
    p.add_argument("--max_seq_len", type=int, default=None,
                   help="default: the training run's; for a .pt, MT-DNN's 512")
    p.add_argument("--device", default="auto")
    mt = p.add_argument_group("MT-DNN's predict.py options")
    mt.add_argument("--prep_input", default=None, help="the tokenized shard to predict (instead of --data_dir and "
                                                       "--split); its name {task}_{split}.json gives the split")
    mt.add_argument("--score", default=None, help="the score file to write (MT-DNN's layout)")
    mt.add_argument("--with_label", action="store_true",
                    help="with --prep_input: compute and print metrics (without it the score file's metrics are "
                         "empty, as MT-DNN writes them)")
    mt.add_argument("--task_id", type=int, default=None,
                    help="the task's position in the training run's --train_datasets: the head scoring_list.N of "
                         "a .pt; checked against a checkpoint folder's task order")
    mt.add_argument("--metric", default=None, help="one metric instead of the task definition's metric_meta")
    mt.add_argument("--encoder_type", type=int, default=None, help="a .pt's encoder type when its config omits it")
    PREDICT.add_to(p, "MT-DNN predict.py flags without an option here")
    return p


# ---------------------------------------------------------------------------------------------- the model
@dataclasses.dataclass
class Predictor:
    """The model for ``--task`` and the defaults its training run gives."""
    task_def: object
    model: object
    pad_id: int
    max_seq_len: int
    shard_cache: bool
    data_dir: Optional[str]  # the training run's --data_dir (None for a .pt)
    encoder_name: str        # names the encoder in data errors


def _restore(args, checkpoint: Path) -> Predictor:
    """The model for ``--task`` from a checkpoint folder or a .pt."""
    from mt_dnn.restore import restore
    from mt_dnn.warm_start import checkpoint_kind
    if checkpoint_kind(str(checkpoint)) == "mtdnn":
        return _from_pt(args, checkpoint)
    restored = restore(checkpoint, args.task_def)
    cfg, task_defs = restored.cfg, restored.task_defs
    if args.task not in task_defs:
        raise ValueError(f"--task: '{args.task}' is not a task of this checkpoint ({', '.join(task_defs)})")
    if args.task_id is not None:
        order = list(dict.fromkeys(cfg.train_datasets))
        if args.task_id not in range(len(order)) or order[args.task_id] != args.task:
            at = f"is '{order[args.task_id]}'" if args.task_id in range(len(order)) else "does not exist"
            raise ValueError(f"--task_id {args.task_id}: task {args.task_id} of this checkpoint {at}, not "
                             f"'{args.task}' (its --train_datasets order: {', '.join(order)})")
    return Predictor(task_defs[args.task], restored.model, restored.pad_id, cfg.max_seq_len, cfg.shard_cache,
                     cfg.data_dir, cfg.init_checkpoint)


def _from_pt(args, path: Path) -> Predictor:
    """An MT-DNN / SAGE-repository checkpoint: the encoder, and the head ``scoring_list.{task_id}`` for ``--task``
    (its position from --task_id, or from the task order the checkpoint's config saved)."""
    from data_utils.task_def import load_task_defs, select_tasks
    from mt_dnn.config import TrainConfig
    from mt_dnn.warm_start import start_model
    task_def = args.task_def or TrainConfig.task_def
    td = select_tasks(load_task_defs(task_def), [args.task], source=task_def)[args.task]
    order = [f"-{i}" for i in range(args.task_id or 0)] + [args.task]  # used when the config lists no tasks
    cfg = TrainConfig(train_datasets=order, task_def=task_def, init_checkpoint=str(path),
                      encoder_type=args.encoder_type)
    start = start_model(cfg.warm_start_settings(), {args.task: td})
    origin = start.source.head_origin.get(args.task)
    if args.task_id is not None and origin != f"scoring_list.{args.task_id}":
        where = f"its head is {origin}" if origin else "it has no head for it"
        raise ValueError(f"--task_id {args.task_id}: {path} does not hold task '{args.task}' at scoring_list."
                         f"{args.task_id} ({where}; {start.source.mapping})")
    if origin is None:
        raise ValueError(f"--task {args.task}: {path} has no head for it ({start.source.mapping}); give --task_id")
    config = start.model.encoder.config
    return Predictor(td, start.model, config.pad_token_id or 0, MTDNN_MAX_SEQ_LEN, True, None, str(path))


# ---------------------------------------------------------------------------------------------- the data
def _prep_input_split(path: Path, task: str) -> str:
    """The split a shard file's name gives: ``{task}_{split}.json`` or ``.jsonl``."""
    m = re.fullmatch(re.escape(task) + r"_(.+)\.jsonl?", path.name)
    if not m:
        raise ValueError(f"--prep_input {path}: expected a shard named {task}_<split>.json (MT-DNN's "
                         f"{task}_dev.json, {task}_test.json, ...), which says its split")
    return m.group(1)


def _data(args, pred: Predictor, limits):
    """The split to predict, and the shard file it came from."""
    from data_utils.shards import find_shard
    from data_utils.task_def import split_role
    from mt_dnn.batcher import load_shard, load_split
    td, max_len, cache = pred.task_def, args.max_seq_len or pred.max_seq_len, pred.shard_cache
    if args.prep_input is None:
        split = args.split or "dev"
        if split not in td.split_names:
            raise ValueError(f"--split: task {args.task} has splits {', '.join(td.split_names)}, not '{split}'")
        data_dir = args.data_dir or pred.data_dir
        if data_dir is None:
            raise ValueError("--data_dir: give the shard folder (or MT-DNN's --prep_input SHARD): a .pt checkpoint "
                             "does not say where its training data was")
        data = load_split(data_dir, td, split, max_len, encoder=limits, cache=cache)
        return data, find_shard(data_dir, td.name, split)
    if args.split is not None or args.data_dir is not None:
        raise ValueError("--prep_input names the shard and its split: leave out --split and --data_dir")
    path = Path(args.prep_input)
    split = _prep_input_split(path, args.task)
    if path.suffix == ".json" and not path.is_file() and path.with_suffix(".jsonl").is_file():
        path = path.with_suffix(".jsonl")  # MT-DNN's name of the shard prepro_std.py writes as .jsonl
    try:
        split_role(split)
    except ValueError:
        raise ValueError(f"--prep_input {path}: the split '{split}' names no train, dev or test role") from None
    return load_shard(path, td, split, max_len, encoder=limits, cache=cache), path


def _check_upstream(args) -> None:
    if args.prep_input is not None and args.score is None:
        raise ValueError("--score: give the score file to write (MT-DNN's predict.py writes it there)")
    if args.score is not None:
        score = Path(args.score)
        if not score.parent.is_dir():
            raise ValueError(f"--score {score}: folder {score.parent} does not exist")
        if args.prep_input is not None and score.resolve() == Path(args.prep_input).resolve():
            raise ValueError(f"--score {score}: that is the --prep_input shard")


# ---------------------------------------------------------------------------------------------- the run
def run(args) -> dict:
    from data_utils.metrics import check_scorable, get_metric
    from data_utils.shard_checks import encoder_limits
    from mt_dnn.evaluate import predict_split, write_score_file, write_scores, write_submission
    from mt_dnn.runtime import pick_device

    from data_utils.safe_paths import check_output_root, plain_name
    folder = Path(args.checkpoint)
    plain_name(args.tag, "--tag")  # it names the output files
    if args.output_dir is not None:
        check_output_root(args.output_dir, "--output_dir", (args.data_dir,))
    _check_upstream(args)
    if args.metric is not None:
        try:
            get_metric(args.metric)
        except ValueError as exc:
            raise ValueError(f"--metric {args.metric}: {exc}") from None
    pred = _restore(args, folder)
    if args.metric is not None:
        pred.task_def = dataclasses.replace(pred.task_def, metric_meta=(args.metric,))
    td = pred.task_def
    device = pick_device(args.device)
    pred.model.to(device)
    data, shard = _data(args, pred, encoder_limits(pred.model.encoder.config, pred.encoder_name))
    labelled = td.has_labels(data.split)
    if args.with_label and not labelled:
        raise ValueError(f"--with_label: {data.name} is a test split (its shard's labels are placeholders)")
    if labelled and not td.token_level:
        check_scorable(td, data.labels, str(shard))
    result = predict_split(pred.model, data, args.batch_size, device, pred.pad_id)
    if args.prep_input is not None:
        metrics = result.metrics if args.with_label else {}
        path = write_score_file(result, Path(args.score), metrics=metrics)
        return {"dataset": result.dataset, "metrics": metrics, "scores_file": str(path), "upstream": True}
    out_dir = Path(args.output_dir or (folder if folder.is_dir() else folder.parent))
    scores = (write_score_file(result, Path(args.score), tag=args.tag) if args.score is not None
              else write_scores(result, out_dir, args.tag))
    summary = {"dataset": result.dataset, "metrics": result.metrics, "scores_file": str(scores)}
    if result.official is not None:
        summary["predictions_file"] = str(scores.parent / f"{result.dataset}_predictions_{args.tag}"
                                          f"{result.official[0]}")
    if result.metrics is None:
        sub = write_submission(result, td, out_dir / f"{result.dataset}_submission_{args.tag}.tsv")
        summary["submission_file"] = str(sub)
    return summary


def main(argv=None) -> int:
    from data_utils import jsonsafe
    args = build_parser().parse_args(argv)
    try:
        for line in PREDICT.notices(args):
            print(line, file=sys.stderr)
        summary = run(args)
    except (ValueError, OSError) as exc:
        print(f"predict.py: error: {exc}", file=sys.stderr)
        return 2
    if summary.pop("upstream", False):
        if args.with_label:
            print(summary["metrics"])  # MT-DNN's predict.py prints the metrics dict
        return 0
    print(jsonsafe.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tokenize canonical TSVs into JSON-lines shards for one encoder, guided by a task-definition YAML.

    {root_dir}/{task}_{split}.tsv  ->  {root_dir}/{model_short_name}/{task}_{split}.jsonl

A task whose definition names a ``data:`` source (CSV/JSON/Parquet files, a ``datasets`` dataset or a
``save_to_disk`` folder; see data_utils/hf_data.py) is read with ``datasets`` into the same rows and shards.
Span tasks (data_format MRC) read SQuAD's official JSON, ``{task}_{split}.json``, and SequenceLabeling tasks
(data_format Seqence) CoNLL-2003 column files, ``{task}_{split}.conll``: see data_utils/squad.py and
data_utils/conll.py; they are encoded in this process with the tokenizer's offsets and word ids.

The main process reads each TSV and hands chunks of ~2,048 lines to ``--workers`` processes, which validate
the rows, tokenize them in one batch call of the Rust fast tokenizer and format the JSON lines; the main process
checks uid uniqueness and writes the chunks in order to a temp file that is renamed when complete. Splits under
POOL_MIN_ROWS are encoded in the main process until a pool exists (with ``--workers`` > 1 the Rust tokenizer
then runs on that many threads), since starting worker processes would cost more than it saves. A small ``.jsonl.stamp`` next to each shard records a
hash of everything the shard depends on (TSV bytes, task definition, tokenizer, max length), so a re-run skips
shards that are up to date unless ``--force``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import pretrained_models
from data_utils import shards
from data_utils.atomic import atomic_write, clean_stale_temps
from data_utils.encoding import (Chunk, EncodeSpec, build_backend, encode_chunk, encode_in_worker, encode_rows,
                                 init_worker, spec_from_hf)
from data_utils.conll import ConllError, encode_conll, read_conll
from data_utils.hf_data import HfDataError, load_source, read_split, source_digest
from data_utils.hf_spec import SplitSource
from data_utils.run_glue_task import RunGlueData, task_definition_text
from data_utils.resources import check_parallelism
from data_utils.safe_load import read_json
from data_utils.shard_checks import encoder_positions
from data_utils.shards import shard_path
from data_utils.squad import PairLayout, SquadError, encode_squad, read_squad
from data_utils.task_def import DataFormat, TaskDef, TaskDefError, TaskType, load_task_defs, select_tasks
from data_utils.tsv import CanonicalSplit, TsvError, check_unique_uids, decode_lines, keeps_labels
from module import encoders
from mt_dnn.cli_flags import PREPRO_STD

ROOT = Path(__file__).resolve().parent
RUN_GLUE_FLAGS = ("train_file", "validation_file", "test_file", "dataset_name", "dataset_config_name")
CHUNK_ROWS = 2048
POOL_MIN_ROWS = 16384  # below this a split takes well under a second in one process; workers start in ~0.3 s
STAMP_VERSION = 2  # 2: test splits keep their TSV's labels when all are the task's


class PreproError(ValueError):
    """A one-line, user-facing problem (bad flag, unloadable tokenizer, nothing to do)."""


@dataclass(frozen=True)
class PreproConfig:
    model: str = pretrained_models.DEFAULT_ENCODER
    root_dir: str = "data/canonical_data"
    task_def: str = str(ROOT / "experiments" / "glue" / "glue_task_def.yml")
    tasks: Optional[tuple[str, ...]] = None
    max_seq_len: int = 512
    workers: int = 1
    force: bool = False
    do_lower_case: bool = False


@dataclass(frozen=True)
class ShardResult:
    task: str
    split: str
    status: str          # "written", "up to date" or "missing"
    path: Path
    rows: int = 0
    seconds: float = 0.0


# ------------------------------------------------------------------------------------------ tokenizer
def load_spec(cfg: PreproConfig) -> EncodeSpec:
    try:
        tokenizer = encoders.load_tokenizer(cfg.model)
    except Exception as exc:  # HF raises OSError/ValueError/... with multi-line text; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PreproError(f"--model {cfg.model}: cannot load a fast tokenizer: {first}") from None
    minimum = tokenizer.num_special_tokens_to_add(pair=True) + 2
    positions = _positions(cfg.model, tokenizer)
    if positions is not None and cfg.max_seq_len > positions:
        raise PreproError(f"--max_seq_len {cfg.max_seq_len} is longer than {cfg.model} accepts: its encoder has "
                          f"{positions} positions; use --max_seq_len {positions} or less")
    if cfg.max_seq_len < minimum:
        raise PreproError(f"--max_seq_len {cfg.max_seq_len} is too small for {cfg.model}: "
                          f"pairs need at least {minimum} (special tokens plus one token per text)")
    if cfg.do_lower_case and tokenizer.backend_tokenizer.normalizer is not None \
            and tokenizer.backend_tokenizer.normalizer.normalize_str("A") != "a":
        raise PreproError(f"--do_lower_case: the tokenizer of {cfg.model} is cased and lower-casing is the "
                          "tokenizer's own setting; pick an uncased model or drop the flag")
    if cfg.do_lower_case and tokenizer.backend_tokenizer.normalizer is None:
        raise PreproError(f"--do_lower_case: the tokenizer of {cfg.model} does not lower-case; pick an uncased "
                          "model or drop the flag")
    return spec_from_hf(tokenizer, cfg.max_seq_len)


def _positions(model: str, tokenizer) -> Optional[int]:
    """How many tokens the encoder embeds: its config's position embeddings, else the tokenizer's own limit."""
    try:
        return encoder_positions(encoders.load_config(model))
    except ValueError:  # a tokenizer-only folder: no model config next to it
        limit = getattr(tokenizer, "model_max_length", None)
        return int(limit) if isinstance(limit, int) and limit < 1_000_000 else None


# ------------------------------------------------------------------------------------------ stamps
def _stamp_path(shard: Path) -> Path:
    return shard.with_name(shard.name + ".stamp")


def _fingerprint(data: bytes, td: TaskDef, split: str, spec: EncodeSpec) -> str:
    h = hashlib.sha256()
    h.update(data)
    meta = dict(version=STAMP_VERSION, task=td.name, split=split, task_type=td.task_type.name,
                data_format=td.data_format.name, n_class=td.n_class, labels=td.labels, labelled=td.has_labels(split),
                max_seq_len=spec.max_seq_len, type_ids=spec.type_ids,
                tokenizer=hashlib.sha256(spec.tokenizer_json.encode("utf-8")).hexdigest())
    if td.span is not None:  # windowing settings shape Span shards
        meta["span"] = [td.span.doc_stride, td.span.max_query_len, td.span.unanswerable]
    h.update(json.dumps(meta, sort_keys=True).encode("utf-8"))
    return h.hexdigest()


def _up_to_date(shard: Path, fingerprint: str) -> bool:
    try:
        stamp = read_json(_stamp_path(shard))
        return stamp.get("inputs") == fingerprint and shard.stat().st_size == stamp.get("shard_bytes")
    except (OSError, ValueError):
        return False


def _write_stamp(shard: Path, fingerprint: str, rows: int) -> None:
    with atomic_write(_stamp_path(shard)) as handle:
        json.dump({"inputs": fingerprint, "rows": rows, "shard_bytes": shard.stat().st_size}, handle)


# ------------------------------------------------------------------------------------------ encoding
def chunks(tsv: Path, lines: list[str], td: TaskDef, split: str) -> Iterator[Chunk]:
    """About CHUNK_ROWS sequences per chunk: enough to amortize a batch call and the hand-off to a worker."""
    step = max(1, CHUNK_ROWS // (td.n_class if td.data_format is DataFormat.PremiseAndMultiHypothesis else 1))
    labelled = keeps_labels(lines, td, split)  # one decision for the whole file
    for i in range(0, len(lines), step):
        yield Chunk(str(tsv), i + 1, lines[i:i + step], td, split, labelled)


@contextlib.contextmanager
def tokenizer_threads(enabled: bool) -> Iterator[None]:
    """The Rust tokenizer reads TOKENIZERS_PARALLELISM at each batch call; set it for one call, then restore."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


class Encoder:
    """Turns chunks into (shard text, uids), in order: in this process (workers=1) or a spawned process pool."""

    def __init__(self, spec: EncodeSpec, workers: int):
        self.spec, self.workers = spec, workers
        self._tok = None
        self._pool = None

    def map(self, items: Iterator[Chunk], n_rows: int) -> Iterator[tuple[str, list[str]]]:
        """Small splits stay in this process until a pool exists (starting workers costs more than it saves);
        with workers > 1 the Rust tokenizer then uses its own threads instead."""
        if self.workers <= 1 or (self._pool is None and n_rows < POOL_MIN_ROWS):
            return self._in_process(items, threads=self.workers > 1)
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")  # fork after Rust threads have started can deadlock
            self._pool = ctx.Pool(self.workers, initializer=init_worker, initargs=(self.spec,))
        return self._pool.imap(encode_in_worker, items)

    def _in_process(self, items: Iterator[Chunk], threads: bool) -> Iterator[tuple[str, list[str]]]:
        if threads:  # read once, when the Rust side first starts its threads; an explicit setting wins
            os.environ.setdefault("RAYON_NUM_THREADS", str(self.workers))
        if self._tok is None:
            self._tok = build_backend(self.spec)
        for chunk in items:
            with tokenizer_threads(threads):
                result = encode_chunk(self._tok, self.spec, chunk)
            yield result

    def backend(self):
        """This process's tokenizer (built once)."""
        if self._tok is None:
            self._tok = build_backend(self.spec)
        return self._tok

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def write_shard(tsv: Path, lines: list[str], td: TaskDef, split: str, shard: Path, encoder: Encoder) -> int:
    """Validate, tokenize and write one split; on any error the temp file goes and ``shard`` stays as it was."""
    seen: dict[str, int] = {}
    first_line = 1
    with atomic_write(shard) as handle:
        for text, uids in encoder.map(chunks(tsv, lines, td, split), len(lines)):
            check_unique_uids(tsv, uids, first_line, seen)
            first_line += len(uids)
            handle.write(text)
    return len(lines)


# ------------------------------------------------------------------------------------------ driver
#: The input file of each data format that is not a canonical TSV.
INPUT_SUFFIX = {DataFormat.MRC: ".json", DataFormat.Seqence: ".conll"}


def _jobs(cfg: PreproConfig, task_defs: dict[str, TaskDef]):
    """(task, split, input, shard): the input is a canonical file under --root_dir, or the task's data: source
    (None where its data block has no such split)."""
    for td in task_defs.values():
        suffix = INPUT_SUFFIX.get(td.data_format, ".tsv")
        if td.data is not None:  # the task's own sources: its split_names, nothing beyond them
            for split in td.split_names:
                yield td, split, td.data.source(split), shard_path(cfg.root_dir, cfg.model, td.name, split)
            continue
        for split in td.shard_splits():
            source = Path(cfg.root_dir) / f"{td.name}_{split}{suffix}"
            if split in td.split_names or source.is_file():  # the train/dev MT-DNN reads beyond split_names
                yield td, split, source, shard_path(cfg.root_dir, cfg.model, td.name, split)


def token_level_lines(path: Path, td: TaskDef, split: str, spec: EncodeSpec) -> list[str]:
    """Shard lines of a SQuAD JSON (Span) or CoNLL column file (SequenceLabeling), encoded in this process."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(spec.tokenizer_json)
    tok.no_padding()
    labelled = td.has_labels(split)
    if td.task_type is TaskType.Span:
        tok.no_truncation()  # windows are cut here, from the whole context
        questions = read_squad(path, labelled, td.span.unanswerable)
        return encode_squad(tok, PairLayout.probe(tok, spec.type_ids), questions, td.span, spec.max_seq_len,
                            str(path), for_eval=td.split_role(split) != "train")
    tok.enable_truncation(max_length=spec.max_seq_len, strategy="longest_first", direction="right")
    sentences = read_conll(path, labelled, td.labels)
    return encode_conll(tok, sentences, {t: i for i, t in enumerate(td.labels)}, spec.type_ids, str(path))


def run(cfg: PreproConfig, log=print) -> list[ShardResult]:
    """Build every shard of the selected tasks; missing TSVs are reported and skipped."""
    if cfg.workers < 1:
        raise PreproError(f"--workers must be >= 1, got {cfg.workers}")
    try:
        check_parallelism("--workers", cfg.workers, "processes")
        shards.model_short_name(cfg.model)  # names the shard folder: refused before any work
    except ValueError as exc:
        raise PreproError(str(exc)) from None
    task_defs = load_task_defs(cfg.task_def)
    if cfg.tasks:
        task_defs = select_tasks(task_defs, cfg.tasks, cfg.task_def)
    spec = load_spec(cfg)
    for folder in sorted({shard.parent for _, _, _, shard in _jobs(cfg, task_defs)}):
        for what in clean_stale_temps(folder):
            log(f"{folder}: {what} (left by an interrupted run)")
    encoder = Encoder(spec, cfg.workers)
    results = []
    try:
        for td, split, tsv, shard in _jobs(cfg, task_defs):
            results.append(_one(td, split, tsv, shard, spec, encoder, cfg.force))
            log(_describe(results[-1]))
    finally:
        encoder.close()
    if all(r.status == "missing" for r in results):
        raise PreproError(f"no canonical TSVs found under {cfg.root_dir} for tasks {', '.join(task_defs)} "
                          "(run python -m experiments.glue.glue_prepro first?)")
    return results


def _one_source(td: TaskDef, split: str, source: SplitSource, shard: Path, spec: EncodeSpec, encoder: Encoder,
                force: bool) -> ShardResult:
    """One split of a data: source: read with datasets, checked into canonical rows, encoded like a TSV's."""
    start = time.perf_counter()
    dataset = None if source.files or source.saved else load_source(source)  # files are hashed, not loaded
    fingerprint = _fingerprint(source_digest(source, dataset) + repr(td.data.columns).encode("utf-8"), td, split,
                               spec)
    if not force and _up_to_date(shard, fingerprint):
        return ShardResult(td.name, split, "up to date", shard)
    rows = read_split(td, split, source, dataset)
    tok = encoder.backend()
    with atomic_write(shard) as handle:
        for i in range(0, len(rows), CHUNK_ROWS):
            part = CanonicalSplit(rows.path, rows.uids[i:i + CHUNK_ROWS], rows.labels[i:i + CHUNK_ROWS],
                                  rows.premises[i:i + CHUNK_ROWS],
                                  None if rows.hypotheses is None else rows.hypotheses[i:i + CHUNK_ROWS])
            handle.write(encode_rows(tok, spec, part, td))
    _write_stamp(shard, fingerprint, len(rows))
    return ShardResult(td.name, split, "written", shard, len(rows), time.perf_counter() - start)


def _one(td: TaskDef, split: str, tsv, shard: Path, spec: EncodeSpec, encoder: Encoder,
         force: bool) -> ShardResult:
    if isinstance(tsv, SplitSource):
        return _one_source(td, split, tsv, shard, spec, encoder, force)
    if tsv is None:
        return ShardResult(td.name, split, "missing", Path(f"data.{split} of task {td.name}"))
    if not tsv.is_file():
        return ShardResult(td.name, split, "missing", tsv)
    start = time.perf_counter()
    data = tsv.read_bytes()
    fingerprint = _fingerprint(data, td, split, spec)
    if not force and _up_to_date(shard, fingerprint):
        return ShardResult(td.name, split, "up to date", shard)
    if td.token_level:
        lines = token_level_lines(tsv, td, split, spec)
        with atomic_write(shard) as handle:
            handle.writelines(lines)
        rows = len(lines)
    else:
        rows = write_shard(tsv, decode_lines(data, tsv), td, split, shard, encoder)
    _write_stamp(shard, fingerprint, rows)
    return ShardResult(td.name, split, "written", shard, rows, time.perf_counter() - start)


def _describe(r: ShardResult) -> str:
    if r.status == "missing":
        return f"{r.task}_{r.split}: {r.path} not found, skipped"
    if r.status == "up to date":
        return f"{r.task}_{r.split}: {r.path} is up to date (--force rebuilds it)"
    rate = r.rows / r.seconds if r.seconds > 0 else float("inf")
    return f"{r.task}_{r.split}: {r.rows} rows -> {r.path} ({r.seconds:.2f}s, {rate:,.0f} rows/s)"


def one_task(cfg: PreproConfig, data: RunGlueData) -> PreproConfig:
    """run_glue.py's data flags: the one task's definition is written to {root_dir}/task_def.yml, and built."""
    if cfg.task_def != PreproConfig.task_def or cfg.tasks:
        raise PreproError("--train_file/--dataset_name write their own task definition ({root_dir}/task_def.yml, "
                          "task 'task'); drop --task_def and --tasks")
    text = task_definition_text(data)
    path = Path(cfg.root_dir) / "task_def.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as handle:
        handle.write(text)
    return dataclasses.replace(cfg, task_def=str(path))


def task_names(words: Optional[Sequence[str]]) -> Optional[tuple[str, ...]]:
    """``--tasks rte mrpc`` and ``--tasks rte,mrpc`` name the same tasks: download.sh and sweep.py take commas, so
    a user's muscle memory should not meet an "unknown task 'rte,mrpc'" here."""
    names = tuple(n.strip() for word in words or () for n in word.split(",") if n.strip())
    return names or None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=PreproConfig.model,
                   help="HF hub name, local folder, or a pretrained_models.py registry name")
    p.add_argument("--root_dir", default=PreproConfig.root_dir,
                   help="folder of the canonical TSVs (SQuAD JSON: {task}_{split}.json, CoNLL: {task}_{split}.conll)")
    p.add_argument("--task_def", default=PreproConfig.task_def, help="task-definition YAML")
    p.add_argument("--tasks", nargs="+", default=None,
                   help="only these tasks, space- or comma-separated as in download.sh and sweep.py "
                        "(default: all in --task_def)")
    p.add_argument("--max_seq_len", type=int, default=PreproConfig.max_seq_len)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="tokenizer processes (default: min(2, CPUs))")
    p.add_argument("--force", action="store_true", help="rebuild shards even when up to date")
    p.add_argument("--do_lower_case", action="store_true",
                   help="MT-DNN compatibility: checks that the tokenizer lower-cases (it is the tokenizer's setting)")
    PREPRO_STD.add_to(p, "MT-DNN and SAGE-repository flags without an effect here")
    hf = p.add_argument_group("HF run_glue.py's data flags: one task, named 'task', its definition written to "
                              "{root_dir}/task_def.yml")
    for flag in RUN_GLUE_FLAGS:
        hf.add_argument(f"--{flag}", default=None)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parsed = build_parser().parse_args(argv)
    for line in PREPRO_STD.notices(parsed):
        print(line, file=sys.stderr)
    args = vars(parsed)
    glue = RunGlueData(**{flag: args.pop(flag) for flag in RUN_GLUE_FLAGS})
    cfg = PreproConfig(**{**args, "tasks": task_names(args["tasks"])})
    try:
        run(one_task(cfg, glue) if glue.given else cfg)
    except (PreproError, TaskDefError, TsvError, SquadError, ConllError, HfDataError, OSError) as exc:  # OSError: a full disk
        print(f"prepro_std.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # the shard being written is discarded (a temp file); the finished ones stay
        print("prepro_std.py: interrupted; shards written so far are complete and the one in progress was "
              "discarded; run it again to finish (up-to-date shards are skipped)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

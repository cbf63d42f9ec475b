"""Hugging Face data: a task definition's ``data:`` block (CSV/JSON/Parquet files, a ``save_to_disk`` folder) and
train.py's run_glue.py flags (``--train_file``...), read with ``datasets`` offline.

The same rows given as canonical TSV, CSV, JSON lines, Parquet and a saved DatasetDict give byte-identical shards;
MiniLM-L6 trained on the CSV (through train.py) and on the saved dataset reaches exactly the dev metrics and
scores of the TSV run. Every bad input is one line naming the file, field or row.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # before datasets is imported: nothing here uses the network

import prepro_std  # noqa: E402
import train  # noqa: E402
from data_utils.hf_data import HfDataError, load_source, read_split  # noqa: E402
from data_utils.hf_spec import SplitSource  # noqa: E402
from data_utils.run_glue_task import RunGlueData, task_definition  # noqa: E402
from data_utils.task_def import TaskDefError, load_task_defs, parse_task_defs  # noqa: E402
from data_utils.tsv import read_canonical  # noqa: E402
from mt_dnn.config import TrainConfig  # noqa: E402
from mt_dnn.trainer import Trainer  # noqa: E402

datasets = pytest.importorskip("datasets")
ROOT = Path(__file__).resolve().parents[1]
MODEL = "minilm-l6"
QUIET = dict(log=lambda msg: None)
RTE_LABELS = ["not_entailment", "entailment"]  # the GLUE task file's order; run_glue.py sorts: entailment first
N_TRAIN, N_DEV = 48, 24


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """datasets' own cache in tmp_path (datasets reads HF_DATASETS_CACHE at import, so its config is set here)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    datasets.disable_progress_bars()  # the error-line tests read stderr whole
    yield tmp_path / "hf-cache"
    datasets.enable_progress_bars()


def rte_rows(glue_dir: Path, split: str, n: int) -> list[dict]:
    with open(glue_dir / "RTE" / f"{split}.tsv", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "label": r["label"]}
                for r, _ in zip(reader, range(n))]


def write_tsv(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(f"{i}\t{r['label']}\t{r['sentence1']}\t{r['sentence2']}\n" for i, r in enumerate(rows)),
                    encoding="utf-8")


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sentence1", "sentence2", "label"])
        writer.writeheader()
        writer.writerows(rows)


def task_yaml(name: str, labels, extra: str = "") -> str:
    return (f"{name}:\n  task_type: Classification\n  data_format: PremiseAndOneHypothesis\n"
            f"  labels: [{', '.join(labels)}]\n  metric_meta: [ACC]\n{extra}")


def build(task_def: Path, root: Path) -> Path:
    prepro_std.run(prepro_std.PreproConfig(model=MODEL, root_dir=str(root), task_def=str(task_def), max_seq_len=32,
                                           workers=1), **QUIET)
    return root / MODEL


def shard_bytes(folder: Path, task: str) -> dict[str, bytes]:
    return {split: (folder / f"{task}_{split}.jsonl").read_bytes() for split in ("train", "dev")}


TRAIN_SETTINGS = dict(init_checkpoint=MODEL, epochs=1, batch_size=8, max_seq_len=32, learning_rate=1e-4,
                      tensorboard=False, seed=7)


def train_in_process(task_def: Path, data_dir: Path, task: str, out: Path) -> Path:
    Trainer(TrainConfig(train_datasets=[task], test_datasets=[task], task_def=str(task_def), data_dir=str(data_dir),
                        output_dir=str(out), **TRAIN_SETTINGS)).fit()
    return out


def results(run: Path, task: str) -> tuple[list[dict], dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return records, json.loads((run / f"{task}_dev_scores_0.json").read_text())


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.training
def test_save_to_disk_dataset_trains_to_the_tsv_runs_metrics(glue_dir, tmp_path):
    """A DatasetDict saved with save_to_disk, its label a ClassLabel in another order than the task's labels
    (mapped by name): same shards as the canonical TSV, same dev metrics and scores after training."""
    train_rows, dev_rows = rte_rows(glue_dir, "train", N_TRAIN), rte_rows(glue_dir, "dev", N_DEV)
    canonical = tmp_path / "canonical"
    canonical.mkdir()
    write_tsv(canonical / "rte_train.tsv", train_rows)
    write_tsv(canonical / "rte_dev.tsv", dev_rows)
    (tmp_path / "tsv.yml").write_text(task_yaml("rte", RTE_LABELS, "  split_names: [train, dev]\n"))
    tsv_shards = build(tmp_path / "tsv.yml", canonical)

    features = datasets.Features({"sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["entailment", "not_entailment"])})
    saved = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(train_rows, features=features),
        "validation": datasets.Dataset.from_list(dev_rows, features=features)})
    saved.save_to_disk(str(tmp_path / "rte-saved"))
    assert saved["train"].features["label"].str2int("entailment") == 0  # ids differ from the task's order
    (tmp_path / "saved.yml").write_text(task_yaml("rte", RTE_LABELS, (
        "  data:\n    train: {saved: rte-saved, split: train}\n    dev: {saved: rte-saved, split: validation}\n"
        "  columns: {premise: sentence1, hypothesis: sentence2, label: label}\n")))
    hf_shards = build(tmp_path / "saved.yml", tmp_path / "from-saved")
    assert shard_bytes(hf_shards, "rte") == shard_bytes(tsv_shards, "rte")

    tsv_run = train_in_process(tmp_path / "tsv.yml", tsv_shards, "rte", tmp_path / "tsv-run")
    hf_run = train_in_process(tmp_path / "saved.yml", hf_shards, "rte", tmp_path / "hf-run")
    assert results(hf_run, "rte") == results(tsv_run, "rte")
    assert len(results(hf_run, "rte")[1]["uids"]) == N_DEV


@pytest.mark.training
def test_train_file_csv_run_equals_the_tsv_run(glue_dir, tmp_path, datasets_cache):
    """train.py --train_file/--validation_file as run_glue.py takes them: the one task (labels sorted as run_glue.py
    sorts them) gets the shards and the dev metrics of the same rows as canonical TSV."""
    train_rows, dev_rows = rte_rows(glue_dir, "train", N_TRAIN), rte_rows(glue_dir, "dev", N_DEV)
    write_csv(tmp_path / "train.csv", train_rows)
    write_csv(tmp_path / "dev.csv", dev_rows)
    canonical = tmp_path / "canonical"
    canonical.mkdir()
    write_tsv(canonical / "task_train.tsv", train_rows)
    write_tsv(canonical / "task_dev.tsv", dev_rows)
    (tmp_path / "tsv.yml").write_text(task_yaml("task", sorted(RTE_LABELS), "  split_names: [train, dev]\n"))
    tsv_shards = build(tmp_path / "tsv.yml", canonical)
    tsv_run = train_in_process(tmp_path / "tsv.yml", tsv_shards, "task", tmp_path / "tsv-run")

    out = tmp_path / "csv-run"
    flags = [f"--{k}={v}" for k, v in TRAIN_SETTINGS.items() if k != "tensorboard"]
    assert train.main(["--train_file", str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "dev.csv"),
                       "--output_dir", str(out), "--no_tensorboard", *flags]) == 0
    data = tmp_path / "csv-run-data"
    assert load_task_defs(data / "task_def.yml")["task"].labels == ("entailment", "not_entailment")
    assert shard_bytes(data / MODEL, "task") == shard_bytes(tsv_shards, "task")
    assert results(out, "task") == results(tsv_run, "task")
    assert any(datasets_cache.rglob("*.arrow"))  # datasets' Arrow copy went to its own cache


# ------------------------------------------------------------------------------------------ formats
SYNTH = [{"text": "good film", "other": "x", "label": "pos"}, {"text": "bad film", "other": "y", "label": "neg"},
         {"text": "fine, really", "other": "z", "label": "pos"}]
SYNTH_TASK = """\
sent:
  task_type: Classification
  data_format: PremiseOnly
  labels: [neg, pos]
  metric_meta: [ACC]
  data:
    train: {files: %s}
  columns: {premise: text}
"""


def write_formats(folder: Path) -> dict[str, Path]:
    ds = datasets.Dataset.from_list(SYNTH)
    paths = {"csv": folder / "rows.csv", "json": folder / "rows.jsonl", "parquet": folder / "rows.parquet"}
    ds.to_csv(str(paths["csv"]), index=False)
    ds.to_json(str(paths["json"]))
    ds.to_parquet(str(paths["parquet"]))
    return paths


def test_csv_json_parquet_and_canonical_tsv_give_the_same_shard(tmp_path):
    canonical = tmp_path / "canonical"
    canonical.mkdir()
    (canonical / "sent_train.tsv").write_text("".join(f"{i}\t{r['label']}\t{r['text']}\n" for i, r in enumerate(SYNTH)))
    (tmp_path / "tsv.yml").write_text(SYNTH_TASK.split("  data:")[0] + "  split_names: [train]\n")
    expected = (build(tmp_path / "tsv.yml", canonical) / "sent_train.jsonl").read_bytes()
    assert [json.loads(line)["label"] for line in expected.splitlines()] == [1, 0, 1]
    for fmt, path in write_formats(tmp_path).items():
        (tmp_path / f"{fmt}.yml").write_text(SYNTH_TASK % path.name)
        shard = build(tmp_path / f"{fmt}.yml", tmp_path / fmt) / "sent_train.jsonl"
        assert shard.read_bytes() == expected, fmt


def test_several_files_are_one_split_in_order(tmp_path):
    ds = datasets.Dataset.from_list(SYNTH)
    ds.to_csv(str(tmp_path / "all.csv"), index=False)
    ds.select([0, 1]).to_csv(str(tmp_path / "a.csv"), index=False)
    ds.select([2]).to_csv(str(tmp_path / "b.csv"), index=False)
    (tmp_path / "one.yml").write_text(SYNTH_TASK % "all.csv")
    (tmp_path / "two.yml").write_text(SYNTH_TASK % "[a.csv, b.csv]")
    one = (build(tmp_path / "one.yml", tmp_path / "one") / "sent_train.jsonl").read_bytes()
    assert (build(tmp_path / "two.yml", tmp_path / "two") / "sent_train.jsonl").read_bytes() == one


def test_ranking_hypothesis_columns_read_as_the_canonical_tsv(tmp_path):
    rows = [{"q": "which one", "a1": "this", "a2": "that", "gold": "1"},
            {"q": "and now", "a1": "here", "a2": "there", "gold": "0"}]
    datasets.Dataset.from_list(rows).to_json(str(tmp_path / "rank.jsonl"))
    (tmp_path / "rank_train.tsv").write_text("".join(f"{i}\t{r['gold']}\t{r['q']}\t{r['a1']}\t{r['a2']}\n"
                                                     for i, r in enumerate(rows)))
    head = "rank:\n  task_type: Ranking\n  data_format: PremiseAndMultiHypothesis\n  n_class: 2\n  metric_meta: [ACC]\n"
    td = parse_task_defs(head + f"  data: {{train: {tmp_path}/rank.jsonl}}\n"
                         "  columns: {premise: q, hypothesis: [a1, a2], label: gold}\n")["rank"]
    got = read_split(td, "train", td.data.source("train"))
    want = read_canonical(tmp_path / "rank_train.tsv", parse_task_defs(head)["rank"], "train")
    assert (got.uids, got.labels, got.premises, got.hypotheses) == \
        (want.uids, want.labels, want.premises, want.hypotheses) == (["0", "1"], [1, 0], ["which one", "and now"],
                                                                     [("this", "that"), ("here", "there")])


def test_rerun_skips_an_up_to_date_shard_and_rebuilds_when_the_file_changes(tmp_path):
    path = write_formats(tmp_path)["csv"]
    (tmp_path / "t.yml").write_text(SYNTH_TASK % path.name)
    cfg = prepro_std.PreproConfig(model=MODEL, root_dir=str(tmp_path / "out"), task_def=str(tmp_path / "t.yml"),
                                  max_seq_len=32)
    assert [r.status for r in prepro_std.run(cfg, **QUIET)] == ["written"]
    assert [r.status for r in prepro_std.run(cfg, **QUIET)] == ["up to date"]
    path.write_text(path.read_text().replace("good film", "great film"))
    assert [r.status for r in prepro_std.run(cfg, **QUIET)] == ["written"]


def test_an_edit_that_keeps_size_and_mtime_is_read_not_datasets_cached_rows(tmp_path):
    """datasets keys its Arrow cache of a local file by path and mtime only; the shard must hold the new rows."""
    path = write_formats(tmp_path)["csv"]
    (tmp_path / "t.yml").write_text(SYNTH_TASK % path.name)
    shard = build(tmp_path / "t.yml", tmp_path / "out") / "sent_train.jsonl"
    before = path.stat()
    path.write_text(path.read_text().replace("good film", "dull film"))  # same length
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "rows.csv").write_bytes(path.read_bytes())
    (fresh / "t.yml").write_text(SYNTH_TASK % "rows.csv")
    want = (build(fresh / "t.yml", fresh / "out") / "sent_train.jsonl").read_bytes()
    assert want != shard.read_bytes()
    assert (build(tmp_path / "t.yml", tmp_path / "out") / "sent_train.jsonl").read_bytes() == want


def test_uid_column_integer_labels_and_test_split_without_labels(tmp_path):
    rows = [{"id": "a7", "s": "one", "label": 1}, {"id": "b2", "s": "two", "label": 0}]
    datasets.Dataset.from_list(rows).to_json(str(tmp_path / "train.jsonl"))
    datasets.Dataset.from_list([{"id": "t1", "s": "three"}]).to_json(str(tmp_path / "test.jsonl"))
    td = parse_task_defs(
        "t:\n  task_type: Classification\n  data_format: PremiseOnly\n  n_class: 2\n  metric_meta: [ACC]\n"
        f"  data: {{train: {tmp_path}/train.jsonl, test: {tmp_path}/test.jsonl}}\n"
        "  columns: {premise: s, uid: id}\n")["t"]
    assert td.split_names == ("train", "test")
    train_rows = read_split(td, "train", td.data.source("train"))
    assert (train_rows.uids, train_rows.labels, train_rows.premises) == (["a7", "b2"], [1, 0], ["one", "two"])
    test_rows = read_split(td, "test", td.data.source("test"))
    assert (test_rows.uids, test_rows.labels) == (["t1"], [0])
    # a test split whose labels are all the task's keeps them, as a canonical TSV's does; HF's -1 does not
    for labels, kept in (([1, 1], [1, 1]), ([1, -1], [0, 0])):
        datasets.Dataset.from_list([{"id": f"t{i}", "s": "x", "label": v} for i, v in enumerate(labels)]).to_json(
            str(tmp_path / "test.jsonl"))
        assert read_split(td, "test", td.data.source("test")).labels == kept


def test_regression_labels_and_run_glue_text_column_rule(tmp_path):
    rows = [{"idx": "r0", "question": "q one", "passage": "p one", "label": 0.5},
            {"idx": "r1", "question": "q two", "passage": "p two", "label": 4.0}]
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "train.csv"), index=False)
    spec = task_definition(RunGlueData(train_file=str(tmp_path / "train.csv")))["task"]
    # float labels: regression; texts: the first two non-label columns (run_glue.py's rule, whatever they hold)
    assert (spec["task_type"], spec["data_format"]) == ("Regression", "PremiseAndOneHypothesis")
    assert spec["columns"] == {"premise": "idx", "label": "label", "hypothesis": "question"}
    assert spec["metric_meta"] == ["Pearson", "Spearman"]


def test_run_glue_labels_sorted_and_sentence_columns_preferred(tmp_path):
    rows = [{"x": "a", "sentence2": "h1", "sentence1": "p1", "label": 10},
            {"x": "b", "sentence2": "h2", "sentence1": "p2", "label": 2},
            {"x": "c", "sentence2": "h3", "sentence1": "p3", "label": 10}]
    datasets.Dataset.from_list(rows).to_json(str(tmp_path / "train.json"))
    spec = task_definition(RunGlueData(train_file=str(tmp_path / "train.json")))["task"]
    assert spec["labels"] == ["2", "10"]  # run_glue.py sorts the distinct labels: numbers as numbers
    assert spec["columns"] == {"premise": "sentence1", "label": "label", "hypothesis": "sentence2"}
    one_text = [{"label": "b", "only": "t1"}, {"label": "a", "only": "t2"}]
    datasets.Dataset.from_list(one_text).to_csv(str(tmp_path / "one.csv"), index=False)
    spec = task_definition(RunGlueData(train_file=str(tmp_path / "one.csv")))["task"]
    assert (spec["data_format"], spec["labels"], spec["columns"]) == ("PremiseOnly", ["a", "b"],
                                                                      {"premise": "only", "label": "label"})


def test_dataset_name_of_a_local_folder_gives_its_splits(tmp_path):
    folder = tmp_path / "my-data"
    folder.mkdir()
    datasets.Dataset.from_list(SYNTH).to_csv(str(folder / "train.csv"), index=False)
    datasets.Dataset.from_list(SYNTH[:2]).to_csv(str(folder / "validation.csv"), index=False)
    spec = task_definition(RunGlueData(dataset_name=str(folder)))["task"]
    assert list(spec["data"]) == ["train", "dev"]
    assert spec["data"]["dev"] == {"dataset": str(folder), "split": "validation"}
    td = parse_task_defs(json.dumps({"task": spec}))["task"]
    assert read_split(td, "dev", td.data.source("dev")).labels == [td.label_id("pos"), td.label_id("neg")]


def test_dataset_name_of_a_relative_local_folder_is_written_as_its_absolute_path(tmp_path, monkeypatch):
    """The written task_def.yml is read later from anywhere (train.py --task_def): the folder must stay the same."""
    folder = tmp_path / "my-data"
    folder.mkdir()
    datasets.Dataset.from_list(SYNTH).to_csv(str(folder / "train.csv"), index=False)
    monkeypatch.chdir(tmp_path)
    spec = task_definition(RunGlueData(dataset_name="my-data"))["task"]
    assert spec["data"]["train"] == {"dataset": str(folder), "split": "train"}


def test_dataset_name_of_a_saved_datasetdict_reads_its_own_splits_never_merged(tmp_path):
    """load_dataset on a save_to_disk folder infers splits from file names and merges validation_matched and
    validation_mismatched into one 'validation'; the folder's own splits are read instead: train and
    validation exactly, splits run_glue.py's flags do not name left out."""
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(SYNTH),
                          "validation": datasets.Dataset.from_list(SYNTH[:2]),
                          "validation_mismatched": datasets.Dataset.from_list(SYNTH[2:5])}).save_to_disk(str(folder))
    spec = task_definition(RunGlueData(dataset_name=str(folder)))["task"]
    assert spec["data"] == {"train": {"saved": str(folder), "split": "train"},
                            "dev": {"saved": str(folder), "split": "validation"}}
    td = parse_task_defs(json.dumps({"task": spec}))["task"]
    assert len(read_split(td, "dev", td.data.source("dev")).labels) == 2
    one = tmp_path / "one"
    datasets.Dataset.from_list(SYNTH).save_to_disk(str(one))
    with pytest.raises(HfDataError, match=f"^--dataset_name {one}: a saved Dataset \\(one split\\); "):
        task_definition(RunGlueData(dataset_name=str(one)))


# ------------------------------------------------------------------------------------------ bad input
def yml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tasks.yml"
    path.write_text(text)
    return path


BASE = "t:\n  task_type: Classification\n  data_format: PremiseOnly\n  labels: [neg, pos]\n  metric_meta: [ACC]\n"


@pytest.mark.parametrize("extra, message", [
    ("  data: {train: {files: a.csv, colour: red}}\n",
     ":6: task 't', field 'data': train: unknown key 'colour'; known: files, format, dataset, config, split, saved"),
    ("  data: {train: {files: a.csv, saved: b}}\n",
     ":6: task 't', field 'data': train: give exactly one of files, dataset, saved (got files, saved)"),
    ("  data: {train: a.txt}\n",
     ":6: task 't', field 'data': train.files: cannot tell the format from the suffixes of"),
    ("  data: {train: {dataset: glue}}\n",
     ":6: task 't', field 'data': train: a dataset needs its split (as for datasets.load_dataset), e.g. split: train"),
    ("  data: {valid: a.csv}\n",
     ":6: task 't', field 'data': split name 'valid' must contain exactly one of 'train', 'dev', 'test'"),
    ("  split_names: [train]\n  data: {train: a.csv, dev: b.csv}\n",
     ":7: task 't', field 'data': split(s) ['dev'] are not in split_names ['train']"),
    ("  split_names: train\n  data: {train: a.csv}\n",
     ":6: task 't', field 'split_names': must be a non-empty list, got str 'train'"),
    ("  columns: {premise: text}\n", ":6: task 't', field 'columns': columns maps the columns of a data: source"),
    ("  data: {train: a.csv}\n  columns: {text: x}\n",
     ":7: task 't', field 'columns': unknown key 'text'; known: premise, hypothesis, label, uid"),
    ("  data: []\n", ":6: task 't', field 'data': must be a mapping of split name -> source"),
])
def test_bad_data_fields_name_file_line_and_field(tmp_path, extra, message):
    path = yml(tmp_path, BASE + extra)
    with pytest.raises(TaskDefError) as err:
        load_task_defs(path)
    assert str(err.value).startswith(str(path) + message), str(err.value)


def test_data_on_a_token_level_task_is_refused(tmp_path):
    path = yml(tmp_path, "q:\n  task_type: Span\n  data_format: MRC\n  metric_meta: [EmF1]\n  data: {train: a.csv}\n")
    with pytest.raises(TaskDefError, match=r"tasks.yml:5: task 'q', field 'data': a Span task reads its own file "
                                           r"format; data: is for Classification, Regression and Ranking tasks"):
        load_task_defs(path)


def synth_task(tmp_path: Path, columns: str = "{premise: text}", rows=SYNTH, split: str = "train"):
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "rows.csv"), index=False)
    td = load_task_defs(yml(tmp_path, BASE + f"  data: {{{split}: rows.csv}}\n  columns: {columns}\n"))["t"]
    return td, td.data.source(split)


def test_label_outside_the_task_list_names_file_row_and_column(tmp_path):
    rows = SYNTH + [{"text": "meh", "other": "w", "label": "neutral"}]
    td, source = synth_task(tmp_path, rows=rows)
    with pytest.raises(HfDataError) as err:
        read_split(td, "train", source)
    assert str(err.value) == (f"{tmp_path}/rows.csv: row 3, column 'label': task t: label 'neutral' is not one of "
                              "['neg', 'pos']")


def test_classlabel_name_outside_the_task_list_is_refused(tmp_path):
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos", "mixed"])})
    datasets.Dataset.from_list([{"text": "a", "label": 0}, {"text": "b", "label": 2}],
                               features=features).save_to_disk(str(tmp_path / "saved"))
    td = load_task_defs(yml(tmp_path, BASE + "  data: {train: {saved: saved}}\n"))["t"]
    with pytest.raises(HfDataError, match=r"saved: row 1, column 'label': task t: label 'mixed' is not one of"):
        read_split(td, "train", td.data.source("train"))


def test_missing_column_names_the_columns_there_are(tmp_path):
    td, source = synth_task(tmp_path, columns="{premise: sentence}")
    with pytest.raises(HfDataError) as err:
        read_split(td, "train", source)
    assert str(err.value) == (f"{tmp_path}/rows.csv: task t: column 'sentence' not found; the columns are "
                              "['text', 'other', 'label']")


def test_empty_text_and_repeated_uid_name_their_row(tmp_path):
    td, source = synth_task(tmp_path, rows=SYNTH + [{"text": "", "other": "q", "label": "pos"}])
    with pytest.raises(HfDataError, match=r"rows.csv: row 3, column 'text': the text is empty or not a string"):
        read_split(td, "train", source)
    td, source = synth_task(tmp_path, columns="{premise: text, uid: other}",
                            rows=SYNTH + [{"text": "again", "other": "y", "label": "pos"}])
    with pytest.raises(HfDataError, match=r"rows.csv: row 3, column 'other': uid 'y' repeats row 1"):
        read_split(td, "train", source)


def test_missing_file_and_unknown_saved_split(tmp_path):
    with pytest.raises(HfDataError, match=r"^.*nowhere.csv: not found$"):
        load_source(SplitSource(files=(str(tmp_path / "nowhere.csv"),), format="csv"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(SYNTH)}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(HfDataError) as err:
        load_source(SplitSource(saved=str(tmp_path / "dd"), split="validation"))
    assert str(err.value) == (f"{tmp_path}/dd: a saved DatasetDict; the task's data has no split 'validation' "
                              "(its splits: train)")
    (tmp_path / "plain").mkdir()
    with pytest.raises(HfDataError, match=r"plain: cannot read it with datasets: "):
        load_source(SplitSource(saved=str(tmp_path / "plain")))


def test_without_the_datasets_package_one_line_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(HfDataError, match=r"^reading a data: source needs the datasets package \(pip install "
                                          r"datasets; it is in requirements.txt\)$"):
        load_source(SplitSource(files=(str(tmp_path / "x.csv"),), format="csv"))


def test_prepro_cli_reports_a_bad_label_in_one_line(tmp_path, capsys):
    synth_task(tmp_path, rows=SYNTH + [{"text": "meh", "other": "w", "label": "neutral"}])
    code = prepro_std.main(["--task_def", str(tmp_path / "tasks.yml"), "--root_dir", str(tmp_path / "out"),
                            "--model", MODEL, "--max_seq_len", "32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == [f"prepro_std.py: error: {tmp_path}/rows.csv: row 3, column 'label': task t: label "
                                 "'neutral' is not one of ['neg', 'pos']"]
    assert not (tmp_path / "out" / MODEL / "t_train.jsonl").exists()


@pytest.mark.parametrize("flags, message", [
    (["--train_datasets", "rte"], "--train_file/--dataset_name make a one-task run of their own; drop "
                                  "--train_datasets rte"),
    (["--validation_file", "{d}/dev.json"], "--validation_file {d}/dev.json: must have the --train_file's suffix "
                                            ".csv (as run_glue.py asks)"),
    (["--dataset_name", "glue"], "--dataset_name: and --train_file/--validation_file/--test_file name two sources; "
                                 "give one"),
    (["--test_datasets", "rte"], "--test_datasets: a one-task run evaluates its task, named 'task'; drop "
                                 "--test_datasets rte"),
    (["--task_def", "{d}/mine.yml"], "--task_def {d}/mine.yml: a one-task run (--train_file/--dataset_name) writes "
                                     "its own task definition and shards, in {d}/run-data; drop --task_def"),
    (["--data_dir", "{d}/shards"], "--data_dir {d}/shards: a one-task run (--train_file/--dataset_name) writes "
                                   "its own task definition and shards, in {d}/run-data; drop --data_dir"),
])
def test_train_file_refusals_are_one_line_exit_2(tmp_path, capsys, flags, message):
    datasets.Dataset.from_list(SYNTH).to_csv(str(tmp_path / "train.csv"), index=False)
    code = train.main(["--train_file", str(tmp_path / "train.csv"), "--output_dir", str(tmp_path / "run"),
                       *[f.format(d=tmp_path) for f in flags]])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "train.py: error: " + message.format(d=tmp_path)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags, message", [
    (["--train_datasets", "rte", "--validation_file", "dev.csv"], "--validation_file: needs --train_file (run_glue.py's "
                                                                  "one-task run)"),
    (["--train_datasets", "rte", "--test_file", "t.csv"], "--test_file: needs --train_file (run_glue.py's one-task run)"),
    (["--train_datasets", "rte", "--dataset_config_name", "x"], "--dataset_config_name: needs --dataset_name "
                                                                "(run_glue.py's one-task run)"),
    ([], "--train_datasets: at least one training dataset is required (or --train_file / --dataset_name)"),
])
def test_run_glue_flags_without_their_source_are_refused(tmp_path, capsys, flags, message):
    assert train.main([*flags, "--output_dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "train.py: error: " + message


def test_train_file_label_column_required(tmp_path, capsys):
    datasets.Dataset.from_list([{"a": "x", "b": "y"}]).to_csv(str(tmp_path / "train.csv"), index=False)
    assert train.main(["--train_file", str(tmp_path / "train.csv"), "--output_dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"train.py: error: {tmp_path}/train.csv: no 'label' column (run_glue.py's label column); the columns are "
        "['a', 'b']")


def test_train_file_boolean_labels_and_a_numeric_text_column_are_named_in_one_line(tmp_path, capsys):
    """CSV true/false cells come back as booleans; GLUE's exported sentence,label,idx gives idx as run_glue.py's
    second text: both are refused saying what the column holds."""
    path = tmp_path / "train.csv"
    path.write_text("sentence,label\ngood film,true\nbad film,false\n", encoding="utf-8")
    assert train.main(["--train_file", str(path), "--output_dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"train.py: error: {path}: column 'label' holds bool labels (False, True): class labels must be strings or "
        "integers (floats make a regression task)")
    path.write_text("sentence,label,idx\ngood film,pos,0\nbad film,neg,1\n", encoding="utf-8")
    assert train.main(["--train_file", str(path), "--output_dir", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"train.py: error: {path}: row 0, column 'idx': int 0 is not text (the task's text columns: "
        "['sentence', 'idx'])")
    assert not (tmp_path / "run").exists()


def test_prepro_cli_takes_run_glue_files_and_writes_the_task_definition(tmp_path, capsys):
    ds = datasets.Dataset.from_list(SYNTH)
    ds.to_csv(str(tmp_path / "train.csv"), index=False)
    ds.select([1, 0]).to_csv(str(tmp_path / "dev.csv"), index=False)
    out = tmp_path / "out"
    assert prepro_std.main(["--train_file", str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "dev.csv"),
                            "--root_dir", str(out), "--model", MODEL, "--max_seq_len", "32"]) == 0
    td = load_task_defs(out / "task_def.yml")["task"]
    assert (td.labels, td.split_names, td.data.columns.premise, td.data.columns.hypothesis) == \
        (("neg", "pos"), ("train", "dev"), "text", ("other",))
    dev = [json.loads(line) for line in (out / MODEL / "task_dev.jsonl").read_text().splitlines()]
    assert [(r["uid"], r["label"]) for r in dev] == [("0", 0), ("1", 1)]
    assert prepro_std.main(["--train_file", str(tmp_path / "train.csv"), "--root_dir", str(out), "--tasks", "x"]) == 1
    assert prepro_std.main(["--validation_file", str(tmp_path / "dev.csv"), "--root_dir", str(out)]) == 1
    assert capsys.readouterr().err.splitlines()[-2:] == [
        "prepro_std.py: error: --train_file/--dataset_name write their own task definition ({root_dir}/task_def.yml, "
        "task 'task'); drop --task_def and --tasks",
        "prepro_std.py: error: --validation_file/--test_file need --train_file (a one-task run is trained on it)"]


@pytest.mark.subprocess
def test_train_py_cli_respects_hf_datasets_cache(tmp_path):
    """As a user runs it: HF_DATASETS_CACHE holds datasets' Arrow copy of the CSV; nothing goes online."""
    datasets.Dataset.from_list(SYNTH).to_csv(str(tmp_path / "train.csv"), index=False)
    env = dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "cache"), HF_DATASETS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "train.py", "--train_file", str(tmp_path / "train.csv"), "--output_dir",
                           str(tmp_path / "run"), "--epochs", "1", "--max_seq_len", "16", "--batch_size", "3",
                           "--no_tensorboard", "--test_datasets", "task"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any((tmp_path / "cache").rglob("*.arrow"))
    assert (tmp_path / "run-data" / MODEL / "task_train.jsonl").read_text().count("\n") == len(SYNTH)
    assert (tmp_path / "run" / "step-1").is_dir()

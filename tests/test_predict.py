"""predict.py with MT-DNN's command line (``--task_def --task --task_id --prep_input --with_label --score
--max_seq_len --batch_size_eval --checkpoint``): the score file at ``--score`` in MT-DNN's layout, the metrics
printed as MT-DNN prints them, ``--checkpoint`` a checkpoint folder or an MT-DNN / SAGE-repository ``.pt``, and
one line for each flag or value it cannot honour."""
from __future__ import annotations

import ast
import json
import shutil

import pytest
import torch

import predict as predict_cli
from conftest import tiny_bert_config
from mt_dnn.batcher import collate, load_split
from data_utils.task_def import load_task_defs
from test_upstream_checkpoint import NO_DROPOUT, TASKS, TheirNetwork, save_their_checkpoint, their_options
from tool_runs import trained_run


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = trained_run(tmp_path_factory, "predict")
    for task in ("pairs", "tri"):  # MT-DNN names its shards .json
        for split in ("dev", "test"):
            shutil.copyfile(root / "shards" / f"{task}_{split}.jsonl", root / "shards" / f"{task}_{split}.json")
    return root


def _mtdnn_args(ws, task: str, task_id: int, score, split: str = "dev") -> list[str]:
    """Their command line, paths aside."""
    return ["--task_def", str(ws / "tasks.yml"), "--task", task, "--task_id", str(task_id), "--prep_input",
            str(ws / "shards" / f"{task}_{split}.json"), "--with_label", "--score", str(score), "--max_seq_len",
            "64", "--batch_size_eval", "8", "--checkpoint", str(ws / "run" / "best")]


@pytest.mark.parametrize("task,task_id", [("pairs", 0), ("tri", 3)])
def test_mtdnn_command_line_gives_the_runs_own_scores_and_prints_its_metrics(ws, task, task_id, capsys):
    score = ws / f"{task}_mtdnn_scores.json"
    assert predict_cli.main(_mtdnn_args(ws, task, task_id, score)) == 0
    out, err = capsys.readouterr()
    trained = json.loads((ws / "run" / f"{task}_dev_scores_0.json").read_text())
    assert ast.literal_eval(out.strip()) == pytest.approx(trained["metrics"]) and err == ""
    written = json.loads(score.read_text())
    assert list(written) == ["metrics", "predictions", "uids", "scores"]
    assert written["metrics"] == pytest.approx(trained["metrics"])
    assert written["uids"] == trained["uids"] and written["predictions"] == trained["predictions"]
    assert written["scores"] == pytest.approx(trained["scores"], abs=1e-6)
    assert len(written["scores"]) == len(written["uids"]) * {"pairs": 2, "tri": 3}[task]


def test_mtdnns_json_name_reads_the_jsonl_shard_prepro_std_wrote(ws, capsys):
    (ws / "jsonl_only").mkdir()
    shutil.copyfile(ws / "shards" / "pairs_dev.jsonl", ws / "jsonl_only" / "pairs_dev.jsonl")
    args = _mtdnn_args(ws, "pairs", 0, ws / "from_jsonl.json")
    args[args.index("--prep_input") + 1] = str(ws / "jsonl_only" / "pairs_dev.json")
    assert predict_cli.main(args) == 0
    capsys.readouterr()
    written = json.loads((ws / "from_jsonl.json").read_text())
    trained = json.loads((ws / "run" / "pairs_dev_scores_0.json").read_text())
    assert written["uids"] == trained["uids"] and written["scores"] == pytest.approx(trained["scores"], abs=1e-6)


def test_without_with_label_the_metrics_are_empty_as_mtdnn_writes_them(ws, capsys):
    args = _mtdnn_args(ws, "pairs", 0, ws / "nolabel.json", split="test")
    args.remove("--with_label")
    assert predict_cli.main(args) == 0
    assert capsys.readouterr() == ("", "")
    written = json.loads((ws / "nolabel.json").read_text())
    assert written["metrics"] == {} and len(written["uids"]) == 10 and len(written["scores"]) == 20


def test_metric_replaces_the_tasks_metrics(ws, capsys):
    assert predict_cli.main(_mtdnn_args(ws, "tri", 3, ws / "mcc.json") + ["--metric", "MCC"]) == 0
    trained = json.loads((ws / "run" / "tri_dev_scores_0.json").read_text())["metrics"]
    assert ast.literal_eval(capsys.readouterr().out.strip()) == pytest.approx({"MCC": trained["MCC"]})


def test_cuda_true_gets_one_notice(ws, capsys):
    assert predict_cli.main(_mtdnn_args(ws, "pairs", 0, ws / "cuda.json") + ["--cuda", "True"]) == 0
    assert capsys.readouterr().err == ("predict.py: warning: --cuda True has no effect here (use --device; auto runs "
                                       "on CUDA when it is available)\n")


@pytest.mark.parametrize("change,message", [
    ({"--task_id": "1"}, "--task_id 1: task 1 of this checkpoint is 'score', not 'pairs' (its --train_datasets "
                         "order: pairs, score, pick, tri)"),
    ({"--task_id": "9"}, "--task_id 9: task 9 of this checkpoint does not exist, not 'pairs' (its --train_datasets "
                         "order: pairs, score, pick, tri)"),
    ({"--score": None}, "--score: give the score file to write (MT-DNN's predict.py writes it there)"),
    ({"--split": "dev"}, "--prep_input names the shard and its split: leave out --split and --data_dir"),
    ({"--prep_input": "{shards}/dev.json"}, "--prep_input {shards}/dev.json: expected a shard named "
                                            "pairs_<split>.json (MT-DNN's pairs_dev.json, pairs_test.json, ...), "
                                            "which says its split"),
    ({"--prep_input": "{shards}/pairs_test.json"}, "--with_label: pairs_test is a test split (its shard's labels "
                                                   "are placeholders)"),
    ({"--score": "{shards}/none/s.json"}, "--score {shards}/none/s.json: folder {shards}/none does not exist"),
    ({"--metric": "BLEU"}, "--metric BLEU: unknown metric 'BLEU'; known: ACC, F1, MCC, Pearson, Spearman, AUC"),
    ({"--cuda": "False"}, "--cuda False: use --device cpu to run on the CPU (MT-DNN's type=bool read any non-empty "
                          "value, False too, as true)"),
])
def test_what_it_cannot_honour_is_one_line(ws, change, message, capsys):
    args = _mtdnn_args(ws, "pairs", 0, ws / "refused.json")
    shards = str(ws / "shards")
    for flag, value in change.items():
        if flag in args:
            at = args.index(flag)
            del args[at:at + 2]
        if value is not None:
            args += [flag, value.format(shards=shards)]
    assert predict_cli.main(args) == 2
    assert capsys.readouterr().err == f"predict.py: error: {message.format(shards=shards)}\n"
    assert not (ws / "refused.json").exists()


# ---------------------------------------------------------------------------------------------- MT-DNN's .pt
@pytest.fixture(scope="module")
def their_pt(ws, tmp_path_factory):
    monkeypatch = pytest.MonkeyPatch()
    torch.manual_seed(4)
    network = TheirNetwork(tiny_bert_config(**NO_DROPOUT), [1, 2]).eval()
    options = their_options(monkeypatch, TASKS, tiny_bert_config(**NO_DROPOUT))
    path = save_their_checkpoint(ws / "model_1.pt", network, "usadamax", {}, options, t_total=4)
    monkeypatch.undo()
    return path, network


def test_a_mtdnn_checkpoint_predicts_with_the_head_at_task_id(ws, their_pt, capsys):
    path, network = their_pt
    args = _mtdnn_args(ws, "pairs", 1, ws / "pt_scores.json")
    args[args.index("--checkpoint") + 1] = str(path)
    assert predict_cli.main(args) == 0
    capsys.readouterr()
    written = json.loads((ws / "pt_scores.json").read_text())
    td = load_task_defs(ws / "tasks.yml")["pairs"]
    data = load_split(ws / "shards", td, "dev", 64)
    with torch.no_grad():
        batch = collate(data, list(range(len(data))), 0, with_labels=False)
        expected = torch.softmax(network.logits(1, batch), dim=-1)
    assert written["uids"] == list(data.uids)
    torch.testing.assert_close(torch.tensor(written["scores"]), expected.flatten(), rtol=0, atol=1e-5)
    assert written["predictions"] == expected.argmax(-1).tolist()
    args[args.index("--task_id") + 1] = "0"
    assert predict_cli.main(args) == 2
    assert capsys.readouterr().err.startswith(f"predict.py: error: --task_id 0: {path} does not hold task 'pairs' "
                                              "at scoring_list.0 (its head is scoring_list.1;")


def test_every_flag_of_mtdnns_and_the_sage_repositorys_predict_py_parses():
    """Their predict.py's flags (the SAGE repository's are MT-DNN's without --metric): each an option here, and
    --cuda the one flag judged by its value."""
    from mt_dnn.cli_flags import PREDICT
    flags = {"--task_def": "t.yml", "--task": "rte", "--task_id": "0", "--prep_input": "rte_dev.json",
             "--with_label": None, "--score": "s.json", "--metric": "ACC", "--max_seq_len": "512",
             "--batch_size_eval": "8", "--cuda": "True", "--checkpoint": "model_0.pt"}
    argv = [x for flag, value in flags.items() for x in ([flag] if value is None else [flag, value])]
    args = predict_cli.build_parser().parse_args(argv)
    assert (args.task_def, args.task, args.task_id, args.prep_input, args.with_label, args.score, args.metric,
            args.max_seq_len, args.batch_size, args.checkpoint) == (
        "t.yml", "rte", 0, "rte_dev.json", True, "s.json", "ACC", 512, 8, "model_0.pt")
    assert PREDICT.notices(args) == ["predict.py: warning: --cuda True has no effect here (use --device; auto runs "
                                     "on CUDA when it is available)"]

"""Score files in MT-DNN's layout (data_utils/score_file.py): one flat ``scores`` list, n_class values per row.

MT-DNN's own reader (``load_score_file`` in its data_utils/__init__.py, behind its calc_metrics.py and
prepare_distillation_data.py) is re-implemented below the way its code reads a file, and run on the files this
project writes at evaluation during training and with predict.py, for a 2-class, a 3-class, a 3-hypothesis
ranking and a regression task."""
from __future__ import annotations

import json

import pytest
import torch

import predict as predict_cli
from data_utils.score_file import flat_scores, read_score_file
from mt_dnn.batcher import load_split
from mt_dnn.evaluate import predict_split
from mt_dnn.restore import restore
from tool_runs import trained_run

N_CLASS = {"pairs": 2, "tri": 3, "pick": 3, "score": 1}


def mtdnn_load_score_file(score_path, n_class):
    """MT-DNN's reader: the file must hold n_class scores per uid; row i's are scores[i*n_class:(i+1)*n_class]."""
    with open(score_path, encoding="utf-8") as handle:
        obj = json.loads(handle.read())
    uids, scores = obj["uids"], obj["scores"]
    assert len(scores) % len(uids) == 0 and len(scores) / len(uids) == n_class
    return {uid: (pred, scores[i * n_class:(i + 1) * n_class])
            for i, (uid, pred) in enumerate(zip(uids, obj["predictions"]))}


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return trained_run(tmp_path_factory, "score_file")


@pytest.mark.parametrize("task", sorted(N_CLASS))
def test_files_written_at_evaluation_and_by_predict_read_with_mtdnns_loader(ws, task, capsys):
    restored = restore(ws / "run" / "best")
    data = load_split(ws / "shards", restored.task_defs[task], "dev", 64)
    expected = predict_split(restored.model, data, 8, torch.device("cpu"), restored.pad_id)  # nested, per row
    assert predict_cli.main(["--checkpoint", str(ws / "run" / "best"), "--task", task, "--output_dir",
                             str(ws / "pred")]) == 0
    capsys.readouterr()
    for path in (ws / "run" / f"{task}_dev_scores_0.json", ws / "pred" / f"{task}_dev_scores_predict.json"):
        loaded = mtdnn_load_score_file(path, N_CLASS[task])
        assert list(loaded) == expected.uids
        for uid, pred, row in zip(expected.uids, expected.predictions, expected.scores):
            got_pred, seg = loaded[uid]
            assert got_pred == pytest.approx(pred)
            assert seg == pytest.approx(row if isinstance(row, list) else [row], abs=1e-6)
            if task != "score":  # probabilities; the prediction is the most probable class
                assert sum(seg) == pytest.approx(1.0, abs=1e-5) and got_pred == max(range(len(seg)), key=seg.__getitem__)
        assert read_score_file(path, N_CLASS[task]) == loaded


def test_flat_scores_concatenates_rows():
    assert flat_scores([[0.25, 0.75], [1.0, 0.0]]) == [0.25, 0.75, 1.0, 0.0]
    assert flat_scores([0.5, 2.0]) == [0.5, 2.0]
    assert flat_scores([[0.5, None, 0.25], [0.125]]) == [0.5, None, 0.25, 0.125]  # per-word rows of varying length


@pytest.mark.parametrize("content,message", [
    ({"uids": ["a", "b"], "predictions": [0, 1], "scores": [[0.5, 0.5], [0.1, 0.9]]},
     "'scores' holds one list per row; MT-DNN's layout (written by this project's predict.py and train.py) is one "
     "flat list"),
    ({"uids": ["a", "b"], "predictions": [0, 1], "scores": [0.5, 0.5, 0.1]},
     "'scores' holds 3 values for 2 rows; a task with n_class 2 needs 4"),
    ({"uids": ["a", "b"], "predictions": [0], "scores": [0.5, 0.5, 0.1, 0.9]}, "2 uids but 1 predictions"),
    ({"uids": ["a", "a"], "predictions": [0, 1], "scores": [0.5, 0.5, 0.1, 0.9]}, "a uid appears twice"),
    ({"uids": ["a"], "scores": [0.5, 0.5]}, "not a score file (expected lists 'uids', 'predictions' and 'scores')"),
])
def test_read_score_file_refuses_other_layouts_naming_the_file(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(ValueError) as err:
        read_score_file(path, 2)
    assert str(err.value) == f"{path}: {message}"


def test_read_score_file_names_a_missing_or_broken_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"^{tmp_path / 'none.json'}: score file not found$"):
        read_score_file(tmp_path / "none.json", 2)
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'bad.json'}: not a JSON score file"):
        read_score_file(tmp_path / "bad.json", 2)

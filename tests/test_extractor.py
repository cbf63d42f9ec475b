"""extractor.py with MT-DNN's command line (experiments/dump_embedding/extract.sh: ``--finput --foutput
--bert_model --checkpoint``, plus ``--layers``, ``--do_lower_case``, ``--max_seq_length``, ``--batch_size``) on
MT-DNN's sample input files: every requested layer's embeddings, in MT-DNN's output format, equal the encoder's
hidden states computed directly with transformers (``output_hidden_states=True``), for a MiniLM-L6 saved as an
MT-DNN ``.pt`` and named by the registry."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import extractor as extractor_cli
import pretrained_models

SAMPLES = Path(__file__).resolve().parent / "fixtures" / "mtdnn" / "dump_embedding"


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> tuple[str, Path]:
    """(the MiniLM-L6 folder, that model saved as MT-DNN's train.py saves a model: bert.*, config, optimizer)."""
    folder = pretrained_models.resolve("minilm-l6")
    model = AutoModel.from_pretrained(folder)
    pt = tmp_path_factory.mktemp("extractor") / "mt_dnn_base.pt"
    torch.save({"state": {f"bert.{k}": v for k, v in model.state_dict().items()}, "optimizer": {},
                "config": {**model.config.to_dict(), "encoder_type": 1}}, pt)
    return folder, pt


def direct(folder: str, text_file: Path, layers: list[int]) -> list[dict[int, torch.Tensor]]:
    """Each line tokenized on its own (a pair file when every line is premise|||hypothesis), one forward each."""
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    blocks = [line.strip().split("|||") for line in text_file.read_text(encoding="utf-8").splitlines()]
    pair = all(len(b) == 2 for b in blocks)
    out = []
    for b in blocks:
        enc = tok(b[0], b[1] if pair else None, truncation=True, max_length=512, return_tensors="pt")
        with torch.no_grad():
            states = model(**enc, output_hidden_states=True).hidden_states
        # hidden_states[0] is the embedding output: layer i (from 0) is hidden_states[i + 1], -1 the last
        out.append({layer: states[layer + 1 if layer >= 0 else layer][0] for layer in layers})
    return out


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("sample,checkpoint", [("pair-input.txt", "pt"), ("single-input.txt", "minilm-l6")])
def test_embeddings_equal_the_encoders_hidden_states(minilm, sample, checkpoint, tmp_path, capsys):
    folder, pt = minilm
    out = tmp_path / "output.json"
    args = ["--finput", str(SAMPLES / sample), "--foutput", str(out), "--bert_model", folder, "--checkpoint",
            str(pt) if checkpoint == "pt" else checkpoint, "--layers", "2,5,-1", "--do_lower_case",
            "--max_seq_length", "512", "--batch_size", "4"]
    assert extractor_cli.main(args) == 0
    assert capsys.readouterr().err.splitlines()[-1] == (
        "extractor.py: warning: --do_lower_case has no effect here (the tokenizer lower-cases already; MT-DNN's "
        "AutoTokenizer decides casing from the tokenizer too)")
    rows, expected = _read(out), direct(folder, SAMPLES / sample, [2, 5, -1])
    assert len(rows) == len(expected) == 2  # both files hold two lines (single-input.txt without a final newline)
    for uid, (row, want) in enumerate(zip(rows, expected)):
        assert list(row) == ["2", "5", "-1", "uid"] and row["uid"] == str(uid)
        for layer, states in want.items():
            assert isinstance(row[str(layer)], str)  # MT-DNN writes str() of the nested list
            got = torch.tensor(ast.literal_eval(row[str(layer)]))
            assert got.shape == states.shape and got.shape[1] == 384
            torch.testing.assert_close(got, states, rtol=0, atol=2e-5)
    assert not torch.equal(expected[0][2], expected[0][5])


def test_extract_sh_as_written_names_the_layers_minilm_lacks(minilm, tmp_path, capsys):
    """extract.sh passes no --layers: MT-DNN's default 10,11 is for 12-layer encoders."""
    folder, pt = minilm
    args = ["--finput", str(SAMPLES / "pair-input.txt"), "--foutput", str(tmp_path / "pair-output.json"),
            "--bert_model", folder, "--checkpoint", str(pt)]
    assert extractor_cli.main(args) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "extractor.py: error: --layers 10,11: the encoder has 6 layers (0..5, or -6..-1 from the last)")
    assert not (tmp_path / "pair-output.json").exists()


def test_training_flags_get_one_notice_each_and_fp16_is_refused(minilm, tmp_path, capsys):
    folder, pt = minilm
    base = ["--finput", str(SAMPLES / "single-input.txt"), "--foutput", str(tmp_path / "o.json"), "--checkpoint",
            "minilm-l6", "--layers", "0"]
    assert extractor_cli.main(base + ["--seed", "2018", "--answer_opt", "1", "--multi_gpu_on"]) == 0
    assert [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln] == [
        "extractor.py: warning: --seed 2018 has no effect here (extraction runs in evaluation mode, without "
        "dropout: nothing is random)",
        "extractor.py: warning: --answer_opt 1 has no effect here (an answer-module option; extraction reads the "
        "encoder only)",
        "extractor.py: warning: --multi_gpu_on has no effect here (extraction runs on one device)"]
    (tmp_path / "o.json").unlink()
    assert extractor_cli.main(base + ["--fp16"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "extractor.py: error: --fp16: embeddings are computed in float32 here; leave the flag out")
    assert not (tmp_path / "o.json").exists()


#: every flag of MT-DNN's experiments/dump_embedding/extractor.py (model_config, train_config, set_config), with
#: a value of the type it declares (None: a switch)
MTDNN_EXTRACTOR_FLAGS = {
    "--update_bert_opt": "0", "--multi_gpu_on": None, "--mem_cum_type": "simple", "--answer_num_turn": "5",
    "--answer_mem_drop_p": "0.1", "--answer_att_hidden_size": "128", "--answer_att_type": "bilinear",
    "--answer_rnn_type": "gru", "--answer_sum_att_type": "bilinear", "--answer_merge_opt": "1",
    "--answer_mem_type": "1", "--answer_dropout_p": "0.1", "--answer_weight_norm_on": None, "--dump_state_on": None,
    "--answer_opt": "0", "--label_size": "3", "--mtl_opt": "0", "--ratio": "0", "--mix_opt": "0",
    "--init_ratio": "1", "--cuda": "True", "--optimizer": "adamax", "--grad_clipping": "0",
    "--global_grad_clipping": "1.0", "--weight_decay": "0", "--learning_rate": "5e-5", "--momentum": "0",
    "--warmup": "0.1", "--warmup_schedule": "warmup_linear", "--vb_dropout": None, "--dropout_p": "0.1",
    "--dropout_w": "0.0", "--bert_dropout_p": "0.1", "--ema_opt": "0", "--ema_gamma": "0.995",
    "--have_lr_scheduler": None, "--multi_step_lr": "10,20,30", "--freeze_layers": "-1", "--embedding_opt": "0",
    "--lr_gamma": "0.5", "--bert_l2norm": "0.0", "--scheduler_type": "ms", "--output_dir": "checkpoint",
    "--seed": "2018", "--encoder_type": "1", "--fp16": None, "--fp16_opt_level": "O1", "--finput": "in.txt",
    "--foutput": "out.json", "--bert_model": "bert-base-uncased", "--checkpoint": "m.pt", "--do_lower_case": None,
    "--layers": "10,11", "--max_seq_length": "512", "--batch_size": "4", "--transformer_cache": ".cache",
}


def test_every_mtdnn_extractor_flag_is_an_option_or_gets_one_notice():
    from mt_dnn.cli_flags import EXTRACTOR
    parser = extractor_cli.build_parser()
    options = {"--finput", "--foutput", "--bert_model", "--checkpoint", "--layers", "--max_seq_length",
               "--batch_size", "--encoder_type"}  # they take effect
    for flag, value in MTDNN_EXTRACTOR_FLAGS.items():
        if flag == "--fp16":
            continue  # refused: test_training_flags_get_one_notice_each_and_fp16_is_refused
        args = parser.parse_args(["--finput", "a", "--foutput", "b", "--checkpoint", "c", flag]
                                 + ([] if value is None else [value]))
        notices = EXTRACTOR.notices(args, {"lowercases": True})
        assert len(notices) == (0 if flag in options else 1), flag
    assert set(EXTRACTOR.no_effect) | set(EXTRACTOR.rules) | options == set(MTDNN_EXTRACTOR_FLAGS)

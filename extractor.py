#!/usr/bin/env python
"""Embeddings of chosen encoder layers for a text file, with MT-DNN's ``extractor.py`` command line:

    python extractor.py --finput sample_data/pair-input.txt --foutput pair-output.json \\
        --bert_model bert-base-uncased --checkpoint mt_dnn_models/mt_dnn_base.pt [--layers 10,11]

``--checkpoint``: an MT-DNN / SAGE-repository ``.pt``, a checkpoint folder of this project (``<run>/best``) or an
encoder (registry name such as minilm-l6, local folder). ``--bert_model`` names the tokenizer (default: the one the
checkpoint was trained with; required for a .pt). Input and output formats: mt_dnn/embeddings.py. MT-DNN's model
and training flags parse; each prints one notice that it has no effect on extraction (mt_dnn/cli_flags.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mt_dnn.cli_flags import EXTRACTOR


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--finput", required=True, help="text file: one example per line, a pair as premise|||hypothesis")
    p.add_argument("--foutput", required=True, help="JSON lines to write, one per example")
    p.add_argument("--checkpoint", required=True, help="a .pt, a checkpoint folder or an encoder")
    p.add_argument("--bert_model", default=None, help="the tokenizer (registry name, folder or hub name)")
    p.add_argument("--layers", default="10,11", help="comma-separated layers, 0 = the first transformer layer")
    p.add_argument("--max_seq_length", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--encoder_type", type=int, default=None, help="a .pt's encoder type when its config omits it")
    p.add_argument("--device", default="auto")
    EXTRACTOR.add_to(p, "MT-DNN extractor.py flags without an option here")
    return p


def _lowercases(tokenizer) -> bool:
    return tokenizer.tokenize("A") == tokenizer.tokenize("a")


def run(args) -> Path:
    """The output file (the notices go to stderr as soon as the tokenizer is known)."""
    from data_utils.atomic import atomic_write
    from module import encoders
    from mt_dnn import embeddings
    from mt_dnn.runtime import pick_device
    if args.max_seq_length < 2 or args.batch_size < 1:
        raise ValueError("--max_seq_length must be >= 2 and --batch_size >= 1")
    out = Path(args.foutput)
    if out.resolve() == Path(args.finput).resolve():
        raise ValueError(f"--foutput {out}: that is the --finput file")
    examples, _ = embeddings.read_examples(Path(args.finput))
    encoder, trained_tokenizer = embeddings.load(args.checkpoint, args.encoder_type)
    name = args.bert_model or trained_tokenizer
    if name is None:
        raise ValueError(f"--bert_model: give the tokenizer; {args.checkpoint} does not name one")
    tokenizer = encoders.load_tokenizer(name)
    for line in EXTRACTOR.notices(args, {"lowercases": _lowercases(tokenizer)}):
        print(line, file=sys.stderr)
    layers = embeddings.layer_indices(args.layers, encoder.config.num_hidden_layers)
    encoded = embeddings.tokenize(tokenizer, examples, args.max_seq_length)
    pad_id = encoder.config.pad_token_id if encoder.config.pad_token_id is not None else 0
    states = embeddings.hidden_states(encoder, encoded, layers, args.batch_size, pick_device(args.device), pad_id)
    with atomic_write(out) as handle:
        for uid, features in enumerate(states):
            handle.write(embeddings.format_line(str(uid), features) + "\n")
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError) as exc:
        print(f"extractor.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

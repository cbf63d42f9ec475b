"""Upstream flags of a command line other than train.py that have no option of their own there.

The same decision as :mod:`mt_dnn.upstream_flags` makes for train.py, for any tool (predict.py, extractor.py,
prepro_std.py, glue_prepro.py,
...): each flag of the upstream script parses; a flag no value of which changes the result gets one notice line
``<tool>: warning: --flag [value] has no effect here (why)``; a flag whose value decides follows a
:class:`~mt_dnn.upstream_flags.ValueRule` (the notice for the values that ask for what the tool does anyway, a
one-line refusal for the others). A tool lists its table as a :class:`FlagTable`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

from mt_dnn.upstream_flags import Settings, ValueRule, shown

_GIVEN = "_tool_upstream_flags_given"


class _Record(argparse.Action):
    """Records a table flag as given (with or without a value) for :meth:`FlagTable.notices`."""

    def __call__(self, parser, namespace, values, option_string=None):
        # a new list each time: the parser's default list is shared by every parse
        value = None if values == [] else values  # a switch (nargs=0) has no value
        setattr(namespace, _GIVEN, [*getattr(namespace, _GIVEN, []), (option_string, value)])


@dataclass(frozen=True)
class FlagTable:
    """The upstream flags of one tool that have no option of their own: flag -> why (no effect), flag -> rule.
    ``switches`` take no value and ``valued`` exactly one, as upstream's argparse has them; the others an
    optional one."""
    program: str
    no_effect: Mapping[str, str] = field(default_factory=dict)
    rules: Mapping[str, ValueRule] = field(default_factory=dict)
    switches: frozenset = frozenset()
    valued: frozenset = frozenset()

    def add_to(self, parser: argparse.ArgumentParser, title: str) -> None:
        parser.set_defaults(**{_GIVEN: []})
        group = parser.add_argument_group(title)
        for flag, why in self.no_effect.items():
            group.add_argument(flag, nargs=self._nargs(flag), action=_Record, default=argparse.SUPPRESS,
                               help=f"no effect: {why}".replace("%", "%%"))
        for flag, rule in self.rules.items():
            text = (f"no effect ({rule.why}); other values refused" if rule.why else f"refused: {rule.instead}")
            group.add_argument(flag, nargs=self._nargs(flag), action=_Record, default=argparse.SUPPRESS,
                               help=text.replace("%", "%%"))

    def _nargs(self, flag: str):
        return 0 if flag in self.switches else None if flag in self.valued else "?"

    def notices(self, args: argparse.Namespace, settings: Optional[Settings] = None) -> list[str]:
        """The notice lines for the table flags given, in command-line order; ValueError (one line, without the
        program's name) for the first value refused."""
        given: Sequence[tuple[str, Optional[str]]] = vars(args).pop(_GIVEN, [])  # the tool's settings stay clean
        settings = dict(vars(args) if settings is None else settings)
        lines = []
        for flag, value in given:
            why = self.no_effect[flag] if flag in self.no_effect else self.rules[flag].judge(flag, value, settings)
            if why is not None:
                lines.append(f"{self.program}: warning: {shown(flag, value)} has no effect here ({why})")
        return lines


# ------------------------------------------------------------------------------------------ the tools' tables
def _cuda_true(value: Optional[str], settings: Settings) -> bool:
    return value is None or value.strip().lower() not in ("", "0", "false", "no", "off")


CUDA = ValueRule("use --device; auto runs on CUDA when it is available",
                 "use --device cpu to run on the CPU (MT-DNN's type=bool read any non-empty value, False too, as "
                 "true)", _cuda_true)

#: MT-DNN's predict.py: every other flag of it is an option of predict.py (docs/mtdnn.md)
PREDICT = FlagTable("predict.py", rules={"--cuda": CUDA})

#: MT-DNN's prepare_distillation_data.py: every flag of it is an option of prepare_distillation_data.py
DISTILL = FlagTable("prepare_distillation_data.py")

_TRAINING = "a training option; extraction runs the checkpoint's encoder as trained"
_SAN = "an answer-module option; extraction reads the encoder only"

#: MT-DNN's extractor.py (experiments/dump_embedding/extractor.py): its model and training options configure
#: the model it builds, but the encoder it extracts from is the checkpoint's, in evaluation mode.
EXTRACTOR = FlagTable("extractor.py", no_effect={
    **{flag: _SAN for flag in (
        "--mem_cum_type", "--answer_num_turn", "--answer_mem_drop_p", "--answer_att_hidden_size",
        "--answer_att_type", "--answer_rnn_type", "--answer_sum_att_type", "--answer_merge_opt",
        "--answer_mem_type", "--answer_dropout_p", "--answer_weight_norm_on", "--dump_state_on", "--answer_opt",
        "--label_size", "--mtl_opt", "--ratio", "--mix_opt", "--init_ratio")},
    **{flag: _TRAINING for flag in (
        "--update_bert_opt", "--optimizer", "--grad_clipping", "--global_grad_clipping", "--weight_decay",
        "--learning_rate", "--momentum", "--warmup", "--warmup_schedule", "--vb_dropout", "--dropout_p",
        "--dropout_w", "--bert_dropout_p", "--ema_opt", "--ema_gamma", "--have_lr_scheduler", "--multi_step_lr",
        "--freeze_layers", "--embedding_opt", "--lr_gamma", "--bert_l2norm", "--scheduler_type", "--output_dir",
        "--fp16_opt_level")},
    "--multi_gpu_on": "extraction runs on one device",
    "--seed": "extraction runs in evaluation mode, without dropout: nothing is random",
    "--transformer_cache": "models load from the registry, a local folder or the Hugging Face cache",
}, rules={
    "--cuda": CUDA,
    "--fp16": ValueRule("", "embeddings are computed in float32 here; leave the flag out"),
    "--do_lower_case": ValueRule(
        "the tokenizer lower-cases already; MT-DNN's AutoTokenizer decides casing from the tokenizer too",
        "this tokenizer keeps case (MT-DNN's AutoTokenizer ignores the flag as well): name an uncased tokenizer "
        "with --bert_model, or leave the flag out", lambda value, settings: bool(settings.get("lowercases"))),
})


# MT-DNN's and the SAGE repository's prepro_std.py and glue_prepro.py: their other flags take effect under the same
# names (--model, --root_dir, --task_def, --workers, --do_lower_case); each entry says what the flag did upstream
# (read from both repositories' code) and why leaving it out gives the same files.
@dataclass(frozen=True)
class NoEffect:
    why: str
    switch: bool = True  # upstream's action="store_true"; False: the flag takes one value


_PREPRO_STD: dict[str, NoEffect] = {
    "--do_padding": NoEffect("neither MT-DNN's nor the SAGE repository's prepro_std.py hands it to the tokenizer, "
                             "so their shards are unpadded too; batches are padded when they are built"),
    "--do_lower": NoEffect("MT-DNN reads it only for its MSR T5 tokenizers; casing is the tokenizer's own setting "
                           "(--do_lower_case checks that it lower-cases)"),
    "--transformer_cache": NoEffect("the tokenizer loads from the registry, a local folder or the Hugging Face "
                                    "cache; where it is cached does not change its tokens", switch=False),
}

_GLUE_PREPRO: dict[str, NoEffect] = {
    "--old_glue": NoEffect("upstream it adds QNLI v1's pair-wise ranking files qnnli_*, which MT-DNN's own "
                           "prepro_std.py fails on (it reads their label pairs such as 'entailment,not_entailment' "
                           "as one label) and which QNLI v2, the one GLUE distributes, does not pair up; the other "
                           "files are the same with or without it"),
    "--seed": NoEffect("upstream it only shuffles the QNLI v1 ranking pairs of --old_glue", switch=False),
}


def _table(program: str, entries: Mapping[str, NoEffect]) -> FlagTable:
    return FlagTable(program, no_effect={f: e.why for f, e in entries.items()},
                     switches=frozenset(f for f, e in entries.items() if e.switch),
                     valued=frozenset(f for f, e in entries.items() if not e.switch))


PREPRO_STD = _table("prepro_std.py", _PREPRO_STD)
GLUE_PREPRO = _table("glue_prepro.py", _GLUE_PREPRO)

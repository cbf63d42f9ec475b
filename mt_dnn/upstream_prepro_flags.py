"""MT-DNN's and the SAGE repository's flags of ``prepro_std.py`` and ``glue_prepro.py`` that change nothing here.

The rule is :mod:`mt_dnn.upstream_flags`'s for ``train.py``: every upstream flag parses, so their command lines
run, and each flag without an effect prints one notice line ``<program>: warning: --flag [value] has no effect
here (why)``. The other upstream flags of these two commands take effect under the same names (``--model``,
``--root_dir``, ``--task_def``, ``--workers``, ``--do_lower_case``). Each entry records what the flag did upstream
(read from both repositories' code) and why leaving it out gives the same files. The flags parse as upstream's
do: a switch takes no value, the others exactly one.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Mapping

from mt_dnn.upstream_flags import shown


@dataclass(frozen=True)
class NoEffect:
    why: str
    switch: bool = True  # upstream's action="store_true"; False: the flag takes one value


PREPRO_STD_FLAGS: dict[str, NoEffect] = {
    "--do_padding": NoEffect("neither MT-DNN's nor the SAGE repository's prepro_std.py hands it to the tokenizer, "
                             "so their shards are unpadded too; batches are padded when they are built"),
    "--do_lower": NoEffect("MT-DNN reads it only for its MSR T5 tokenizers; casing is the tokenizer's own setting "
                           "(--do_lower_case checks that it lower-cases)"),
    "--transformer_cache": NoEffect("the tokenizer loads from the registry, a local folder or the Hugging Face "
                                    "cache; where it is cached does not change its tokens", switch=False),
}

GLUE_PREPRO_FLAGS: dict[str, NoEffect] = {
    "--old_glue": NoEffect("upstream it adds QNLI v1's pair-wise ranking files qnnli_*, which MT-DNN's own "
                           "prepro_std.py fails on (it reads their label pairs such as 'entailment,not_entailment' "
                           "as one label) and which QNLI v2, the one GLUE distributes, does not pair up; the other "
                           "files are the same with or without it"),
    "--seed": NoEffect("upstream it only shuffles the QNLI v1 ranking pairs of --old_glue", switch=False),
}

_GIVEN = "_upstream_flags_given"


class _Given(argparse.Action):
    """Records an upstream flag (as typed, with its value or None) for the notices."""

    def __call__(self, parser, namespace, values, option_string=None):
        getattr(namespace, _GIVEN).append((option_string, values))


def add_no_effect_flags(parser: argparse.ArgumentParser, table: Mapping[str, NoEffect]) -> None:
    """Parse the table's flags as upstream does, into a group that says what each one gets here."""
    parser.set_defaults(**{_GIVEN: []})
    group = parser.add_argument_group("MT-DNN and SAGE-repository flags without an effect here")
    for flag, entry in table.items():
        group.add_argument(flag, nargs=0 if entry.switch else None, action=_Given, default=argparse.SUPPRESS,
                           metavar=None if entry.switch else "X",
                           help=f"no effect: {entry.why}".replace("%", "%%"))


def notices(program: str, args: argparse.Namespace, table: Mapping[str, NoEffect]) -> list[str]:
    """One notice line per upstream flag given, in command-line order; removes the record from ``args``."""
    given = vars(args).pop(_GIVEN, [])
    return [f"{program}: warning: {shown(flag, None if table[flag].switch else value)} has no effect here "
            f"({table[flag].why})" for flag, value in given]

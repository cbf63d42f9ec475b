"""MT-DNN's and the SAGE repository's ``train.py`` flags that have no :class:`~mt_dnn.config.TrainConfig` field.

Every such flag parses, so their command lines run here, but a flag never changes the result silently: each entry
below records what the flag did in both upstream repositories (read from their code) and what it gets here. In
:data:`NO_EFFECT_FLAGS` no value changes the result here (nor, mostly, there): each use prints one notice line.
In :data:`VALUE_FLAGS` the value decides: a value that asks for what this project does anyway gets the notice,
any other value is refused in one line that says what to use instead; ``--scheduler_type`` and ``--local_rank``
take effect. The migration table in docs/mtdnn.md lists the same decisions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

#: The parsed TrainConfig values by field name and, by flag name (``--x``), the upstream flags given and
#: ``--warmup_schedule`` as typed (absent when not given). A rule may set ``warmup_schedule``.
Settings = dict[str, Any]


def shown(flag: str, value: Optional[str]) -> str:
    """The flag as the user gave it: ``--flag`` or ``--flag value``."""
    return flag if value is None else f"{flag} {value}"


# ------------------------------------------------------------------------------------------ every value: notice
#: flag -> why no value of it changes the result here; each use prints
#: ``train.py: warning: --flag [value] has no effect here (why)``.
NO_EFFECT_FLAGS: dict[str, str] = {
    "--multi_gpu_on": "launch with torchrun for data parallelism; MT-DNN's DataParallel trains the same model",
    "--answer_sum_att_type": "neither MT-DNN's nor the SAGE repository's SAN reads it (--mem_cum_type picks the "
                             "hypothesis summary)",
    "--bert_model_type": "neither upstream train.py reads it; the encoder is --init_checkpoint (and --encoder_type)",
    "--do_lower_case": "casing is fixed when prepro_std.py tokenizes",
    "--masked_lm_prob": "no masked-LM pretraining here (neither upstream train.py reads it)",
    "--short_seq_prob": "no masked-LM pretraining here (neither upstream train.py reads it)",
    "--max_predictions_per_seq": "no masked-LM pretraining here (neither upstream train.py reads it)",
    "--bin_size": "MT-DNN reads it only with --bin_on, which is refused here",
    "--bin_grow_ratio": "MT-DNN reads it only with --bin_on, which is refused here",
    "--world_size": "the launcher's WORLD_SIZE is used; MT-DNN overwrote the flag with it too",
    "--master_addr": "the launcher's MASTER_ADDR is used; MT-DNN read that too",
    "--master_port": "the launcher's MASTER_PORT is used; MT-DNN read that too",
    "--backend": "NCCL on GPUs, gloo on CPU, chosen automatically; the backend does not change the result",
    "--tensorboard_logdir": "TensorBoard scalars go to OUTPUT_DIR/tensorboard",
    "--data_sort_on": "neither upstream train.py reads it; training batches are length-bucketed",
    "--name": "neither upstream train.py reads it",
    "--glue_format_on": "GLUE submission files are always written for test splits",
    "--do_padding": "padding never changes the result (attention masks); batches are padded to a multiple of 8",
    "--vb_dropout": "both upstreams' DropoutWrapper ignores it; dropout here is standard everywhere, which is what "
                    "it asks for",
    "--debug": "SMART's debug numbers are not printed",
    "--transformer_cache": "models load from the registry, a local folder or the Hugging Face cache",
    "--tokenizer": "shards are tokenized by prepro_std.py",
}


# ------------------------------------------------------------------------------------------ the value decides
Accepts = Callable[[Optional[str], Settings], bool]


def _never(value: Optional[str], settings: Settings) -> bool:
    return False


def _one_of(*allowed: str) -> Accepts:
    """Values equal to one of ``allowed``, ignoring case (MT-DNN upper- or lower-cases these names)."""
    def accepts(value: Optional[str], settings: Settings) -> bool:
        return value is not None and value.strip().lower() in allowed
    return accepts


def _equals(number: float) -> Accepts:
    def accepts(value: Optional[str], settings: Settings) -> bool:
        try:
            return value is not None and float(value) == number
        except ValueError:
            return False
    return accepts


def _plain_sgd_scheduler_unused(value: Optional[str], settings: Settings) -> bool:
    """The SAGE repository built its --scheduler_type scheduler for plain SGD only: with any other optimizer the
    flag did nothing there either."""
    return str(settings.get("optimizer", "")).lower() not in SGD_OPTIMIZERS


def _fp16_level_o1(value: Optional[str], settings: Settings) -> bool:
    return not settings.get("fp16") or (value or "").strip() == "O1"


def _cuda_true(value: Optional[str], settings: Settings) -> bool:
    return value is None or value.strip().lower() not in ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class ValueRule:
    """Values for which ``accepts`` holds ask for what this project does anyway and get the notice ``why``; any
    other value is refused with ``instead`` (what to use instead)."""
    why: str
    instead: str
    accepts: Accepts = _never

    def judge(self, flag: str, value: Optional[str], settings: Settings) -> Optional[str]:
        if self.accepts(value, settings):
            return self.why
        raise ValueError(f"{shown(flag, value)}: {self.instead}")


SGD_OPTIMIZERS = ("sgd",)  # the SAGE repository's plain SGD; it has no SGD-SAGE
#: MT-DNN's --scheduler_type ints -> this project's schedule of the same formula (transformers' functions, which
#: MT-DNN calls). MT-DNN builds a polynomial-decay schedule for 3 and then overwrites it with the linear one (its
#: ``if == 3`` is followed by a separate ``if == 2 / elif == 1 / else linear``), so 3 trains linear there.
MTDNN_SCHEDULER_TYPES: dict[int, str] = {0: "linear", 1: "cosine", 2: "constant", 3: "linear"}
#: the SAGE repository's --scheduler_type strings -> the torch scheduler it built for plain SGD
SAGE_SCHEDULER_TYPES: dict[str, str] = {"ms": "a MultiStepLR", "rop": "a ReduceLROnPlateau", "exp": "an ExponentialLR"}
_SGD_CONSTANT = "its SGD ran at the constant base rate: for that run use --warmup_schedule constant --warmup 0"


@dataclass(frozen=True)
class SchedulerTypeRule:
    """``--scheduler_type``: MT-DNN's ints become ``warmup_schedule``; the SAGE repository's strings meant a torch
    scheduler for plain SGD that it never stepped."""
    text: str

    def judge(self, flag: str, value: Optional[str], settings: Settings) -> Optional[str]:
        word = (value or "").strip()
        if word.lstrip("-").isdigit() and int(word) in MTDNN_SCHEDULER_TYPES:
            return self._mtdnn(flag, value, MTDNN_SCHEDULER_TYPES[int(word)], settings)
        if word in SAGE_SCHEDULER_TYPES:
            if _plain_sgd_scheduler_unused(value, settings):
                return ("the SAGE repository applies it only to plain SGD; its other optimizers follow "
                        "--warmup_schedule, as here")
            raise ValueError(f"{shown(flag, value)}: with --optimizer {settings['optimizer']} the SAGE repository "
                             f"built {SAGE_SCHEDULER_TYPES[word]} that it never stepped, and none exists here; "
                             f"{_SGD_CONSTANT}")
        known = ", ".join(f"{k} ({v})" for k, v in MTDNN_SCHEDULER_TYPES.items())
        raise ValueError(f"{shown(flag, value)}: expected MT-DNN's {known} or the SAGE repository's "
                         f"{', '.join(SAGE_SCHEDULER_TYPES)}")

    @staticmethod
    def _mtdnn(flag: str, value: Optional[str], schedule: str, settings: Settings) -> None:
        explicit = settings.get("warmup_schedule")
        if explicit is not None and explicit != schedule:
            raise ValueError(f"{shown(flag, value)} (MT-DNN's {schedule} schedule) contradicts --warmup_schedule "
                             f"{settings['--warmup_schedule']}; give one of the two")
        settings["warmup_schedule"] = schedule
        return None


@dataclass(frozen=True)
class LaunchRule:
    """A flag ``train.py`` reads before this parse (:func:`mt_dnn.distributed.from_environment`); here it is only
    checked to be an integer of at least -1."""
    text: str

    def judge(self, flag: str, value: Optional[str], settings: Settings) -> Optional[str]:
        try:
            if value is not None and int(value) >= -1:
                return None
        except ValueError:
            pass
        raise ValueError(f"{shown(flag, value)}: expected a GPU index (0, 1, ...) or -1 (one process)")


#: flag -> rule; the rule's text says what each value gets here and why.
VALUE_FLAGS: dict[str, ValueRule | SchedulerTypeRule | LaunchRule] = {
    "--mem_cum_type": ValueRule(
        "this SAN summarises the hypothesis with an MLP scorer (MT-DNN's mlp; here a layer of "
        "--answer_att_hidden_size tanh units)",
        "this SAN summarises the hypothesis with an MLP scorer (MT-DNN's mlp); MT-DNN's other values give a "
        "linear scorer, which is not available: leave the flag out", _one_of("mlp")),
    "--answer_att_type": ValueRule(
        "this SAN attends bilinearly from its state over the premise (MT-DNN's bilinear)",
        "this SAN attends bilinearly (MT-DNN's bilinear); MT-DNN's other attention scorers are not available: "
        "leave the flag out", _one_of("bilinear")),
    "--answer_rnn_type": ValueRule(
        "this SAN's step cell is a GRU (MT-DNN's gru)",
        "this SAN's step cell is a GRU (MT-DNN's gru); LSTM and RNN cells are not available: leave the flag out",
        _one_of("gru")),
    "--answer_merge_opt": ValueRule(
        "this SAN predicts from [read, state, |read - state|, read * state] (MT-DNN's 1)",
        "this SAN predicts from [read, state, |read - state|, read * state] (MT-DNN's 1); MT-DNN's 0 ([read, "
        "state]) is not available: leave the flag out", _equals(1)),
    "--answer_mem_type": ValueRule(
        "this SAN averages its steps' predictions, dropping steps at random in training (MT-DNN's 1)",
        "this SAN averages its steps' predictions (MT-DNN's 1); MT-DNN's 0 (the last step's prediction only) is "
        "not available: leave the flag out", _equals(1)),
    "--answer_weight_norm_on": ValueRule(
        "", "weight normalisation of the SAN's layers is not available here: leave the flag out"),
    "--dump_state_on": ValueRule(
        "", "the SAN's per-step predictions are not dumped here: leave the flag out"),
    "--max_answer_len": ValueRule(
        "", "Span tasks read max_answer_len from their task definition: set it there"),
    "--mtl_opt": ValueRule(
        "heads are per task (MT-DNN's 0)",
        "one head shared by the tasks with the same number of classes (earlier MT-DNN's mtl_opt > 0; today's "
        "upstreams ignore the flag) is not available: heads are per task here; leave the flag out", _equals(0)),
    "--init_ratio": ValueRule(
        "fresh heads start from normal(0, the encoder's initializer_range) weights, MT-DNN's ratio 1",
        "scaling the fresh heads' initial weights (earlier MT-DNN's std 0.02 x init_ratio; today's upstreams "
        "ignore the flag) is not available: leave the flag out", _equals(1)),
    "--bin_on": ValueRule(
        "", "MT-DNN's length bins, with batches shrinking by --bin_grow_ratio per bin and the loss rescaled by "
        "batch size, are not available; batches here hold --batch_size examples of similar length: leave the "
        "flag out"),
    "--cuda": ValueRule(
        "use --device; auto trains on CUDA when it is available",
        "use --device cpu to train on the CPU (MT-DNN's type=bool read any non-empty value, False too, as true)",
        _cuda_true),
    "--dropout_w": ValueRule(
        "no word dropout (MT-DNN's 0)",
        "word dropout (training tokens replaced by the unknown token with this probability) is not available: "
        "leave the flag out", _equals(0)),
    "--fp16_opt_level": ValueRule(
        "--fp16 here is torch autocast with float32 weights and dynamic loss scaling, Apex's O1 (and the level is "
        "read only with --fp16)",
        "--fp16 here is torch autocast with float32 weights and dynamic loss scaling (Apex's O1): O0 is float32 "
        "training (leave out --fp16), O2 and O3 keep float16 weights, which is not available", _fp16_level_o1),
    "--encode_mode": ValueRule(
        "", "MT-DNN's encode-only run (the test sets' encoder outputs saved, no training) is not available here"),
    "--weighted_on": ValueRule(
        "", "per-example loss weights (MT-DNN's weighted_on option) are not available here"),
    "--have_lr_scheduler": ValueRule(
        "the SAGE repository's switch (given: off) for the scheduler of plain SGD only; its other optimizers "
        "follow --warmup_schedule, as here",
        "with plain SGD it turned off the SAGE repository's SGD scheduler, which it never stepped anyway; "
        + _SGD_CONSTANT, _plain_sgd_scheduler_unused),
    "--multi_step_lr": ValueRule(
        "the SAGE repository reads it only for plain SGD's scheduler (--scheduler_type)",
        "the SAGE repository gave it to plain SGD's scheduler, which it never stepped, and none exists here; "
        + _SGD_CONSTANT, _plain_sgd_scheduler_unused),
    "--lr_gamma": ValueRule(
        "the SAGE repository reads it only for plain SGD's scheduler (--scheduler_type)",
        "the SAGE repository gave it to plain SGD's scheduler, which it never stepped, and none exists here; "
        + _SGD_CONSTANT, _plain_sgd_scheduler_unused),
    "--scheduler_type": SchedulerTypeRule(
        "MT-DNN's 0/1/2 (and 3, which its code trains as linear) set --warmup_schedule linear/cosine/constant/"
        "linear, refused where an explicit --warmup_schedule differs; the SAGE repository's ms/rop/exp: no effect "
        "with its schedule-carrying optimizers, refused with plain SGD (it built a scheduler it never stepped)"),
    "--local_rank": LaunchRule(
        "read by train.py before the parse: where the launcher (torch.distributed.launch) set no LOCAL_RANK it "
        "places this process on GPU N; where it did, the two must agree; -1 (MT-DNN's default): one process"),
}
#: other spellings of an upstream flag (torch >= 2.0's launcher passes --local-rank)
SPELLINGS: dict[str, tuple[str, ...]] = {"--local_rank": ("--local-rank",)}


def canonical(flag: str) -> str:
    return next((k for k, v in SPELLINGS.items() if flag in v), flag)


def judge(given: Sequence[tuple[str, Optional[str]]], settings: Settings) -> list[str]:
    """The notice lines for the upstream flags ``given`` (flag as typed, value), in command-line order; raises
    ValueError (one line) for the first value refused. A rule may set ``settings['warmup_schedule']``."""
    for flag, value in given:
        settings[canonical(flag)] = value
    lines = []
    for flag, value in given:
        name = canonical(flag)
        why = NO_EFFECT_FLAGS[name] if name in NO_EFFECT_FLAGS else VALUE_FLAGS[name].judge(flag, value, settings)
        if why is not None:
            lines.append(f"train.py: warning: {shown(flag, value)} has no effect here ({why})")
    return lines


def all_flags() -> Mapping[str, str]:
    """Every upstream flag of the table -> its decision in words (for the help and the docs/mtdnn.md check)."""
    out = {flag: f"no effect: {why}" for flag, why in NO_EFFECT_FLAGS.items()}
    for flag, rule in VALUE_FLAGS.items():
        if not isinstance(rule, ValueRule):
            out[flag] = rule.text
        else:
            out[flag] = f"no effect ({rule.why}); other values refused" if rule.why else f"refused: {rule.instead}"
    return out

"""The one schema for YAML files and command-line overrides.

A run is described by a :class:`RunConfig` made of four sections. Every leaf key is unique across
sections, so a user may write ``lr=1e-4``, ``--lr 1e-4`` or ``method.lr=1e-4`` alike; YAML files may be
nested by section or flat. Defaults that depend on the method (learning rate, schedule, ...) are left as
``None`` here and filled in by :func:`resolve`, so that ``config.yaml`` in a run folder records the value
actually used.

Each field is declared with :func:`option`: its ``--help`` text and the rule its value must meet (``check=``),
both next to the field, so a new key is checked by declaring it. Rules that join several keys are the
``check`` methods of the sections and of :class:`RunConfig`. A validation library was weighed and not taken:
pydantic would replace :func:`coerce` and the range checks, but its coercion differs from zoft's (``steps=2e3``
is refused as an int, ``true`` is taken as 1 or 1.0, ``on``/``t``/``y`` are booleans, ``nan`` and ``inf`` are
floats) and its errors are not zoft's one-line ``config key 'x': ...`` messages, so keeping the behaviour would
take about as much code as it removes, plus a dependency; OmegaConf takes no ``Literal`` and jsonargparse has no
flat ``key=value``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from zoft.data.tasks import MAX_LENGTH, TaskSpec, get_task
from zoft.data.templates import task_template
from zoft.errors import ZoftError, first_line
from zoft.method_names import config_aliases
from zoft.pretrained import has_masked_lm_head, is_causal_lm

Method = Literal["lora", "full", "mezo"]
LM_BFF = "lm-bff"  # select_metric: what LM-BFF's and MeZO's code select on (TaskSpec.lm_bff_metric)
Schedule = Literal["linear", "cosine", "constant", "constant_with_warmup"]

Check = Callable[[Any], str | None]
"""A field's own rule: what is wrong with a resolved value (the tail of its one-line error), or None."""


def _rule(holds: Callable[[Any], bool], rule: str) -> Check:
    return lambda value: None if holds(value) else f"{rule}, got {value}"


# POSITIVE refuses None too: the fields that carry it are set by the time resolve checks them (lr and max_length
# are None only until resolve fills them in). The other rules let None mean "unset".
POSITIVE = _rule(lambda value: value is not None and value > 0, "must be > 0")
OPTIONAL_POSITIVE = _rule(lambda value: value is None or value > 0, "must be > 0")
NON_NEGATIVE = _rule(lambda value: value is None or value >= 0, "must be >= 0")
FRACTION = _rule(lambda value: 0 < value < 1, "must be between 0 and 1")
RATIO = _rule(lambda value: 0 <= value < 1, "must be in [0, 1)")
DENSITY = _rule(lambda value: 0 < value <= 1, "must be in (0, 1]")


def _params_pattern(value: str | None) -> str | None:
    if value in (None, "lora", "all"):
        return None
    try:
        re.compile(value)
    except re.error as error:
        return f"'{value}' is not a valid regular expression ({error})"
    return None


def _one_or_two_columns(value: list[str] | None) -> str | None:
    if value is None or 1 <= len(value) <= 2:
        return None
    return f"expected one or two columns, got {value}"


def option(help: str, *, default: Any, check: Check | tuple[Check, ...] = ()) -> Any:
    """A config field with its --help text and its own rules (checked in order by :meth:`RunConfig.check`)."""
    checks = check if isinstance(check, tuple) else (check,)
    return field(default=default, metadata={"help": help, "checks": checks})


def _check_fields(section: Any) -> None:
    """Each field of a section against the rules declared with it."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        for check in f.metadata["checks"]:
            problem = check(value)
            if problem is not None:
                raise ZoftError(f"config key '{f.name}': {problem}")


@dataclass
class DataConfig:
    task: str = option("GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli) or 'custom'", default="mrpc")
    data_dir: str | None = option(
        "folder in the GLUE distribution layout; default $GLUE_DIR, else the Hugging Face hub", default=None
    )
    train_file: str | None = option("task=custom: CSV or JSONL file with the training examples", default=None)
    test_file: str | None = option("task=custom: CSV or JSONL file scored as the test split", default=None)
    text_columns: list[str] | None = option("task=custom: one or two text columns, comma-separated", default=None,
                                            check=_one_or_two_columns)
    label_column: str = option("task=custom: the label column", default="label")
    validation_fraction: float = option(
        "share of train held out (stratified) as the validation split (k_shot draws its own instead)", default=0.1,
        check=FRACTION,
    )
    train_limit: int | None = option("keep at most this many training examples (after the hold-out)", default=None,
                                     check=OPTIONAL_POSITIVE)
    k_shot: int | None = option(
        "K training and K validation examples per class, drawn from the training file as the MeZO paper's data "
        "script draws them (the same seed gives the same examples; the paper's seeds: 13, 21, 42, 87, 100)",
        default=None, check=OPTIONAL_POSITIVE,
    )
    test_limit: int | None = option(
        "score at most this many test examples, drawn as the MeZO paper's data script draws them (it keeps 1000)",
        default=None, check=OPTIONAL_POSITIVE,
    )
    max_length: int | None = option(
        f"truncate inputs to this many tokens (default: the task's, {MAX_LENGTH}; 256 for RTE and MNLI, as the "
        "MeZO paper's code runs them)",
        default=None, check=POSITIVE,
    )


@dataclass
class ModelConfig:
    model: str = option(
        "Hugging Face model name, local folder, or an offline alias: minilm (the default; no masked-LM head), "
        "bert-tiny-mlm (a small real masked LM, for prompt-based runs offline)",
        default="minilm",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = option("parameter dtype", default="float32")
    lora_r: int = option("LoRA rank", default=8, check=POSITIVE)
    lora_alpha: float = option("LoRA alpha (scale = alpha / r)", default=16.0, check=POSITIVE)
    lora_dropout: float = option("LoRA dropout", default=0.1, check=NON_NEGATIVE)
    target_modules: list[str] | None = option(
        "modules that get LoRA adapters, comma-separated; default: PEFT's choice for the model family",
        default=None,
    )
    head: Literal["auto", "classifier", "prompt"] = option(
        "prompt: label words scored by the masked-LM head at a mask token of a template (MeZO / LM-BFF "
        "prompt-based fine-tuning; needs a model with an MLM head); classifier: a classification head; auto: "
        "prompt for a masked LM on a classification task (MeZO without a prompt stays near chance: the MeZO "
        "paper's Table 5), unless pooling, pair_encoding, head_init or head_grad ask for a classifier; else "
        "classifier",
        default="auto",
    )
    template: str | None = option(
        "head=prompt: the template, with {s1}, {s2} and {mask}; {s1-} drops a sentence's last character, {s2l} "
        "lower-cases its first letter (default: the task's, LM-BFF's, e.g. RTE '{s1-}? {mask}, {s2l}')",
        default=None,
    )
    label_words: list[str] | None = option("head=prompt: one word per label, comma-separated (default: the task's)",
                                           default=None)
    pooling: Literal["model", "cls", "mean"] = option(
        "model: the model's own classification head; cls / mean: a linear head on the first token's or the "
        "mean of the tokens' last hidden states",
        default="model",
    )
    pair_encoding: Literal["joint", "separate"] = option(
        "pair tasks: joint (one input, the sentences side by side) or separate (each sentence encoded "
        "alone, the head sees u, v, |u-v|, u*v; needs pooling cls or mean)",
        default="joint",
    )
    head_init: Literal["random", "linear-probe"] = option(
        "linear-probe: fit the head by logistic regression on the frozen features of the training split "
        "before training starts",
        default="random",
    )
    train_lm_head: bool = option(
        "head=prompt with LoRA (lora, mezo with params lora): train the masked-LM head's transform (dense, layer "
        "norm) and output bias beside the adapters, as the MeZO paper's code does; its decoder, tied to the input "
        "embeddings, stays frozen",
        default=False,
    )

    def check(self) -> None:
        """Refuse keys of this section that do not work together (on a resolved config: head is not auto)."""
        if self.pair_encoding == "separate" and self.pooling == "model":
            raise ZoftError("config key 'pair_encoding': separate needs pooling cls or mean (the model's own head "
                            "reads one joint input)")
        if self.head == "prompt" and (self.pooling != "model" or self.head_init != "random"):
            raise ZoftError("config key 'head': prompt scores label words with the pretrained masked-LM head; "
                            "it takes no pooling and no head_init")
        if (self.template is not None or self.label_words is not None) and self.head != "prompt":
            raise ZoftError("config keys 'template' and 'label_words' apply to head=prompt only")


@dataclass
class MethodConfig:
    method: Method = option(
        "lora / full: backprop with AdamW; mezo: zeroth-order SGD (mezo-lora, mezo-full: mezo with those params)",
        default="lora",
    )
    params: str | None = option("mezo: what it trains: 'lora', 'all' or a regex over parameter names",
                                default=None, check=_params_pattern)
    lr: float | None = option("peak learning rate (default depends on the method)", default=None, check=POSITIVE)
    weight_decay: float | None = option("decoupled weight decay, not applied to biases and LayerNorm", default=None,
                                        check=NON_NEGATIVE)
    schedule: Schedule | None = option("learning-rate schedule (default: linear for backprop, constant for mezo)",
                                       default=None)
    warmup_ratio: float | None = option("share of the steps spent warming up the learning rate", default=None,
                                        check=RATIO)
    max_grad_norm: float | None = option("backprop: clip the gradient norm (0: off)", default=1.0, check=NON_NEGATIVE)
    eps: float = option("mezo: perturbation size epsilon", default=1e-3, check=POSITIVE)
    n_perturbations: int = option("mezo: random directions per step (n-SPSA)", default=1, check=POSITIVE)
    n_perturbations_final: int | None = option(
        "mezo: grow the directions per step linearly from n_perturbations at the first step to this at the last",
        default=None, check=OPTIONAL_POSITIVE,
    )
    momentum: float = option("mezo: momentum of the projected-gradient update (ZO-SGD-MMT)", default=0.0,
                             check=(NON_NEGATIVE, RATIO))
    zo_estimator: Literal["spsa", "svrg"] = option(
        "mezo: spsa, MeZO's two-point estimate (2 forwards a step); svrg, MeZO-SVRG (Gautam et al. 2024): the "
        "estimate at the parameters minus the same at a snapshot plus the snapshot's large-batch estimate "
        "(4 forwards a step, plus 2 per micro-batch of the large batch every svrg_every steps; keeps 2 copies "
        "of the trained parameters)",
        default="spsa",
    )
    svrg_every: int = option("zo_estimator=svrg: take a snapshot every this many steps (q)", default=50, check=POSITIVE)
    svrg_batches: int = option(
        "zo_estimator=svrg: micro-batches in a snapshot's large batch, the step's own and more drawn from the "
        "training stream; 0: the whole training split in order (MRPC at batch 16: 207 micro-batches, 414 forwards "
        "a snapshot)",
        default=16, check=NON_NEGATIVE,
    )
    svrg_lr_full: float | None = option(
        "zo_estimator=svrg: learning rate of the snapshot steps (eta1; the paper takes it larger than lr); "
        "default: lr, following its schedule",
        default=None, check=NON_NEGATIVE,
    )
    grad_accumulation: int = option("micro-batches per optimiser step", default=1, check=POSITIVE)
    head_grad: Literal["zo", "exact"] = option(
        "mezo: zo trains the head with the zeroth-order estimate like the rest; exact trains it by an ordinary "
        "gradient on the detached features (no backward through the encoder)",
        default="zo",
    )
    head_lr: float = option("mezo with head_grad=exact: the head's AdamW learning rate", default=1e-3)
    perturbation: Literal["gaussian", "lowrank", "sparse"] = option(
        "mezo: the distribution of the random direction z: gaussian, MeZO's N(0, I); lowrank, LOZO's U V^T / "
        "sqrt(perturbation_rank) per weight matrix (r(m+n) numbers drawn instead of mn; biases and norms stay "
        "Gaussian); sparse, N(0, 1) / sqrt(p) on a random share perturbation_density of each bucket's 64-number "
        "blocks, 0 elsewhere, redrawn every step. All three have the same covariance (the identity), so lr and eps "
        "keep their meaning; all are drawn again from the step's seed (replay and resume work alike)",
        default="gaussian",
    )
    perturbation_rank: int = option("perturbation=lowrank: the rank r of each matrix's z", default=4,
                                    check=POSITIVE)
    perturbation_density: float = option(
        "perturbation=sparse: the share of the trained numbers perturbed each step, in blocks of 64",
        default=0.25, check=DENSITY,
    )
    cache_z: bool = option(
        "mezo: keep each step's random direction z in memory for the step's later passes instead of drawing it "
        "again from its seed (the same numbers bit for bit, faster where drawing z is a large part of a step, as "
        "for all the weights of a small model; costs n_perturbations times the trained parameters in memory)",
        default=False,
    )
    zo_parallel: Literal["shared-direction", "direction-per-rank"] = option(
        "mezo on several processes (torchrun, or --nproc): shared-direction, every rank perturbs along the step's "
        "directions, evaluates its share of the batch's rows, and the ranks sum (loss x rows, rows): the update of "
        "one process on the whole batch; direction-per-rank, each rank measures its own n_perturbations directions "
        "on its rows and the ranks gather their (seed, loss+, loss-): n-SPSA with world size x n_perturbations "
        "directions. Either way only scalars are exchanged",
        default="shared-direction",
    )
    mezo_half_precision: bool = option(
        "mezo: accept dtype float16 or bfloat16 (refused otherwise: the rounding of every perturb-and-restore "
        "adds up over a run's steps and drifts the weights)",
        default=False,
    )

    def check(self) -> None:
        """Refuse keys of this section that do not work together: a perturbation for backprop, and those
        zo_estimator=svrg rules out."""
        if self.perturbation != "gaussian" and self.method != "mezo":
            raise ZoftError(f"config key 'perturbation': {self.perturbation} applies to method mezo only, not to "
                            f"'{self.method}'")
        if self.zo_estimator != "svrg":
            return
        if self.method != "mezo":
            raise ZoftError(f"config key 'zo_estimator': svrg applies to method mezo only, not to '{self.method}'")
        if self.momentum > 0 or self.head_grad == "exact":
            raise ZoftError("config key 'zo_estimator': svrg takes no momentum and no head_grad=exact (its steps "
                            "evaluate the loss at a snapshot too, which neither accounts for)")
        if 0 < self.svrg_batches < self.grad_accumulation:
            raise ZoftError(f"config key 'svrg_batches': the large batch ({self.svrg_batches} micro-batches) must "
                            f"hold at least a step's grad_accumulation ({self.grad_accumulation}), or be 0 (the whole "
                            "split)")


@dataclass
class TrainConfig:
    steps: int | None = option("optimiser steps (default: from epochs, else the method's default)", default=None,
                               check=OPTIONAL_POSITIVE)
    epochs: float | None = option("passes over the training split, if steps is not given", default=None,
                                  check=OPTIONAL_POSITIVE)
    max_forward_passes: int | None = option(
        "stop once training has made this many forward passes; the schedule still spans steps", default=None,
        check=OPTIONAL_POSITIVE,
    )
    max_minutes: float | None = option(
        "stop once training (not evaluation) has taken this many minutes; the schedule still spans steps",
        default=None, check=OPTIONAL_POSITIVE,
    )
    batch_size: int = option("examples per micro-batch", default=16, check=POSITIVE)
    group_by_length: bool | None = option(
        "batch training examples of similar length (less padding, faster); default: true, but false with k_shot "
        "(a K-shot set is a few batches: grouped by length they would be the same batches every epoch)",
        default=None,
    )
    eval_batch_size: int = option("examples per evaluation batch", default=64, check=POSITIVE)
    eval_every: int = option("evaluate validation and test every this many steps (and at the end)", default=100,
                             check=POSITIVE)
    log_every: int = option("write a metrics line every this many steps", default=10, check=POSITIVE)
    checkpoint_every: int = option("save a resumable checkpoint every this many steps (0: only at the end)",
                                   default=500, check=NON_NEGATIVE)
    seed: int = option("seed of the run: hold-out, data order, initialisation, dropout, perturbations",
                       default=42)
    device: str = option("auto, cpu, cuda, cuda:N, mps", default="auto")
    divergence_factor: float = option(
        "stop as diverged when the mean loss of the last 10 steps exceeds this multiple of the first 10 (0: only a "
        "non-finite loss stops a run)",
        default=5.0, check=NON_NEGATIVE,
    )
    replica_check_every: int = option(
        "several processes: compare a sha256 of every rank's trainable tensors every this many steps (and at the "
        "start and the end); a mismatch stops the run (0: at the start and the end only)",
        default=100, check=NON_NEGATIVE,
    )
    dist_timeout: float = option(
        "several processes: seconds a rank waits for the others in an exchange before it stops with an error "
        "naming them (a rank that died, was killed or stalls)",
        default=600.0, check=POSITIVE,
    )
    select_metric: str | None = option(
        f"validation metric that chooses the best checkpoint (default: the task's); {LM_BFF}: the one LM-BFF's and "
        "the MeZO paper's code choose by (F1 for MRPC and QQP, else the task's)",
        default=None,
    )
    select_step_zero: bool = option(
        "the evaluation before the first step may be chosen as the best checkpoint (the MeZO paper's code never "
        "chooses it: it evaluates after training steps only)",
        default=True,
    )


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Refuse what types alone cannot: each field against its own rules, then the rules that join keys
        (a section's own, and those across the model and method sections)."""
        for name in SECTIONS:
            _check_fields(getattr(self, name))
        model, method = self.model, self.method
        model.check()
        if model.train_lm_head and (model.head != "prompt" or not _trains_lora(method)):
            raise ZoftError("config key 'train_lm_head' applies to head=prompt with LoRA (method lora, or mezo with "
                            "params lora); other methods choose their parameters with params")
        if method.method == "mezo" and model.dtype != "float32" and not method.mezo_half_precision:
            raise ZoftError(f"config key 'dtype': MeZO in {model.dtype} drifts the weights (each perturb-and-restore "
                            "rounds them, step after step); keep float32, or set mezo_half_precision=true to accept "
                            "it")
        if method.head_grad == "exact" and (method.method != "mezo" or model.head == "prompt"):
            raise ZoftError("config key 'head_grad': exact applies to method mezo with a classification head")
        method.check()


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunConfig))


def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {name: hints[name] for name in SECTIONS}


def config_keys() -> dict[str, tuple[str, dataclasses.Field]]:
    """Every leaf key, mapped to (section, field)."""
    keys: dict[str, tuple[str, dataclasses.Field]] = {}
    for section, cls in _section_classes().items():
        for f in dataclasses.fields(cls):
            keys[f.name] = (section, f)
    return keys


def _key_type(section: str, key: str) -> Any:
    return typing.get_type_hints(_section_classes()[section])[key]


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _describe(inner[0]) + " or null"
    if origin is list:
        return "a comma-separated list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def coerce(key: str, value: Any, tp: Any) -> Any:
    """Turn a YAML or command-line value into the declared type of `key`, or raise a ZoftError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "")):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return coerce(key, value, inner[0])
    try:
        if origin is Literal:
            allowed = typing.get_args(tp)
            if value not in allowed:
                raise ValueError
            return value
        if origin is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            return [str(item).strip() for item in items if str(item).strip()]
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            if isinstance(value, str) and "e" in value.lower():
                number = float(value)
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
            if not math.isfinite(number):
                raise ValueError
            return number
        if tp is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        raise ZoftError(f"config key '{key}': {value!r} is not {_describe(tp)}") from None
    raise AssertionError(f"unsupported config type {tp} for {key}")


def _unknown_key(key: str) -> ZoftError:
    known = ", ".join(sorted(config_keys()))
    return ZoftError(f"unknown config key '{key}'; known keys: {known}")


METHOD_ALIASES = config_aliases()


def expand_method_alias(overrides: dict[str, Any]) -> dict[str, Any]:
    """method=mezo-lora means method=mezo params=lora (an explicit params still wins)."""
    for key in ("method", "method.method"):
        if isinstance(overrides.get(key), str) and overrides[key] in METHOD_ALIASES:  # a YAML list is no alias
            method, params = METHOD_ALIASES[overrides[key]]
            return {**overrides, key: method, "params": overrides.get("params", params)}
    return overrides


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return a copy of `config` with `overrides` ({key or section.key: value}) applied and type-checked."""
    overrides = expand_method_alias(overrides)
    config = dataclasses.replace(
        config, **{name: dataclasses.replace(getattr(config, name)) for name in SECTIONS}
    )
    keys = config_keys()
    for raw_key, value in overrides.items():
        key = raw_key.replace("-", "_")
        section_hint, _, leaf = key.rpartition(".")
        if leaf not in keys or (section_hint and keys[leaf][0] != section_hint):
            raise _unknown_key(raw_key)
        section, _ = keys[leaf]
        setattr(getattr(config, section), leaf, coerce(leaf, value, _key_type(section, leaf)))
    return config


def flatten_yaml(document: Any, source: str) -> dict[str, Any]:
    """Accept a YAML mapping that is nested by section, flat, or a mix of both."""
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ZoftError(f"{source}: expected a mapping of config keys, got {type(document).__name__}")
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if key in SECTIONS and not (key in config_keys() and not isinstance(value, dict)):
            # 'model' and 'method' are both a section and a key: a mapping is the section, a value the key
            if not isinstance(value, dict):
                raise ZoftError(f"{source}: section '{key}' must be a mapping")
            flat.update({f"{key}.{leaf}": v for leaf, v in value.items()})
        else:
            flat[str(key)] = value
    return flat


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ZoftError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ZoftError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        document = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as error:  # ValueError: a date like 2001-13-45, an int of 5000 digits
        raise ZoftError(f"{path}: not valid YAML ({first_line(error)})") from None
    except RecursionError:
        raise ZoftError(f"{path}: not valid YAML (nested too deeply)") from None
    return flatten_yaml(document, str(path))


def build_config(config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the YAML file, then the overrides; resolved and validated."""
    config = RunConfig()
    if config_file is not None:
        config = apply_overrides(config, load_yaml(config_file))
    return resolve(apply_overrides(config, overrides or {}))


# Defaults per method, chosen on the MRPC validation split with MiniLM (docs/results.md says how).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"lr": 5e-4, "schedule": "linear", "warmup_ratio": 0.06, "weight_decay": 0.01, "steps": 1000},
    "full": {"lr": 5e-5, "schedule": "linear", "warmup_ratio": 0.06, "weight_decay": 0.01, "steps": 800},
    "mezo": {"lr": 1e-4, "schedule": "constant", "warmup_ratio": 0.0, "weight_decay": 0.0, "steps": 3000},
}
MEZO_ALL_LR = 1e-6


def resolve(config: RunConfig) -> RunConfig:
    """Fill the defaults that depend on the method, the task and the model, and check values that types
    alone cannot. Resolving a resolved config changes nothing."""
    method, train, data = config.method, config.train, config.data
    defaults = METHOD_DEFAULTS[method.method]
    if method.method == "mezo" and method.params is None:
        method.params = "lora"
    if method.method != "mezo" and method.params is not None:
        raise ZoftError(f"config key 'params' applies to method mezo only, not to '{method.method}'")
    if method.lr is None:
        method.lr = MEZO_ALL_LR if method.method == "mezo" and method.params == "all" else defaults["lr"]
    for key in ("schedule", "warmup_ratio", "weight_decay"):
        if getattr(method, key) is None:
            setattr(method, key, defaults[key])
    if train.steps is None and train.epochs is None:
        train.steps = defaults["steps"]
    if data.data_dir is None and os.environ.get("GLUE_DIR") and data.task != "custom":
        data.data_dir = os.environ["GLUE_DIR"]
    task = None if data.task.strip().lower() == "custom" else get_task(data.task)
    if data.max_length is None:
        data.max_length = task.max_length if task else MAX_LENGTH
    if train.group_by_length is None:
        train.group_by_length = data.k_shot is None
    if train.select_metric == LM_BFF:
        if task is None:
            raise ZoftError(f"config key 'select_metric': {LM_BFF} needs a GLUE task; name the metric for task custom "
                            "(accuracy or f1)")
        train.select_metric = task.lm_bff_metric
    if train.select_metric is None:
        train.select_metric = task.main_metric if task else "accuracy"
    if task is not None and train.select_metric not in task.metrics:
        raise ZoftError(f"config key 'select_metric': task {task.name} reports {', '.join(task.metrics)}, not "
                        f"{train.select_metric}")
    _resolve_head(config.model, method, task)
    config.check()
    return config


def _resolve_head(model: ModelConfig, method: MethodConfig, task: TaskSpec | None) -> None:
    """head=auto becomes prompt or classifier; a prompt head gets the task's template and label words
    where the user gave none, so that config.yaml records the prompt a run used."""
    if model.head == "auto":
        has_lm_head = has_masked_lm_head(model.model) or is_causal_lm(model.model)
        model.head = "prompt" if _prompt_fits(model, method, task) and has_lm_head else "classifier"
    if model.head == "prompt" and task is not None:
        template = task_template(task, model.template, model.label_words, causal=_reads_as_causal_lm(model.model))
        model.template, model.label_words = template.text, list(template.label_words)


def _reads_as_causal_lm(name: str) -> bool:
    """Whether the prompt is a decoder-only model's. A config that cannot be read here (a hub id, offline and
    not cached) counts as a masked LM's: a plan still shows the masked-LM prompt the paper's presets run, and
    loading that model fails with the reason anyway."""
    try:
        return is_causal_lm(name)
    except ZoftError:
        return False


def _prompt_fits(model: ModelConfig, method: MethodConfig, task: TaskSpec | None) -> bool:
    """The task has classes and a prompt (its own, or the user's), and no key asks for a classifier."""
    asks_for_classifier = (model.pooling != "model" or model.head_init != "random" or model.pair_encoding != "joint"
                           or method.head_grad == "exact")
    if task is None:
        return not asks_for_classifier and model.template is not None and model.label_words is not None
    return not asks_for_classifier and not task.is_regression and task.template is not None


def _trains_lora(method: MethodConfig) -> bool:
    return method.method == "lora" or (method.method == "mezo" and method.params == "lora")


def from_dict(document: dict[str, Any]) -> RunConfig:
    """Rebuild a config from ``config.yaml`` of a run folder."""
    return apply_overrides(RunConfig(), flatten_yaml(document, "config.yaml"))


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)

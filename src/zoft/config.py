"""The one schema for YAML files and command-line overrides.

A run is described by a :class:`RunConfig` made of four sections. Every leaf key is unique across
sections, so a user may write ``lr=1e-4``, ``--lr 1e-4`` or ``method.lr=1e-4`` alike; YAML files may be
nested by section or flat. Defaults that depend on the method (learning rate, schedule, ...) are left as
``None`` here and filled in by :func:`resolve`, so that ``config.yaml`` in a run folder records the value
actually used.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from zoft.data.tasks import MAX_LENGTH, TaskSpec, get_task
from zoft.data.templates import task_template
from zoft.errors import ZoftError
from zoft.method_names import config_aliases
from zoft.pretrained import has_masked_lm_head

Method = Literal["lora", "full", "mezo"]
LM_BFF = "lm-bff"  # select_metric: what LM-BFF's and MeZO's code select on (TaskSpec.lm_bff_metric)
Schedule = Literal["linear", "cosine", "constant", "constant_with_warmup"]


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class DataConfig:
    task: str = _help("GLUE task (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli) or 'custom'", default="mrpc")
    data_dir: str | None = _help(
        "folder in the GLUE distribution layout; default $GLUE_DIR, else the Hugging Face hub", default=None
    )
    train_file: str | None = _help("task=custom: CSV or JSONL file with the training examples", default=None)
    test_file: str | None = _help("task=custom: CSV or JSONL file scored as the test split", default=None)
    text_columns: list[str] | None = _help("task=custom: one or two text columns, comma-separated", default=None)
    label_column: str = _help("task=custom: the label column", default="label")
    validation_fraction: float = _help(
        "share of train held out (stratified) as the validation split (k_shot draws its own instead)", default=0.1)
    train_limit: int | None = _help("keep at most this many training examples (after the hold-out)", default=None)
    k_shot: int | None = _help(
        "K training and K validation examples per class, drawn from the training file as the MeZO paper's data "
        "script draws them (the same seed gives the same examples; the paper's seeds: 13, 21, 42, 87, 100)",
        default=None,
    )
    test_limit: int | None = _help(
        "score at most this many test examples, drawn as the MeZO paper's data script draws them (it keeps 1000)",
        default=None,
    )
    max_length: int | None = _help(
        f"truncate inputs to this many tokens (default: the task's, {MAX_LENGTH}; 256 for RTE and MNLI, as the "
        "MeZO paper's code runs them)",
        default=None,
    )


@dataclass
class ModelConfig:
    model: str = _help(
        "Hugging Face model name, local folder, or an offline alias: minilm (the default; no masked-LM head), "
        "bert-tiny-mlm (a small real masked LM, for prompt-based runs offline)",
        default="minilm",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = _help("parameter dtype", default="float32")
    lora_r: int = _help("LoRA rank", default=8)
    lora_alpha: float = _help("LoRA alpha (scale = alpha / r)", default=16.0)
    lora_dropout: float = _help("LoRA dropout", default=0.1)
    target_modules: list[str] | None = _help(
        "modules that get LoRA adapters, comma-separated; default: PEFT's choice for the model family",
        default=None,
    )
    head: Literal["auto", "classifier", "prompt"] = _help(
        "prompt: label words scored by the masked-LM head at a mask token of a template (MeZO / LM-BFF "
        "prompt-based fine-tuning; needs a model with an MLM head); classifier: a classification head; auto: "
        "prompt for a masked LM on a classification task (MeZO without a prompt stays near chance: the MeZO "
        "paper's Table 5), unless pooling, pair_encoding, head_init or head_grad ask for a classifier; else "
        "classifier",
        default="auto",
    )
    template: str | None = _help(
        "head=prompt: the template, with {s1}, {s2} and {mask}; {s1-} drops a sentence's last character, {s2l} "
        "lower-cases its first letter (default: the task's, LM-BFF's, e.g. RTE '{s1-}? {mask}, {s2l}')",
        default=None,
    )
    label_words: list[str] | None = _help("head=prompt: one word per label, comma-separated (default: the task's)",
                                          default=None)
    pooling: Literal["model", "cls", "mean"] = _help(
        "model: the model's own classification head; cls / mean: a linear head on the first token's or the "
        "mean of the tokens' last hidden states",
        default="model",
    )
    pair_encoding: Literal["joint", "separate"] = _help(
        "pair tasks: joint (one input, the sentences side by side) or separate (each sentence encoded "
        "alone, the head sees u, v, |u-v|, u*v; needs pooling cls or mean)",
        default="joint",
    )
    head_init: Literal["random", "linear-probe"] = _help(
        "linear-probe: fit the head by logistic regression on the frozen features of the training split "
        "before training starts",
        default="random",
    )
    train_lm_head: bool = _help(
        "head=prompt with LoRA (lora, mezo with params lora): train the masked-LM head's transform (dense, layer "
        "norm) and output bias beside the adapters, as the MeZO paper's code does; its decoder, tied to the input "
        "embeddings, stays frozen",
        default=False,
    )


@dataclass
class MethodConfig:
    method: Method = _help(
        "lora / full: backprop with AdamW; mezo: zeroth-order SGD (mezo-lora, mezo-full: mezo with those params)",
        default="lora",
    )
    params: str | None = _help("mezo: what it trains: 'lora', 'all' or a regex over parameter names",
                               default=None)
    lr: float | None = _help("peak learning rate (default depends on the method)", default=None)
    weight_decay: float | None = _help("decoupled weight decay, not applied to biases and LayerNorm", default=None)
    schedule: Schedule | None = _help("learning-rate schedule (default: linear for backprop, constant for mezo)",
                                      default=None)
    warmup_ratio: float | None = _help("share of the steps spent warming up the learning rate", default=None)
    max_grad_norm: float | None = _help("backprop: clip the gradient norm (0: off)", default=1.0)
    eps: float = _help("mezo: perturbation size epsilon", default=1e-3)
    n_perturbations: int = _help("mezo: random directions per step (n-SPSA)", default=1)
    n_perturbations_final: int | None = _help(
        "mezo: grow the directions per step linearly from n_perturbations at the first step to this at the last",
        default=None,
    )
    momentum: float = _help("mezo: momentum of the projected-gradient update (ZO-SGD-MMT)", default=0.0)
    zo_estimator: Literal["spsa", "svrg"] = _help(
        "mezo: spsa, MeZO's two-point estimate (2 forwards a step); svrg, MeZO-SVRG (Gautam et al. 2024): the "
        "estimate at the parameters minus the same at a snapshot plus the snapshot's large-batch estimate "
        "(4 forwards a step, plus 2 per micro-batch of the large batch every svrg_every steps; keeps 2 copies "
        "of the trained parameters)",
        default="spsa",
    )
    svrg_every: int = _help("zo_estimator=svrg: take a snapshot every this many steps (q)", default=50)
    svrg_batches: int = _help(
        "zo_estimator=svrg: micro-batches in a snapshot's large batch, the step's own and more drawn from the "
        "training stream; 0: the whole training split in order (MRPC at batch 16: 207 micro-batches, 414 forwards "
        "a snapshot)",
        default=16,
    )
    svrg_lr_full: float | None = _help(
        "zo_estimator=svrg: learning rate of the snapshot steps (eta1; the paper takes it larger than lr); "
        "default: lr, following its schedule",
        default=None,
    )
    grad_accumulation: int = _help("micro-batches per optimiser step", default=1)
    head_grad: Literal["zo", "exact"] = _help(
        "mezo: zo trains the head with the zeroth-order estimate like the rest; exact trains it by an ordinary "
        "gradient on the detached features (no backward through the encoder)",
        default="zo",
    )
    head_lr: float = _help("mezo with head_grad=exact: the head's AdamW learning rate", default=1e-3)
    cache_z: bool = _help(
        "mezo: keep each step's random direction z in memory for the step's later passes instead of drawing it "
        "again from its seed (the same numbers bit for bit, faster where drawing z is a large part of a step, as "
        "for all the weights of a small model; costs n_perturbations times the trained parameters in memory)",
        default=False,
    )
    mezo_half_precision: bool = _help(
        "mezo: accept dtype float16 or bfloat16 (refused otherwise: the rounding of every perturb-and-restore "
        "adds up over a run's steps and drifts the weights)",
        default=False,
    )


@dataclass
class TrainConfig:
    steps: int | None = _help("optimiser steps (default: from epochs, else the method's default)", default=None)
    epochs: float | None = _help("passes over the training split, if steps is not given", default=None)
    max_forward_passes: int | None = _help(
        "stop once training has made this many forward passes; the schedule still spans steps", default=None
    )
    max_minutes: float | None = _help(
        "stop once training (not evaluation) has taken this many minutes; the schedule still spans steps",
        default=None,
    )
    batch_size: int = _help("examples per micro-batch", default=16)
    group_by_length: bool | None = _help(
        "batch training examples of similar length (less padding, faster); default: true, but false with k_shot "
        "(a K-shot set is a few batches: grouped by length they would be the same batches every epoch)",
        default=None,
    )
    eval_batch_size: int = _help("examples per evaluation batch", default=64)
    eval_every: int = _help("evaluate validation and test every this many steps (and at the end)", default=100)
    log_every: int = _help("write a metrics line every this many steps", default=10)
    checkpoint_every: int = _help("save a resumable checkpoint every this many steps (0: only at the end)",
                                  default=500)
    seed: int = _help("seed of the run: hold-out, data order, initialisation, dropout, perturbations",
                      default=42)
    device: str = _help("auto, cpu, cuda, cuda:N, mps", default="auto")
    divergence_factor: float = _help(
        "stop as diverged when the mean loss of the last 10 steps exceeds this multiple of the first 10 (0: only a "
        "non-finite loss stops a run)",
        default=5.0,
    )
    select_metric: str | None = _help(
        f"validation metric that chooses the best checkpoint (default: the task's); {LM_BFF}: the one LM-BFF's and "
        "the MeZO paper's code choose by (F1 for MRPC and QQP, else the task's)",
        default=None,
    )
    select_step_zero: bool = _help(
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
        if overrides.get(key) in METHOD_ALIASES:
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
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ZoftError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
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
    m, t, d = config.method, config.train, config.data
    defaults = METHOD_DEFAULTS[m.method]
    if m.method == "mezo" and m.params is None:
        m.params = "lora"
    if m.method != "mezo" and m.params is not None:
        raise ZoftError(f"config key 'params' applies to method mezo only, not to '{m.method}'")
    if m.lr is None:
        m.lr = MEZO_ALL_LR if m.method == "mezo" and m.params == "all" else defaults["lr"]
    for key in ("schedule", "warmup_ratio", "weight_decay"):
        if getattr(m, key) is None:
            setattr(m, key, defaults[key])
    if t.steps is None and t.epochs is None:
        t.steps = defaults["steps"]
    if d.data_dir is None and os.environ.get("GLUE_DIR") and d.task != "custom":
        d.data_dir = os.environ["GLUE_DIR"]
    task = None if d.task.strip().lower() == "custom" else get_task(d.task)
    if d.max_length is None:
        d.max_length = task.max_length if task else MAX_LENGTH
    if t.group_by_length is None:
        t.group_by_length = d.k_shot is None
    if t.select_metric == LM_BFF:
        if task is None:
            raise ZoftError(f"config key 'select_metric': {LM_BFF} needs a GLUE task; name the metric for task custom "
                            "(accuracy or f1)")
        t.select_metric = task.lm_bff_metric
    if t.select_metric is None:
        t.select_metric = task.main_metric if task else "accuracy"
    if task is not None and t.select_metric not in task.metrics:
        raise ZoftError(f"config key 'select_metric': task {task.name} reports {', '.join(task.metrics)}, not "
                        f"{t.select_metric}")
    _resolve_head(config.model, m, task)
    _check_values(config)
    return config


def _resolve_head(mo: ModelConfig, m: MethodConfig, task: TaskSpec | None) -> None:
    """head=auto becomes prompt or classifier; a prompt head gets the task's template and label words
    where the user gave none, so that config.yaml records the prompt a run used."""
    if mo.head == "auto":
        mo.head = "prompt" if _prompt_fits(mo, m, task) and has_masked_lm_head(mo.model) else "classifier"
    if mo.head == "prompt" and task is not None:
        template = task_template(task, mo.template, mo.label_words)
        mo.template, mo.label_words = template.text, list(template.label_words)


def _prompt_fits(mo: ModelConfig, m: MethodConfig, task: TaskSpec | None) -> bool:
    """The task has classes and a prompt (its own, or the user's), and no key asks for a classifier."""
    asks_for_classifier = (mo.pooling != "model" or mo.head_init != "random" or mo.pair_encoding != "joint"
                           or m.head_grad == "exact")
    if task is None:
        return not asks_for_classifier and mo.template is not None and mo.label_words is not None
    return not asks_for_classifier and not task.is_regression and task.template is not None


def _check_values(config: RunConfig) -> None:
    m, t, d, mo = config.method, config.train, config.data, config.model
    positive = {
        "lr": m.lr, "eps": m.eps, "n_perturbations": m.n_perturbations, "grad_accumulation": m.grad_accumulation,
        "batch_size": t.batch_size, "eval_batch_size": t.eval_batch_size, "eval_every": t.eval_every,
        "log_every": t.log_every, "max_length": d.max_length,
        "lora_r": mo.lora_r, "lora_alpha": mo.lora_alpha, "svrg_every": m.svrg_every,
    }
    for key, value in positive.items():
        if value is None or value <= 0:
            raise ZoftError(f"config key '{key}': must be > 0, got {value}")
    optional_positive = {"steps": t.steps, "epochs": t.epochs, "train_limit": d.train_limit, "k_shot": d.k_shot,
                         "test_limit": d.test_limit,
                         "max_minutes": t.max_minutes, "max_forward_passes": t.max_forward_passes,
                         "n_perturbations_final": m.n_perturbations_final}
    for key, value in optional_positive.items():
        if value is not None and value <= 0:
            raise ZoftError(f"config key '{key}': must be > 0, got {value}")
    non_negative = {"weight_decay": m.weight_decay, "momentum": m.momentum, "lora_dropout": mo.lora_dropout,
                    "divergence_factor": t.divergence_factor,
                    "checkpoint_every": t.checkpoint_every, "max_grad_norm": m.max_grad_norm or 0.0,
                    "svrg_batches": m.svrg_batches, "svrg_lr_full": m.svrg_lr_full or 0.0}
    for key, value in non_negative.items():
        if value < 0:
            raise ZoftError(f"config key '{key}': must be >= 0, got {value}")
    if not 0 < d.validation_fraction < 1:
        raise ZoftError(f"config key 'validation_fraction': must be between 0 and 1, got {d.validation_fraction}")
    if not 0 <= m.warmup_ratio < 1:
        raise ZoftError(f"config key 'warmup_ratio': must be in [0, 1), got {m.warmup_ratio}")
    if not 0 <= m.momentum < 1:
        raise ZoftError(f"config key 'momentum': must be in [0, 1), got {m.momentum}")
    if m.params not in (None, "lora", "all"):
        try:
            re.compile(m.params)
        except re.error as error:
            raise ZoftError(f"config key 'params': '{m.params}' is not a valid regular expression ({error})") from None
    _check_combinations(m, mo)
    if d.text_columns is not None and not 1 <= len(d.text_columns) <= 2:
        raise ZoftError(f"config key 'text_columns': expected one or two columns, got {d.text_columns}")


def from_dict(document: dict[str, Any]) -> RunConfig:
    """Rebuild a config from ``config.yaml`` of a run folder."""
    return apply_overrides(RunConfig(), flatten_yaml(document, "config.yaml"))


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


def _check_combinations(m: MethodConfig, mo: ModelConfig) -> None:
    if mo.pair_encoding == "separate" and mo.pooling == "model":
        raise ZoftError("config key 'pair_encoding': separate needs pooling cls or mean (the model's own head "
                        "reads one joint input)")
    if mo.head == "prompt" and (mo.pooling != "model" or mo.head_init != "random"):
        raise ZoftError("config key 'head': prompt scores label words with the pretrained masked-LM head; "
                        "it takes no pooling and no head_init")
    if (mo.template is not None or mo.label_words is not None) and mo.head != "prompt":
        raise ZoftError("config keys 'template' and 'label_words' apply to head=prompt only")
    if mo.train_lm_head and (mo.head != "prompt" or not _trains_lora(m)):
        raise ZoftError("config key 'train_lm_head' applies to head=prompt with LoRA (method lora, or mezo with "
                        "params lora); other methods choose their parameters with params")
    if m.method == "mezo" and mo.dtype != "float32" and not m.mezo_half_precision:
        raise ZoftError(f"config key 'dtype': MeZO in {mo.dtype} drifts the weights (each perturb-and-restore "
                        "rounds them, step after step); keep float32, or set mezo_half_precision=true to accept it")
    if m.head_grad == "exact" and (m.method != "mezo" or mo.head == "prompt"):
        raise ZoftError("config key 'head_grad': exact applies to method mezo with a classification head")
    _check_svrg(m)


def _trains_lora(m: MethodConfig) -> bool:
    return m.method == "lora" or (m.method == "mezo" and m.params == "lora")


def _check_svrg(m: MethodConfig) -> None:
    if m.zo_estimator != "svrg":
        return
    if m.method != "mezo":
        raise ZoftError(f"config key 'zo_estimator': svrg applies to method mezo only, not to '{m.method}'")
    if m.momentum > 0 or m.head_grad == "exact":
        raise ZoftError("config key 'zo_estimator': svrg takes no momentum and no head_grad=exact (its steps "
                        "evaluate the loss at a snapshot too, which neither accounts for)")
    if 0 < m.svrg_batches < m.grad_accumulation:
        raise ZoftError(f"config key 'svrg_batches': the large batch ({m.svrg_batches} micro-batches) must hold at "
                        f"least a step's grad_accumulation ({m.grad_accumulation}), or be 0 (the whole split)")

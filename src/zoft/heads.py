"""zoft's own classification head: a linear layer on pooled features of an encoder.

A sentence-embedding model such as all-MiniLM-L6-v2 was trained to make the mean of its token states a
good sentence vector, and to compare two sentences encoded separately; its BERT pooler (the CLS token
through a dense layer) was not trained at all. `pooling=mean` reads the features the model was made for,
and `pair_encoding=separate` gives pair tasks the sentence-transformers features (u, v, |u-v|, u*v).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel
from transformers.modeling_outputs import SequenceClassifierOutput

from zoft.config import ModelConfig
from zoft.data.batches import SECOND
from zoft.data.tasks import TaskSpec
from zoft.pretrained import load_pretrained

HEAD_FILE = "zoft_head.json"


class PooledClassifier(nn.Module):
    """An encoder (attribute `backbone`, where LoRA goes) and a linear `head` on its pooled features."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str, separate_pairs: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.separate_pairs = separate_pairs
        self.num_labels = num_labels
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden * (4 if separate_pairs else 1), num_labels, dtype=backbone.dtype)

    @property
    def config(self) -> Any:
        return self.backbone.config

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        if self.pooling == "cls":
            return states[:, 0]
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1)

    def features(self, **batch: torch.Tensor) -> torch.Tensor:
        first = {key: value for key, value in batch.items() if not key.endswith(SECOND)}
        u = self.pool(**first)
        if not self.separate_pairs:
            return u
        v = self.pool(**{key[: -len(SECOND)]: value for key, value in batch.items() if key.endswith(SECOND)})
        return torch.cat([u, v, (u - v).abs(), u * v], dim=-1)

    def forward(self, labels: torch.Tensor | None = None, **batch: torch.Tensor) -> SequenceClassifierOutput:
        logits = self.head(self.features(**batch))
        loss = None if labels is None else classification_loss(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def save_pretrained(self, folder: str | Path) -> None:
        """The backbone as its own save_pretrained writes it (a PEFT adapter or a full model), and the head."""
        folder = Path(folder)
        self.backbone.save_pretrained(folder / "backbone")
        save_file({name: t.detach().contiguous() for name, t in self.head.state_dict().items()},
                  folder / "head.safetensors")
        description = {"pooling": self.pooling, "separate_pairs": self.separate_pairs, "num_labels": self.num_labels}
        (folder / HEAD_FILE).write_text(json.dumps(description, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path, base_model: str | Path) -> PooledClassifier:
        """Reload a saved classifier; `base_model` is the encoder a saved LoRA adapter was trained on."""
        folder = Path(folder)
        description = json.loads((folder / HEAD_FILE).read_text())
        if (folder / "backbone" / "adapter_config.json").is_file():
            backbone = PeftModel.from_pretrained(AutoModel.from_pretrained(base_model), folder / "backbone")
        else:
            backbone = AutoModel.from_pretrained(folder / "backbone")
        model = cls(backbone, description["num_labels"], description["pooling"], description["separate_pairs"])
        model.head.load_state_dict(load_file(folder / "head.safetensors"))
        return model


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classes; mean squared error for a regression head (one output)."""
    if logits.shape[-1] == 1:
        return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
    return nn.functional.cross_entropy(logits.float(), labels)


def load_pooled_model(cfg: ModelConfig, task: TaskSpec) -> tuple[PooledClassifier, Any]:
    backbone, tokenizer = load_pretrained(AutoModel, cfg.model, cfg.dtype)
    separate = cfg.pair_encoding == "separate" and task.is_pair
    return PooledClassifier(backbone, task.num_labels, cfg.pooling, separate), tokenizer

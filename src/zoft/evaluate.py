"""Score a model on evaluation splits: predictions, the task's metrics, and whether it collapsed."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zoft.data.batches import Batch, EncodedSplit, to_device
from zoft.data.tasks import TaskSpec
from zoft.metrics import compute_metrics


@dataclass
class SplitResult:
    metrics: dict[str, float]
    logits: torch.Tensor
    labels: torch.Tensor

    @property
    def predictions(self) -> torch.Tensor:
        return self.logits.squeeze(-1) if self.logits.shape[-1] == 1 else self.logits.argmax(-1)

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-ready row per example, in the split's order."""
        return [
            {"index": i, "label": label, "prediction": prediction, "logits": logits}
            for i, (label, prediction, logits) in enumerate(
                zip(self.labels.tolist(), self.predictions.tolist(), self.logits.tolist(), strict=True)
            )
        ]


@torch.inference_mode()
def predict_logits(model: nn.Module, batches: Iterable[Batch], device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of `batches`, which are left as they are (a split's batches are kept between
    evaluations); the labels stay out of the forward, so that no loss is computed."""
    model.eval()
    logits, labels = [], []
    for batch in batches:
        labels.append(batch["labels"])
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        logits.append(model(**to_device(inputs, device)).logits.float().cpu())
    return torch.cat(logits), torch.cat(labels)


def majority_share(predictions: torch.Tensor) -> float:
    """Share of the most frequent predicted class: 1.0 means the model predicts one class for everything."""
    return float(torch.bincount(predictions).max()) / len(predictions)


def evaluate_split(model: nn.Module, encoded: EncodedSplit, tokenizer: Any, task: TaskSpec, batch_size: int,
                   device: torch.device) -> SplitResult:
    # Batches of similar length waste little on padding; the results are put back in the split's order.
    by_length = encoded.length_sorted(tokenizer, batch_size)
    logits, labels = predict_logits(model, by_length.batches, device)
    logits, labels = logits[by_length.restore], labels[by_length.restore]
    result = SplitResult(metrics={}, logits=logits, labels=labels)
    result.metrics = compute_metrics(task, result.predictions.tolist(), labels.tolist())
    if not task.is_regression:
        result.metrics["majority_share"] = majority_share(result.predictions)
    return result

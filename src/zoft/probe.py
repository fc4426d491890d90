"""A head that starts right: fit the classification head on frozen features before fine-tuning.

Zeroth-order methods get almost no signal through a randomly initialised head; a logistic regression on
the features the head reads (its inputs, from the unchanged pretrained model) takes seconds and gives
every method the same well-started head. The L2 strength is chosen on the validation split.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoft.data.batches import EncodedSplit, eval_batches, to_device
from zoft.models import head_linear

L2_GRID = (1e-2, 1e-1, 0.3, 1.0, 3.0, 10.0)


@torch.no_grad()  # not inference_mode: the features go on into the autograd of the fit
def head_inputs(model: nn.Module, encoded: EncodedSplit, tokenizer: Any, batch_size: int,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The features the head reads for every example of a split, and the labels."""
    captured: list[torch.Tensor] = []
    handle = head_linear(model).register_forward_pre_hook(lambda module, args: captured.append(args[0].float().cpu()))
    model.eval()
    labels = []
    try:
        for batch in eval_batches(encoded, tokenizer, batch_size):
            labels.append(batch.pop("labels"))
            model(**to_device(batch, device))
    finally:
        handle.remove()
    return torch.cat(captured), torch.cat(labels)


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float,
                 max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by L-BFGS on standardised features; returns (weight, bias) that act
    on the raw features."""
    mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
    x = (features - mean) / std
    weight = torch.zeros(num_classes, x.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(x @ weight.T + bias, labels) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    raw_weight = weight.detach() / std
    return raw_weight, bias.detach() - raw_weight @ mean


def fit_ridge(features: torch.Tensor, targets: torch.Tensor, l2: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares with an L2 penalty, for a regression head (one output)."""
    mean, target_mean = features.mean(0), targets.float().mean()
    x = (features - mean).double()
    gram = x.T @ x + l2 * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    weight = torch.linalg.solve(gram, x.T @ (targets.double() - target_mean)).float().unsqueeze(0)
    return weight, (target_mean - weight @ mean).reshape(1)


def score(weight: torch.Tensor, bias: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Validation score of a fitted head: accuracy for classes, minus the mean squared error for regression."""
    outputs = features @ weight.T + bias
    if weight.shape[0] == 1:
        return -float((outputs.squeeze(-1) - labels.float()).square().mean())
    return float((outputs.argmax(-1) == labels).float().mean())


def init_head_by_probe(model: nn.Module, train: EncodedSplit, validation: EncodedSplit, tokenizer: Any,
                       batch_size: int, device: torch.device) -> dict[str, float]:
    """Fit the head on the training split's frozen features, the L2 strength chosen on validation."""
    head = head_linear(model)
    x_train, y_train = head_inputs(model, train, tokenizer, batch_size, device)
    x_val, y_val = head_inputs(model, validation, tokenizer, batch_size, device)
    fits = {}
    for l2 in L2_GRID:
        fit = fit_ridge(x_train, y_train, l2) if head.out_features == 1 else fit_logistic(
            x_train, y_train, head.out_features, l2)
        fits[l2] = (score(*fit, x_val, y_val), fit)
    best_l2 = max(fits, key=lambda l2: fits[l2][0])
    weight, bias = fits[best_l2][1]
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return {"l2": best_l2, "validation_score": fits[best_l2][0], "train_score": score(weight, bias, x_train, y_train)}

"""Training methods: each turns a list of micro-batches into one optimiser step.

The training loop knows nothing else of a method: backprop and zeroth-order differ only here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from zoft.config import MethodConfig

# draw_batches(count): `count` more training micro-batches from the stream, or with None the whole training split.
DrawBatches = Callable[[int | None], list[dict[str, torch.Tensor]]]


class TrainingMethod(Protocol):
    optimizer: torch.optim.Optimizer

    def step(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One optimiser step; returns at least 'loss' and 'lr' (the rate this step used)."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class OptimizerState:
    """Checkpointing shared by the methods: the optimiser and its learning-rate schedule."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


def build_method(model: nn.Module, cfg: MethodConfig, total_steps: int, seed: int,
                 draw_batches: DrawBatches | None = None) -> TrainingMethod:
    """The method `cfg` names; `draw_batches` serves those that need a large batch now and then (MeZO-SVRG)."""
    if cfg.method == "mezo":
        from zoft.methods.zeroth_order import ZerothOrder

        return ZerothOrder(model, cfg, total_steps, seed, draw_batches)
    from zoft.methods.backprop import Backprop

    return Backprop(model, cfg, total_steps)


def batch_weights(micro_batches: list[dict[str, torch.Tensor]]) -> list[float]:
    """Each micro-batch's share of the examples, so that accumulated losses average over examples."""
    sizes = [len(batch["labels"]) for batch in micro_batches]
    return [size / sum(sizes) for size in sizes]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: MethodConfig, total_steps: int):
    from transformers import get_scheduler

    return get_scheduler(
        cfg.schedule, optimizer, num_warmup_steps=round(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def trainable_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]

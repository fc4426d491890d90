"""What the training methods share: the protocol the loop steps them through, their checkpointing, and the
helpers both backprop and zeroth-order use (micro-batch weights, schedule, trainable parameters)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn
from transformers import get_scheduler

from zoft.config import MethodConfig

Batch = dict[str, torch.Tensor]
# draw_batches(count): `count` more training micro-batches from the stream, or with None the whole training
# split (MeZO-SVRG's exact snapshots, svrg_batches=0). The training loop implements it.
DrawBatches = Callable[[int | None], list[Batch]]


class TrainingMethod(Protocol):
    optimizer: torch.optim.Optimizer

    def step(self, micro_batches: list[Batch]) -> dict[str, float]:
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


def batch_weights(micro_batches: list[Batch]) -> list[float]:
    """Each micro-batch's share of the examples, so that accumulated losses average over examples."""
    sizes = [len(batch["labels"]) for batch in micro_batches]
    return [size / sum(sizes) for size in sizes]


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: MethodConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    return get_scheduler(
        cfg.schedule, optimizer, num_warmup_steps=round(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def trainable_named_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]

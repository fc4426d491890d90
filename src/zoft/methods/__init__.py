"""Training methods: each turns a list of micro-batches into one optimiser step.

The training loop knows nothing else of a method: backprop and zeroth-order differ only here. This module
is the registry (:func:`build_method`); what the methods share lives in :mod:`zoft.methods.common`.
"""

from __future__ import annotations

from torch import nn

from zoft.config import MethodConfig
from zoft.distributed import DataParallel
from zoft.methods.backprop import Backprop
from zoft.methods.common import DrawBatches, TrainingMethod
from zoft.methods.zeroth_order import UpdateLog, ZerothOrder, trajectory_refusal

__all__ = ["DrawBatches", "TrainingMethod", "UpdateLog", "build_method", "trajectory_refusal"]


def build_method(model: nn.Module, cfg: MethodConfig, total_steps: int, seed: int,
                 draw_batches: DrawBatches | None = None, log_update: UpdateLog | None = None,
                 parallel: DataParallel | None = None) -> TrainingMethod:
    """The method `cfg` names; `draw_batches` serves those that need a large batch now and then (MeZO-SVRG),
    `log_update` is told of each MeZO update (see zeroth_order.trajectory_refusal for the runs it suits), and
    `parallel`, on several processes, is the group the method exchanges through (zoft.distributed)."""
    if cfg.method == "mezo":
        return ZerothOrder(model, cfg, total_steps, seed, draw_batches, log_update, parallel)
    return Backprop(model, cfg, total_steps, parallel)

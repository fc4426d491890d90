"""The estimator behind method mezo: MeZO's two-point SPSA, or MeZO-SVRG with its large-batch snapshots.

Kept apart from the method itself (zeroth_order.py), which only asks :func:`build_zo_optimizer` for its
optimiser and steps through :func:`zo_step`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from zoft.config import MethodConfig
from zoft.methods import DrawBatches, batch_weights
from zoft.optim import LinearSchedule, SVRGStepStats, ZerothOrderSGD, ZerothOrderSVRG, ZOStepStats

Batch = dict[str, torch.Tensor]
Closure = Callable[[], torch.Tensor]


def build_zo_optimizer(groups: list[dict], cfg: MethodConfig, total_steps: int,
                       seed: int) -> ZerothOrderSGD | ZerothOrderSVRG:
    """The optimiser that `cfg` asks for, with n-SPSA growing linearly over the run when
    `n_perturbations_final` is set (the optimiser's state dict keeps the step count: resumable)."""
    n_perturbations = (
        cfg.n_perturbations if cfg.n_perturbations_final is None
        else LinearSchedule(cfg.n_perturbations, cfg.n_perturbations_final, total_steps)
    )
    if cfg.zo_estimator == "svrg":
        return ZerothOrderSVRG(groups, lr=cfg.lr, lr_full=cfg.svrg_lr_full, eps=cfg.eps, q=cfg.svrg_every,
                               n_perturbations=n_perturbations, seed=seed, cache_z=cfg.cache_z)
    return ZerothOrderSGD(groups, lr=cfg.lr, eps=cfg.eps, momentum=cfg.momentum, n_perturbations=n_perturbations,
                          seed=seed, cache_z=cfg.cache_z)


class SnapshotBatches:
    """The large batch of a MeZO-SVRG snapshot: with ``size`` > 0 the step's own micro-batches and enough
    more from the training stream to make ``size``; with 0 the whole training split (exact, and costly:
    2 forwards per perturbation for each of its batches)."""

    def __init__(self, size: int, draw: DrawBatches | None) -> None:
        self.size = size
        self.draw = draw

    def batches(self, micro_batches: list[Batch]) -> list[Batch]:
        if self.draw is None:
            raise ValueError("zo_estimator=svrg needs a way to draw training batches for its snapshots")
        if self.size == 0:
            return self.draw(None)
        return [*micro_batches, *self.draw(self.size - len(micro_batches))]

    def loss(self, model: nn.Module, micro_batches: list[Batch]) -> Closure:
        """The mean loss over a large batch drawn now, the same batch on every call."""
        batches = self.batches(micro_batches)
        weights = batch_weights(batches)
        return lambda: sum(model(**batch).loss * w for batch, w in zip(batches, weights, strict=True))


def zo_step(optimizer: ZerothOrderSGD | ZerothOrderSVRG, closure: Closure,
            snapshot_closure: Callable[[], Closure]) -> ZOStepStats:
    """One step of either estimator. ``snapshot_closure`` builds the large batch's loss; it is called only
    when MeZO-SVRG takes a snapshot, so the large batch is drawn only then."""
    if isinstance(optimizer, ZerothOrderSVRG) and optimizer.snapshot_due:
        return optimizer.step(full_closure=snapshot_closure())
    return optimizer.step(closure)


def estimator_record(stats: ZOStepStats) -> dict[str, float]:
    """What MeZO-SVRG logs beyond MeZO: whether the step was a snapshot (its losses are then the large
    batch's), else the projected gradient of the same minibatch and z at the snapshot."""
    if not isinstance(stats, SVRGStepStats):
        return {}
    if stats.full_batch:
        return {"snapshot": 1.0}
    mean = sum(stats.snapshot_projected_grads) / len(stats.snapshot_projected_grads)
    return {"snapshot": 0.0, "projected_grad_at_snapshot": mean}

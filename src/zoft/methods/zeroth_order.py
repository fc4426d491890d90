"""MeZO: zeroth-order SGD on the trainable parameters, two forward passes per step, no backward."""

from __future__ import annotations

import math

import torch
from torch import nn

from zoft.config import MethodConfig
from zoft.methods import OptimizerState, batch_weights, build_scheduler, current_lr, trainable_named_parameters
from zoft.optim import NonFiniteLossError, ZerothOrderSGD, decay_param_groups


class ZerothOrder(OptimizerState):
    def __init__(self, model: nn.Module, cfg: MethodConfig, total_steps: int, seed: int) -> None:
        self.model = model
        groups = decay_param_groups(trainable_named_parameters(model), cfg.weight_decay)
        self.optimizer = ZerothOrderSGD(
            groups, lr=cfg.lr, eps=cfg.eps, momentum=cfg.momentum, n_perturbations=cfg.n_perturbations, seed=seed
        )
        self.scheduler = build_scheduler(self.optimizer, cfg, total_steps)

    def step(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        # Dropout off: both perturbed forwards must see the same network, or the difference is noise.
        self.model.eval()
        weights = batch_weights(micro_batches)

        def loss() -> torch.Tensor:
            return sum(self.model(**batch).loss * w for batch, w in zip(micro_batches, weights, strict=True))

        lr = current_lr(self.optimizer)
        try:
            stats = self.optimizer.step(loss)
        except NonFiniteLossError as error:
            # The optimiser restored the parameters; the loop sees the non-finite loss and stops the run.
            return {"loss": math.nan, "loss_plus": error.loss_plus, "loss_minus": error.loss_minus, "lr": lr,
                    "backward_passes": 0}
        self.scheduler.step()
        return {
            "loss": (stats.loss_plus + stats.loss_minus) / 2, "loss_plus": stats.loss_plus,
            "loss_minus": stats.loss_minus, "projected_grad": stats.projected_grad, "lr": lr,
            "backward_passes": 0,
        }

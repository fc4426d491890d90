"""Backprop fine-tuning (LoRA or full) with AdamW, warm-up and decay, gradient clipping."""

from __future__ import annotations

import math

import torch
from torch import nn

from zoft.config import MethodConfig
from zoft.methods.common import OptimizerState, batch_weights, build_scheduler, current_lr, trainable_named_parameters
from zoft.optim import decay_param_groups


class Backprop(OptimizerState):
    def __init__(self, model: nn.Module, cfg: MethodConfig, total_steps: int) -> None:
        self.model = model
        self.max_grad_norm = cfg.max_grad_norm or math.inf
        named = trainable_named_parameters(model)
        self.parameters = [p for _, p in named]
        self.optimizer = torch.optim.AdamW(decay_param_groups(named, cfg.weight_decay), lr=cfg.lr)
        self.scheduler = build_scheduler(self.optimizer, cfg, total_steps)

    def step(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        self.model.train()
        loss = 0.0
        for batch, weight in zip(micro_batches, batch_weights(micro_batches), strict=True):
            micro_loss = self.model(**batch).loss * weight
            micro_loss.backward()
            loss += micro_loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        lr = current_lr(self.optimizer)
        if math.isfinite(loss):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return {"loss": loss, "grad_norm": float(grad_norm), "lr": lr, "backward_passes": len(micro_batches)}

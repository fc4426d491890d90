"""Backprop fine-tuning (LoRA or full) with AdamW, warm-up and decay, gradient clipping; on several processes
through DistributedDataParallel, each rank on its rows of every micro-batch (zoft.distributed)."""

from __future__ import annotations

import math

import torch
from torch import nn

from zoft.config import MethodConfig
from zoft.distributed import DataParallel
from zoft.methods.common import OptimizerState, batch_weights, build_scheduler, current_lr, trainable_named_parameters
from zoft.optim import decay_param_groups


class Backprop(OptimizerState):
    def __init__(self, model: nn.Module, cfg: MethodConfig, total_steps: int,
                 parallel: DataParallel | None = None) -> None:
        self.model = model
        self.parallel = parallel
        # The forwards go through DDP, whose backward all-reduces the gradients; evaluation and saving use `model`.
        self.forward = parallel.wrap(model) if parallel else model
        self.max_grad_norm = cfg.max_grad_norm or math.inf
        named = trainable_named_parameters(model)
        self.parameters = [p for _, p in named]
        self.optimizer = torch.optim.AdamW(decay_param_groups(named, cfg.weight_decay), lr=cfg.lr)
        self.scheduler = build_scheduler(self.optimizer, cfg, total_steps)

    def step(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        self.model.train()
        shares = (self.parallel.backprop_shares(micro_batches) if self.parallel
                  else list(zip(micro_batches, batch_weights(micro_batches), strict=True)))
        loss = 0.0
        for index, (batch, weight) in enumerate(shares):
            with DataParallel.no_sync(self.forward, last=index == len(shares) - 1):
                micro_loss = self.forward(**batch).loss * weight
                micro_loss.backward()
            loss += micro_loss.item()
        if self.parallel:  # each rank's loss is its rows' share times the world size: their mean is the step's
            loss = self.parallel.sum(loss) / self.parallel.world_size
        grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm)
        lr = current_lr(self.optimizer)
        if math.isfinite(loss):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return {"loss": loss, "grad_norm": float(grad_norm), "lr": lr, "backward_passes": len(micro_batches)}

"""MeZO: zeroth-order SGD on the trainable parameters, two forward passes per step, no backward."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from zoft.config import MethodConfig
from zoft.heads import classification_loss
from zoft.methods import OptimizerState, batch_weights, build_scheduler, current_lr, trainable_named_parameters
from zoft.methods.zo_estimators import DrawBatches, SnapshotBatches, build_zo_optimizer, estimator_record, zo_step
from zoft.models import head_linear
from zoft.optim import NonFiniteLossError, decay_param_groups


class ExactHead:
    """Trains the classification head by an ordinary gradient while the zeroth-order estimate trains the rest.

    The head is small and sits on top: its exact gradient needs only the features it reads, which the
    perturbed forwards compute anyway (captured by a hook, no extra forward and no backward through the
    encoder). The mean of the features at +eps*z and -eps*z is the features at the unperturbed
    parameters up to O(eps^2).
    """

    def __init__(self, model: nn.Module, lr: float) -> None:
        self.head = head_linear(model)
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=lr, weight_decay=0.0)
        self.features: list[torch.Tensor] = []
        self.recording = False
        self.head.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if self.recording:
            self.features.append(args[0].detach())

    def owns(self, parameter: torch.Tensor) -> bool:
        return any(parameter is p for p in self.head.parameters())

    @contextmanager
    def capturing(self) -> Iterator[None]:
        self.features.clear()
        self.recording = True
        try:
            yield
        finally:
            self.recording = False

    def step(self, micro_batches: list[dict[str, torch.Tensor]], weights: list[float]) -> float:
        n = len(micro_batches)  # the forwards come micro-batch by micro-batch, at +eps*z then at -eps*z
        features = [torch.stack(self.features[j::n]).mean(0) for j in range(n)]
        with torch.enable_grad():
            loss = sum(w * classification_loss(self.head(f), batch["labels"])
                       for f, batch, w in zip(features, micro_batches, weights, strict=True))
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


class ZerothOrder(OptimizerState):
    def __init__(self, model: nn.Module, cfg: MethodConfig, total_steps: int, seed: int,
                 draw_batches: DrawBatches | None = None) -> None:
        self.model = model
        self.exact_head = ExactHead(model, cfg.head_lr) if cfg.head_grad == "exact" else None
        named = [(name, p) for name, p in trainable_named_parameters(model)
                 if self.exact_head is None or not self.exact_head.owns(p)]
        self.optimizer = build_zo_optimizer(decay_param_groups(named, cfg.weight_decay), cfg, total_steps, seed)
        self.snapshot_batches = SnapshotBatches(cfg.svrg_batches, draw_batches)
        self.scheduler = build_scheduler(self.optimizer, cfg, total_steps)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.exact_head is not None:
            state["head_optimizer"] = self.exact_head.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.exact_head is not None:
            self.exact_head.optimizer.load_state_dict(state["head_optimizer"])

    def step(self, micro_batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        # Dropout off: both perturbed forwards must see the same network, or the difference is noise.
        self.model.eval()
        weights = batch_weights(micro_batches)

        def loss() -> torch.Tensor:
            return sum(self.model(**batch).loss * w for batch, w in zip(micro_batches, weights, strict=True))

        lr = current_lr(self.optimizer)
        try:
            with self.exact_head.capturing() if self.exact_head else nullcontext():
                stats = zo_step(self.optimizer, loss, lambda: self.snapshot_batches.loss(self.model, micro_batches))
        except NonFiniteLossError as error:
            # The optimiser restored the parameters; the loop sees the non-finite loss and stops the run.
            return {"loss": math.nan, "loss_plus": error.loss_plus, "loss_minus": error.loss_minus, "lr": lr,
                    "backward_passes": 0}
        self.scheduler.step()
        head = {"head_loss": self.exact_head.step(micro_batches, weights)} if self.exact_head else {}
        return {
            "loss": (stats.loss_plus + stats.loss_minus) / 2, "loss_plus": stats.loss_plus,
            "loss_minus": stats.loss_minus, "projected_grad": stats.projected_grad, "lr": lr, **head,
            **estimator_record(stats), "backward_passes": 0,
        }

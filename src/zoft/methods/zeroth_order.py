"""MeZO: zeroth-order SGD on the trainable parameters, two forward passes per step, no backward.

The estimator is MeZO's two-point SPSA or MeZO-SVRG with its large-batch snapshots (``zo_estimator``):
both optimisers step alike, ``step(closure, full_closure)``, and say what they measured in
``stats.record()``, so this module picks one in :func:`build_zo_optimizer` and never asks which it has.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import nn

from zoft import optim, trajectory
from zoft.config import MethodConfig
from zoft.distributed import DIRECTION_PER_RANK, DataParallel
from zoft.heads import classification_loss
from zoft.methods.common import (
    Batch,
    DrawBatches,
    OptimizerState,
    batch_weights,
    build_scheduler,
    current_lr,
    trainable_named_parameters,
)
from zoft.models import head_linear
from zoft.optim import LinearSchedule, NonFiniteLossError, ZerothOrderSGD, ZerothOrderSVRG, decay_param_groups

Closure = Callable[[], torch.Tensor]
# log_update(record): every update MeZO's SPSA applied, as the optimiser records it, for the run's trajectory.
UpdateLog = Callable[[trajectory.StepRecord], None]


def trajectory_refusal(cfg: MethodConfig) -> str | None:
    """Why a run of `cfg` has no seed trajectory (and `zoft replay` cannot rebuild it), or None when it has.

    Only MeZO's SPSA steps are a function of their seeds, projected gradients and lr alone: an SVRG step
    also moves by the snapshot's full-batch estimate, and an exact head by a backpropagated gradient."""
    if cfg.method != "mezo":
        return f"method {cfg.method} trains by backprop: its steps are not a function of seeds"
    if cfg.zo_estimator != "spsa":
        return (f"zo_estimator={cfg.zo_estimator} also steps by its snapshots' full-batch estimates, which a "
                "trajectory of seeds and projected gradients does not hold")
    if cfg.head_grad == "exact":
        return "head_grad=exact trains the head by gradients, which a trajectory of seeds does not hold"
    return None


def perturbation_of(cfg: MethodConfig) -> optim.Perturbation:
    """The distribution of z that `cfg` asks for."""
    if cfg.perturbation == "lowrank":
        return optim.LowRank(rank=cfg.perturbation_rank)
    if cfg.perturbation == "sparse":
        return optim.Sparse(density=cfg.perturbation_density)
    return optim.Gaussian()


def build_zo_optimizer(groups: list[dict], cfg: MethodConfig, total_steps: int,
                       seed: int, parallel: DataParallel | None = None) -> ZerothOrderSGD | ZerothOrderSVRG:
    """The optimiser that `cfg` asks for, with n-SPSA growing linearly over the run when
    `n_perturbations_final` is set (the optimiser's state dict keeps the step count: resumable), drawing z
    from the configured distribution (which `zoft replay` rebuilds from the run's config alike). With
    zo_parallel=direction-per-rank on several processes a step has world size times the directions, each rank
    measuring its own, and the ranks exchange their measurements before the update."""
    ranks = parallel.world_size if parallel and parallel.mode == DIRECTION_PER_RANK else 1
    n_perturbations = (
        ranks * cfg.n_perturbations if cfg.n_perturbations_final is None
        else LinearSchedule(ranks * cfg.n_perturbations, ranks * cfg.n_perturbations_final, total_steps)
    )
    perturbation = perturbation_of(cfg)
    if cfg.zo_estimator == "svrg":
        return ZerothOrderSVRG(groups, lr=cfg.lr, lr_full=cfg.svrg_lr_full, eps=cfg.eps, q=cfg.svrg_every,
                               n_perturbations=n_perturbations, seed=seed, cache_z=cfg.cache_z,
                               perturbation=perturbation)
    return ZerothOrderSGD(groups, lr=cfg.lr, eps=cfg.eps, momentum=cfg.momentum, n_perturbations=n_perturbations,
                          seed=seed, cache_z=cfg.cache_z, perturbation=perturbation,
                          exchange=parallel.exchange if ranks > 1 else None)


def mean_loss(model: nn.Module, batches: list[Batch], weights: list[float]) -> torch.Tensor:
    """The loss over `batches` as one batch: each micro-batch's mean loss weighted by its share of examples."""
    return sum(model(**batch).loss * w for batch, w in zip(batches, weights, strict=True))


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
        """The mean loss over a large batch, drawn at the closure's first call and the same on every later
        one. Passed as every step's ``full_closure``, it is called only on a snapshot step (never by
        MeZO's SPSA), so the training stream gives up its extra batches only then. Drawing inside the
        optimiser's step touches neither the model nor the optimiser's generators: the run is the same to
        the bit as with the batch drawn before the step."""

        @functools.cache
        def drawn() -> tuple[list[Batch], list[float]]:
            batches = self.batches(micro_batches)
            return batches, batch_weights(batches)

        return lambda: mean_loss(model, *drawn())


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
                 draw_batches: DrawBatches | None = None, log_update: UpdateLog | None = None,
                 parallel: DataParallel | None = None) -> None:
        self.model = model
        self.log_update = log_update
        self.parallel = parallel
        self.exact_head = ExactHead(model, cfg.head_lr) if cfg.head_grad == "exact" else None
        named = [(name, p) for name, p in trainable_named_parameters(model)
                 if self.exact_head is None or not self.exact_head.owns(p)]
        self.optimizer = build_zo_optimizer(decay_param_groups(named, cfg.weight_decay), cfg, total_steps, seed,
                                            parallel)
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
        lr = current_lr(self.optimizer)
        # On several processes the closure exchanges the ranks' losses (zoft.distributed): distribution lives there.
        closure = (self.parallel.loss_closure(self.model, micro_batches) if self.parallel
                   else lambda: mean_loss(self.model, micro_batches, weights))
        try:
            with self.exact_head.capturing() if self.exact_head else nullcontext():
                stats = self.optimizer.step(closure, full_closure=self.snapshot_batches.loss(self.model, micro_batches))
        except NonFiniteLossError as error:
            # The optimiser restored the parameters; the loop sees the non-finite loss and stops the run.
            return {"loss": math.nan, "loss_plus": error.loss_plus, "loss_minus": error.loss_minus, "lr": lr,
                    "backward_passes": 0}
        if self.log_update is not None:
            self.log_update(stats.trajectory_record())
        self.scheduler.step()
        head = {"head_loss": self.exact_head.step(micro_batches, weights)} if self.exact_head else {}
        return {**stats.record(), "lr": lr, **head, "backward_passes": 0}

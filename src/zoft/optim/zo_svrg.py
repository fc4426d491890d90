"""MeZO-SVRG: zeroth-order SGD with a stochastic variance-reduced gradient (SPSA estimates, forward passes only).

Gautam, Park, Zhou, Raman, Ha, "Variance-reduced Zeroth-Order Methods for Fine-Tuning Language Models"
(ICML 2024, arXiv 2404.08080). With ``∇f_B(θ; z) = (f_B(θ + εz) - f_B(θ - εz)) / (2ε) · z``,
the SPSA estimate on the batch B along the direction z, steps t = 0, 1, 2, ... go:

- t mod q = 0, a snapshot step: ``θ̄ ← θ``, ``g ← ∇f_full(θ̄; z)`` on a large ("full") batch, and
  ``θ ← θ - η1 g``;
- otherwise, on the minibatch I with one fresh z shared by both estimates:
  ``θ ← θ - η2 (∇f_I(θ; z) - ∇f_I(θ̄; z) + g)``.

The two minibatch estimates see the same examples and the same z, so their difference cancels most of
the minibatch's sampling noise while θ stays near θ̄, and g supplies the large batch's gradient; its
expectation over z and I is the full-batch gradient at θ, as for plain SPSA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from zoft import trajectory
from zoft.optim.zeroth_order import (
    DEFAULT_MAX_CHUNK_NUMEL,
    DEFAULT_PERTURBATION,
    Closure,
    Perturbation,
    PerturbationCount,
    ZOStepStats,
    _check_hyperparameters,
    _Direction,
    _shared_lr,
    _Slice,
    _step_stats,
    _ZerothOrderOptimizer,
)

__all__ = ["SVRGStepStats", "ZerothOrderSVRG"]

_SNAPSHOT = "snapshot"
_FULL_GRAD = "full_grad"


@dataclass(frozen=True)
class SVRGStepStats(ZOStepStats):
    """What one :meth:`ZerothOrderSVRG.step` measured.

    On a snapshot step (``full_batch``) the losses are the large batch's at θ (= the new θ̄) and the
    ``snapshot_*`` lists are empty. On the other steps the losses are the minibatch's at θ, and the
    ``snapshot_*`` lists hold the same minibatch's at θ̄, with the same seeds; the update uses
    ``projected_grads[i] - snapshot_projected_grads[i]``. ``forward_passes`` counts closure calls (a call
    of the full-batch closure may run many model forwards).
    """

    full_batch: bool
    snapshot_losses_plus: list[float]
    snapshot_losses_minus: list[float]
    snapshot_projected_grads: list[float]

    def record(self) -> dict[str, float]:
        """Beyond MeZO's keys: whether the step was a snapshot (its losses are then the large batch's), else
        the mean projected gradient of the same minibatch and z at the snapshot."""
        if self.full_batch:
            return {**super().record(), "snapshot": 1.0}
        mean = sum(self.snapshot_projected_grads) / len(self.snapshot_projected_grads)
        return {**super().record(), "snapshot": 0.0, "projected_grad_at_snapshot": mean}

    def trajectory_record(self) -> trajectory.StepRecord:
        """Refused: a MeZO-SVRG step is not a function of its seeds, projected gradients and lr alone."""
        raise TypeError("a MeZO-SVRG step also moves by its snapshot's full-batch estimate, which a trajectory of "
                        "seeds and projected gradients does not hold")


class ZerothOrderSVRG(_ZerothOrderOptimizer):
    """MeZO-SVRG (Gautam et al. 2024): the control-variate SPSA estimator, one step at a time.

    Usage::

        opt = ZerothOrderSVRG(params, lr=1e-4, lr_full=1e-3, eps=1e-3, q=50, seed=0)
        for batch in batches:
            opt.step(lambda: loss_on(batch), full_closure=lambda: loss_on(large_batch))

    ``step(closure, full_closure)``: every ``q``-th step, counting from the first (:attr:`snapshot_due`
    says when), is a snapshot step that calls ``full_closure`` only, the loss over the large batch; the
    caller decides what that batch is (the whole training set, or many micro-batches). The other steps
    call ``closure`` only, the loss over the minibatch. Each closure is called only when its step needs
    it, so a caller may pass both on every step and build the large batch lazily inside
    ``full_closure`` (it must return the same loss, up to the parameters, on each of its calls).

    Forward passes: a snapshot step calls ``full_closure`` ``2 * N`` times; every other step calls
    ``closure`` ``4 * N`` times (at θ ± εz and at θ̄ ± εz), twice ZerothOrderSGD's cost per step. Over q
    steps with a large batch of B micro-batches: ``2N (B + 2 (q - 1))`` micro-batch forwards.

    Step sizes: g is an N-direction estimate, noisy in all but N directions, and every step until the
    next snapshot applies it again: its noise adds up over q steps instead of averaging out. Keep
    ``lr * q`` small against ``lr_full`` (the paper takes η1 > η2); on small least-squares problems
    lr 0.01 with q = 20 diverged where q = 5 or 10 converged below MeZO's noise floor.

    Memory: θ̄ and g are dense copies of the trainable parameters, in their dtype, kept between steps:
    twice the trainable parameters on top of MeZO's inference-level memory. Negligible for LoRA
    adapters; for full-parameter fine-tuning it is 2x the model's parameters (RoBERTa-large in float32:
    about 2.8 GB more). The θ̄ evaluation exchanges the parameters with the snapshot in place,
    slice by slice through a transient of at most ``max_chunk_numel`` elements: pure copies, so θ comes
    back bit-exactly. θ̄ itself is perturbed and restored arithmetically while it is in the parameters,
    so it drifts by float rounding (ulps per step, as MeZO's restore does to θ).

    Args:
        params: parameters or param groups. Groups may set ``lr``, ``lr_full`` and ``weight_decay``.
        lr: η2, the step size of the variance-reduced steps; LR schedulers drive it as usual.
        lr_full: η1, the step size of the snapshot steps (the paper takes η1 > η2). ``None``: the
            group's ``lr``, scheduled with it; a number is fixed, as LR schedulers set ``lr`` only.
        eps: perturbation size ε.
        q: the snapshot period.
        weight_decay: decoupled weight decay at each step's own rate: ``p <- p - rate * (v + wd * p)``.
        n_perturbations: N directions averaged per estimate (n-SPSA), the same N for the snapshot's and
            the minibatch's estimates; or a schedule of the steps taken, as for ZerothOrderSGD.
        seed, max_chunk_numel, cache_z, perturbation: as for :class:`~zoft.optim.ZerothOrderSGD` (cache_z
            keeps z for the six passes a direction takes on a variance-reduced step).

    The closures run under ``torch.no_grad()`` and must be deterministic (dropout off). Non-finite
    losses: as for ZerothOrderSGD, the parameters are restored (by copy on snapshot steps and after the
    θ̄ evaluation: bit-exactly; after a failure at θ ± εz, up to rounding), no update is applied,
    :class:`~zoft.optim.NonFiniteLossError` is raised and the step does not count: a failed snapshot
    step leaves the next step a snapshot step. :meth:`state_dict` holds θ̄, g, the steps taken (which
    fix the snapshot schedule) and the seed generator, so a resumed run repeats the original exactly.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        lr_full: float | None = None,
        eps: float = 1e-3,
        q: int = 50,
        weight_decay: float = 0.0,
        n_perturbations: PerturbationCount = 1,
        seed: int = 0,
        max_chunk_numel: int = DEFAULT_MAX_CHUNK_NUMEL,
        cache_z: bool = False,
        perturbation: Perturbation = DEFAULT_PERTURBATION,
    ) -> None:
        _check_hyperparameters(lr=lr, lr_full=lr_full, weight_decay=weight_decay, q=q)
        super().__init__(
            params, {"lr": lr, "lr_full": lr_full, "weight_decay": weight_decay},
            eps=eps, n_perturbations=n_perturbations, seed=seed, max_chunk_numel=max_chunk_numel, cache_z=cache_z,
            perturbation=perturbation,
        )
        self.q = q

    @property
    def snapshot_due(self) -> bool:
        """Whether the next :meth:`step` takes a snapshot (and calls ``full_closure``)."""
        return self.steps_taken % self.q == 0

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Closure | None = None, full_closure: Closure | None = None
    ) -> SVRGStepStats:
        """A snapshot step with ``full_closure`` when :attr:`snapshot_due`, else a variance-reduced step
        with ``closure``."""
        if self.snapshot_due:
            needed, wanted = full_closure, "full_closure, the loss over the large batch"
        else:
            needed, wanted = closure, "closure, the loss over the minibatch"
        if needed is None:
            raise TypeError(
                f"ZerothOrderSVRG step {self.steps_taken} needs {wanted} (snapshots every {self.q} steps)"
            )
        slices = self._trainable_slices()
        directions = self._draw_directions(slices)
        if self.snapshot_due:
            stats = self._snapshot_step(needed, slices, directions)
        else:
            stats = self._variance_reduced_step(needed, slices, directions)
        self.steps_taken += 1
        return stats

    def _snapshot_step(
        self, full_closure: Closure, slices: list[_Slice], directions: list[_Direction]
    ) -> SVRGStepStats:
        """θ̄ ← θ, g ← the large batch's estimate at θ̄, θ ← θ - η1 g."""
        for piece in slices:
            piece.buffers[_SNAPSHOT].copy_(piece.param)
        measurements = []
        for index, direction in enumerate(directions):
            try:
                measurements.append(self._two_point_losses(full_closure, direction, index, restore=False))
            finally:
                # θ̄ is an exact copy of θ: copying it back restores θ bit for bit, cheaper than a pass over z.
                _copy_snapshot_into_params(slices)
        grads = self._projected_grads(measurements)
        for piece in slices:
            piece.buffers[_FULL_GRAD].zero_()
        for direction, grad in zip(directions, grads, strict=True):
            for bucket, z in direction.buckets():
                z.add_to([piece.buffers[_FULL_GRAD] for piece in bucket], grad / len(directions))
        for piece in slices:
            rate = _full_lr(piece.group)
            if piece.group["weight_decay"] > 0:
                piece.param.mul_(1 - rate * piece.group["weight_decay"])
            piece.param.add_(piece.buffers[_FULL_GRAD], alpha=-rate)
        base = _step_stats(measurements, grads, directions, forward_passes=2 * len(directions),
                           step=self.steps_taken + 1, lr=_shared_lr(self.param_groups, _full_lr))
        return SVRGStepStats(
            **dataclasses.asdict(base), full_batch=True, snapshot_losses_plus=[], snapshot_losses_minus=[],
            snapshot_projected_grads=[],
        )

    def _variance_reduced_step(
        self, closure: Closure, slices: list[_Slice], directions: list[_Direction]
    ) -> SVRGStepStats:
        """θ ← θ - η2 (mean_i((g_i(θ) - g_i(θ̄)) z_i) + g), the minibatch measured at θ̄ and θ along each z_i."""
        # θ̄ first, so that the step's last forwards are at θ ± εz as in ZerothOrderSGD (hooks that read
        # the last forward see the current parameters) and the last restore can ride with the update.
        _swap_params_and_snapshot(slices)
        try:
            at_snapshot = self._measure(closure, directions, restore_last=True)
        finally:
            _swap_params_and_snapshot(slices)
        at_current = self._measure(closure, directions, restore_last=False)
        grads, snapshot_grads = self._projected_grads(at_current), self._projected_grads(at_snapshot)
        self._update(slices, directions, [now - then for now, then in zip(grads, snapshot_grads, strict=True)])
        for piece in slices:
            piece.param.add_(piece.buffers[_FULL_GRAD], alpha=-piece.group["lr"])
        base = _step_stats(at_current, grads, directions, forward_passes=4 * len(directions),
                           step=self.steps_taken + 1, lr=_shared_lr(self.param_groups, lambda group: group["lr"]))
        return SVRGStepStats(
            **dataclasses.asdict(base), full_batch=False, snapshot_losses_plus=[plus for plus, _ in at_snapshot],
            snapshot_losses_minus=[minus for _, minus in at_snapshot], snapshot_projected_grads=snapshot_grads,
        )

    def _buffers(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        return {key: self._state_buffer(param, key) for key in (_SNAPSHOT, _FULL_GRAD)}


def _full_lr(group: dict[str, Any]) -> float:
    return group["lr"] if group["lr_full"] is None else group["lr_full"]


def _copy_snapshot_into_params(slices: list[_Slice]) -> None:
    for piece in slices:
        piece.param.copy_(piece.buffers[_SNAPSHOT])


def _swap_params_and_snapshot(slices: list[_Slice]) -> None:
    """Exchange θ and θ̄ in place through one transient slice: copies only, so nothing is rounded."""
    for piece in slices:
        held = piece.param.clone()
        piece.param.copy_(piece.buffers[_SNAPSHOT])
        piece.buffers[_SNAPSHOT].copy_(held)

"""Zeroth-order SGD (MeZO): fine-tuning with forward passes only.

The estimator is two-point SPSA with the random-seed trick of Malladi et al. 2023, "Fine-Tuning Language
Models with Just Forward Passes" (MeZO), Algorithm 1. For one perturbation with seed ``s``:

1. ``p += eps * z`` for every trainable parameter, z ~ N(0, I) drawn from a generator seeded with ``s``;
2. ``loss+ = closure()``;
3. ``p -= 2 * eps * z`` (the same z, regenerated from ``s``);  ``loss- = closure()``;
4. ``g = (loss+ - loss-) / (2 * eps)``, the projected gradient, an estimate of ``z . grad``;
5. ``p += eps * z`` restores the parameters and ``p -= lr * (g * z + weight_decay * p)`` updates them, in
   one pass with z regenerated once more from ``s`` (the paper's code takes two passes: 4 draws of z
   per step instead of 3).

z is never stored for the whole parameter set (unless ``cache_z`` asks for it), so the memory cost is
that of inference plus one transient z chunk. This module knows tensors and closures only: nothing of
models, data or configs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["NonFiniteLossError", "ZOStepStats", "ZerothOrderSGD", "decay_param_groups"]

# Below 2**53 so that every seed survives a round trip through JSON readers that use doubles.
_SEED_BOUND = 2**53
_SEED_GENERATOR_KEY = "zeroth_order_seed_generator"
_NORM_NAME_MARKERS = ("layernorm", "layer_norm", "norm.")

Closure = Callable[[], "Tensor | float"]


@dataclass(frozen=True)
class ZOStepStats:
    """What one :meth:`ZerothOrderSGD.step` measured.

    ``loss_plus``, ``loss_minus`` and ``projected_grad`` are means over the step's perturbations; the
    ``*s`` lists hold one value per perturbation, in the order of ``seeds``.
    """

    loss_plus: float
    loss_minus: float
    projected_grad: float
    losses_plus: list[float]
    losses_minus: list[float]
    projected_grads: list[float]
    seeds: list[int]
    forward_passes: int

    @property
    def loss(self) -> float:
        """The mean of loss+ and loss-, a central estimate of the loss at the unperturbed parameters."""
        return (self.loss_plus + self.loss_minus) / 2


class NonFiniteLossError(FloatingPointError):
    """The closure returned NaN or infinity; the parameters were restored and no update was applied."""

    def __init__(self, seed: int, perturbation: int, loss_plus: float, loss_minus: float) -> None:
        super().__init__(
            f"closure returned a non-finite loss (loss+ = {loss_plus}, loss- = {loss_minus}) for "
            f"perturbation {perturbation} (seed {seed}); parameters restored, no update applied"
        )
        self.seed = seed
        self.perturbation = perturbation
        self.loss_plus = loss_plus
        self.loss_minus = loss_minus


def decay_param_groups(
    named_parameters: Iterable[tuple[str, Tensor]], weight_decay: float
) -> list[dict[str, Any]]:
    """Split trainable parameters into two optimiser groups: ``[with decay, without decay]``.

    Weight decay is off for a parameter when its name ends with ``bias``, when its lower-cased name
    contains ``layernorm``, ``layer_norm`` or ``norm.`` (BERT/RoBERTa ``LayerNorm.weight``, LLaMA
    ``model.norm.weight``), or when it has fewer than two dimensions. The last rule (nanoGPT's and
    timm's) catches norm weights whose names say nothing, such as GPT-2's ``ln_1.weight``; it also
    exempts the rarer 1-D scales (layer scale), as those libraries do. Weight matrices, embeddings
    and LoRA matrices are decayed. Frozen parameters (``requires_grad=False``) are left out. Both groups
    are always returned, possibly empty, so callers can rely on the order.
    """
    decayed: list[Tensor] = []
    exempt: list[Tensor] = []
    for name, param in named_parameters:
        if param.requires_grad:
            (exempt if _is_exempt_from_decay(name, param) else decayed).append(param)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": exempt, "weight_decay": 0.0},
    ]


def _is_exempt_from_decay(name: str, param: Tensor) -> bool:
    lowered = name.lower()
    return (
        lowered.endswith("bias") or any(marker in lowered for marker in _NORM_NAME_MARKERS) or param.dim() < 2
    )


@dataclass(frozen=True)
class _Slice:
    """A view into one trainable parameter, small enough to draw its z in one go."""

    param: Tensor
    group: dict[str, Any]
    momentum_buffer: Tensor | None


class _Direction:
    """The random direction z of one perturbation, reproduced from its seed on every pass.

    Each pass reseeds the per-device generators and draws one z per slice in a fixed order, so the
    +eps, -2 eps, +eps and update passes all see the same z. With ``cache`` the first pass keeps the
    drawn tensors for the later passes instead (memory equal to the trainable parameters).
    """

    def __init__(
        self, seed: int, slices: list[_Slice], generators: dict[torch.device, torch.Generator], cache: bool
    ) -> None:
        self.seed = seed
        self._slices = slices
        self._generators = generators
        self._cache = cache
        self._drawn: list[Tensor] | None = None

    def pairs(self) -> Iterator[tuple[_Slice, Tensor]]:
        """Yield every slice with its z."""
        if self._drawn is not None:
            yield from zip(self._slices, self._drawn, strict=True)
            return
        self._reseed_generators()
        drawn: list[Tensor] = []
        for piece in self._slices:
            z = self._draw(piece.param)
            if self._cache:
                drawn.append(z)
            yield piece, z
        if self._cache:
            self._drawn = drawn

    def _reseed_generators(self) -> None:
        for device in {piece.param.device for piece in self._slices}:
            if device not in self._generators:
                self._generators[device] = torch.Generator(device=device)
            self._generators[device].manual_seed(self.seed)

    def _draw(self, like: Tensor) -> Tensor:
        return torch.randn(
            like.shape, generator=self._generators[like.device], device=like.device, dtype=like.dtype
        )


def _bounded_slices(tensor: Tensor, max_numel: int) -> Iterator[Tensor]:
    """Views that tile ``tensor`` along its first dimension, each with at most ``max_numel`` elements.

    A single row larger than the bound is itself split along its own first dimension, recursively. The
    tiling depends only on the shape, so every pass over the parameters draws z identically.
    """
    if tensor.numel() <= max_numel:
        yield tensor
        return
    rows_per_slice = max(1, max_numel // (tensor.numel() // tensor.shape[0]))
    for start in range(0, tensor.shape[0], rows_per_slice):
        rows = tensor[start : start + rows_per_slice]
        if rows.numel() <= max_numel:
            yield rows
        else:
            yield from _bounded_slices(rows[0], max_numel)


def _loss_value(loss: Tensor | float) -> float:
    if isinstance(loss, Tensor):
        if loss.numel() != 1:
            raise ValueError(
                f"the closure must return a scalar loss, got a tensor of shape {tuple(loss.shape)}"
            )
        return float(loss.detach().float().item())
    return float(loss)


class ZerothOrderSGD(torch.optim.Optimizer):
    """MeZO: zeroth-order SGD with the random-seed trick (Malladi et al. 2023, Algorithm 1).

    Each :meth:`step` runs ``2 * n_perturbations`` forward passes through ``closure`` and no backward
    pass. Per perturbation it draws a seed from the optimiser's own seed generator (a CPU generator
    seeded with ``seed`` and saved by :meth:`state_dict`, so a resumed run draws the same seeds),
    perturbs the trainable parameters in place by ``+eps*z`` and ``-2*eps*z``, restores them, and
    computes the projected gradient ``g = (loss+ - loss-) / (2 eps)`` in double precision. The update
    averages over perturbations (n-SPSA) and uses decoupled weight decay::

        p <- p - lr * (mean_i(g_i * z_i) + weight_decay * p)

    All ``g_i`` are measured at the same point; the update is applied afterwards, one parameter slice
    and one perturbation at a time, regenerating each ``z_i`` from its seed.

    Reproducibility contract: z for a seed is, for each trainable parameter in param-group order,
    ``torch.randn`` of the parameter's shape, dtype and device drawn from a ``torch.Generator`` on that
    device seeded with the seed. A parameter with more than ``max_chunk_numel`` elements is drawn slice
    by slice along its first dimension (recursively for rows over the bound), which bounds the transient
    memory of a pass to ``max_chunk_numel`` elements. A step is a pure function of the parameters, the
    closure and the seeds: the global RNG is never touched.

    Args:
        params: parameters or param groups. Groups may set ``lr``, ``weight_decay`` and ``momentum``; LR
            schedulers drive ``lr`` as for any torch optimiser. Parameters with ``requires_grad=False``
            are skipped, as torch optimisers skip parameters without a gradient.
        lr: learning rate.
        eps: perturbation size (the same for all groups, since it defines the estimator).
        weight_decay: decoupled weight decay; see :func:`decay_param_groups` to exempt biases and norms.
        momentum: ZO-SGD-MMT. When > 0 the update uses ``m <- momentum * m + mean_i(g_i * z_i)`` and
            ``p <- p - lr * (m + weight_decay * p)`` (decay stays out of the buffer). The buffer, in the
            parameters' dtype, costs memory equal to the group's parameters and is allocated only when
            momentum > 0.
        n_perturbations: number of perturbations N averaged per step.
        seed: seeds the generator of per-perturbation seeds.
        max_chunk_numel: largest number of elements of z drawn at once.
        cache_z: keep each perturbation's z from its first pass for the later passes instead of
            regenerating it: faster for small trainable sets such as LoRA adapters, at a memory cost of
            N times the trainable parameters during the step. Results are bitwise identical.

    The closure must be deterministic between its two calls (MeZO turns dropout off: call
    ``model.eval()``), and is called under ``torch.no_grad()``. Gradient accumulation is the caller's
    business and needs nothing from the optimiser: a closure that averages the loss over several
    micro-batches (weighted by their sizes) sees the same perturbation for all of them, which makes the
    step one on their union.

    Non-finite losses: if the closure returns NaN or infinity (or raises), the parameters are restored
    at once (up to float rounding, as at the end of every perturbation) and no update is applied; a
    non-finite loss then raises :class:`NonFiniteLossError` (a ``FloatingPointError``), so a training
    loop cannot miss divergence. The seeds drawn stay drawn.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        n_perturbations: int = 1,
        seed: int = 0,
        max_chunk_numel: int = 2**22,
        cache_z: bool = False,
    ) -> None:
        _check_hyperparameters(lr, eps, weight_decay, momentum, n_perturbations, max_chunk_numel)
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum})
        self.eps = eps
        self.n_perturbations = n_perturbations
        self.max_chunk_numel = max_chunk_numel
        self.cache_z = cache_z
        self._seed_generator = torch.Generator().manual_seed(seed)
        self._z_generators: dict[torch.device, torch.Generator] = {}

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> ZOStepStats:  # type: ignore[override]
        """Estimate the gradient from ``2 * n_perturbations`` calls of ``closure`` and update."""
        if closure is None:
            raise TypeError(
                "ZerothOrderSGD.step needs a closure that returns the loss, e.g. "
                "opt.step(lambda: model(**batch).loss): it evaluates the loss at perturbed parameters"
            )
        slices = self._trainable_slices()
        directions: list[_Direction] = []
        losses_plus: list[float] = []
        losses_minus: list[float] = []
        for index in range(self.n_perturbations):
            seed = int(torch.randint(_SEED_BOUND, (1,), generator=self._seed_generator).item())
            direction = _Direction(seed, slices, self._z_generators, self.cache_z)
            last = index == self.n_perturbations - 1
            loss_plus, loss_minus = self._two_point_losses(closure, direction, index, restore=not last)
            directions.append(direction)
            losses_plus.append(loss_plus)
            losses_minus.append(loss_minus)
        grads = [
            (plus - minus) / (2 * self.eps) for plus, minus in zip(losses_plus, losses_minus, strict=True)
        ]
        self._update(slices, directions, grads)
        return ZOStepStats(
            loss_plus=math.fsum(losses_plus) / len(losses_plus),
            loss_minus=math.fsum(losses_minus) / len(losses_minus),
            projected_grad=math.fsum(grads) / len(grads),
            losses_plus=losses_plus,
            losses_minus=losses_minus,
            projected_grads=grads,
            seeds=[direction.seed for direction in directions],
            forward_passes=2 * self.n_perturbations,
        )

    def state_dict(self) -> dict[str, Any]:
        """The torch optimiser state (momentum buffers, groups) plus the seed generator's state."""
        state = super().state_dict()
        state[_SEED_GENERATOR_KEY] = self._seed_generator.get_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, so that the following steps draw the same seeds."""
        state_dict = dict(state_dict)
        if _SEED_GENERATOR_KEY not in state_dict:
            raise ValueError(f"not a ZerothOrderSGD state dict: it has no {_SEED_GENERATOR_KEY!r} entry")
        generator_state = state_dict.pop(_SEED_GENERATOR_KEY)
        super().load_state_dict(state_dict)
        self._seed_generator.set_state(generator_state.cpu())

    def _trainable_slices(self) -> list[_Slice]:
        slices: list[_Slice] = []
        for group in self.param_groups:
            for param in group["params"]:
                if param.requires_grad:
                    slices.extend(self._slices_of(param, group))
        if not slices:
            raise ValueError("ZerothOrderSGD has no parameter with requires_grad=True to train")
        return slices

    def _slices_of(self, param: Tensor, group: dict[str, Any]) -> Iterator[_Slice]:
        param_views = _bounded_slices(param, self.max_chunk_numel)
        buffer = self._momentum_buffer(param, group)
        if buffer is None:
            return (_Slice(view, group, None) for view in param_views)
        buffer_views = _bounded_slices(buffer, self.max_chunk_numel)
        return (
            _Slice(view, group, buffer_view)
            for view, buffer_view in zip(param_views, buffer_views, strict=True)
        )

    def _momentum_buffer(self, param: Tensor, group: dict[str, Any]) -> Tensor | None:
        if group["momentum"] == 0:
            return None
        state = self.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state["momentum_buffer"]

    def _two_point_losses(
        self, closure: Closure, direction: _Direction, index: int, restore: bool
    ) -> tuple[float, float]:
        """loss+ and loss-. With ``restore=False`` a successful call leaves the parameters at ``p - eps*z``
        and the update pass restores them on its way: one pass over z fewer (z is the expensive part of
        a step when many parameters are trained). A failed call always restores them here."""
        loss_plus = loss_minus = math.nan
        # The multiple of z currently added to the parameters, undone whatever happens in the closure.
        applied = 0.0
        measured = False
        try:
            self._perturb(direction, self.eps)
            applied = self.eps
            loss_plus = _loss_value(closure())
            if not math.isfinite(loss_plus):
                raise NonFiniteLossError(direction.seed, index, loss_plus, loss_minus)
            self._perturb(direction, -2 * self.eps)
            applied = -self.eps
            loss_minus = _loss_value(closure())
            if not math.isfinite(loss_minus):
                raise NonFiniteLossError(direction.seed, index, loss_plus, loss_minus)
            measured = True
        finally:
            if applied and (restore or not measured):
                self._perturb(direction, -applied)
        return loss_plus, loss_minus

    @staticmethod
    def _perturb(direction: _Direction, scale: float) -> None:
        for piece, z in direction.pairs():
            piece.param.add_(z, alpha=scale)

    def _update(self, slices: list[_Slice], directions: list[_Direction], grads: list[float]) -> None:
        """Apply ``p <- p - lr * (mean_i(g_i z_i) + wd * p)``, through the momentum buffer if any.

        The parameters arrive at ``p - eps*z`` of the last direction (see ``_two_point_losses``); its
        ``+eps*z`` restore rides along with its update. Decay scales the pending ``-eps*z`` too, so the
        restore is scaled alike: ``(p - eps z)(1 - lr wd) + eps (1 - lr wd) z = p (1 - lr wd)``.
        """
        for piece in slices:
            if piece.momentum_buffer is not None:
                piece.momentum_buffer.mul_(piece.group["momentum"])
            if piece.group["weight_decay"] > 0:
                piece.param.mul_(1 - piece.group["lr"] * piece.group["weight_decay"])
        for index, (direction, grad) in enumerate(zip(directions, grads, strict=True)):
            weight = grad / len(directions)
            pending_restore = self.eps if index == len(directions) - 1 else 0.0
            for piece, z in direction.pairs():
                restore = pending_restore * (1 - piece.group["lr"] * piece.group["weight_decay"])
                if piece.momentum_buffer is not None:
                    piece.momentum_buffer.add_(z, alpha=weight)
                    if restore:
                        piece.param.add_(z, alpha=restore)
                else:
                    piece.param.add_(z, alpha=restore - piece.group["lr"] * weight)
        for piece in slices:
            if piece.momentum_buffer is not None:
                piece.param.add_(piece.momentum_buffer, alpha=-piece.group["lr"])


def _check_hyperparameters(
    lr: float, eps: float, weight_decay: float, momentum: float, n_perturbations: int, max_chunk_numel: int
) -> None:
    if lr < 0:
        raise ValueError(f"lr must be >= 0, got {lr}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if n_perturbations < 1:
        raise ValueError(f"n_perturbations must be >= 1, got {n_perturbations}")
    if max_chunk_numel < 1:
        raise ValueError(f"max_chunk_numel must be >= 1, got {max_chunk_numel}")

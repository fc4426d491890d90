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
models, data or configs. The machinery (seeds, z, two-point losses, the fused update) lives in
``_ZerothOrderOptimizer``, shared with the variance-reduced estimator of :mod:`zoft.optim.zo_svrg`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from zoft import trajectory

__all__ = ["Exchange", "Gaussian", "LinearSchedule", "LowRank", "NonFiniteLossError", "Perturbation", "Sparse",
           "ZOStepStats", "ZerothOrderSGD", "decay_param_groups"]

# Below 2**53 so that every seed survives a round trip through JSON readers that use doubles.
_SEED_BOUND = 2**53
_SEED_GENERATOR_KEY = "zeroth_order_seed_generator"
_STEPS_KEY = "zeroth_order_steps_taken"
_PERTURBATION_KEY = "zeroth_order_perturbation"
_NORM_NAME_MARKERS = ("layernorm", "layer_norm", "norm.")
# 4 MB of float32 z at most: a GPU pass stays bound by memory bandwidth, not kernel launches, well below
# this, and the transient stays small next to the weights of even a small model (MiniLM: 87 MB).
DEFAULT_MAX_CHUNK_NUMEL = 2**20

Closure = Callable[[], "Tensor | float"]
# exchange(seeds, measurements) -> measurements: the (loss+, loss-) of each of the step's directions (in the order
# of its seeds) that the update is to use, from this process's own. Data-parallel training gathers the ranks'
# measurements here (zoft.distributed); without one a process uses its own.
Exchange = Callable[[list[int], list[tuple[float, float]]], list[tuple[float, float]]]
# N per step: a constant, or a function of the number of steps taken so far (see LinearSchedule).
PerturbationCount = int | Callable[[int], int]


@dataclass(frozen=True)
class ZOStepStats:
    """What one :meth:`ZerothOrderSGD.step` measured.

    ``loss_plus``, ``loss_minus`` and ``projected_grad`` are means over the step's perturbations; the
    ``*s`` lists hold one value per perturbation, in the order of ``seeds``. ``step`` is the optimiser's
    count of steps taken with this one (1 for its first, continued by a loaded state dict); ``lr`` the
    learning rate the update applied, None when the param groups' rates differ.
    """

    loss_plus: float
    loss_minus: float
    projected_grad: float
    losses_plus: list[float]
    losses_minus: list[float]
    projected_grads: list[float]
    seeds: list[int]
    forward_passes: int
    step: int
    lr: float | None

    @property
    def loss(self) -> float:
        """The mean of loss+ and loss-, a central estimate of the loss at the unperturbed parameters."""
        return (self.loss_plus + self.loss_minus) / 2

    def record(self) -> dict[str, float]:
        """What a training loop logs of the step: its loss, the two-point means and the projected gradient
        (estimators with more to say add their keys)."""
        return {"loss": self.loss, "loss_plus": self.loss_plus, "loss_minus": self.loss_minus,
                "projected_grad": self.projected_grad}

    def trajectory_record(self) -> trajectory.StepRecord:
        """The step as a record of a seed trajectory (:mod:`zoft.trajectory`, what ``zoft replay`` reads): with
        the tensors before it, its seeds, projected gradients and lr are the whole step, which
        :meth:`ZerothOrderSGD.replay` repeats to the bit. So a loop of one's own keeps a run's trajectory
        from the optimiser alone: ``trajectory.append(path, opt.step(closure).trajectory_record())``."""
        if self.lr is None:
            raise ValueError("the step's param groups have different learning rates; a trajectory record holds one")
        return trajectory.StepRecord(self.step, self.lr, tuple(self.seeds), tuple(self.projected_grads))


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
    """A view into one trainable parameter, small enough to draw its z in one go, with the matching views
    of the optimiser's state tensors for that parameter (momentum, snapshot, ...), by state key.
    ``whole`` is the parameter the view is cut from and ``index`` the view's place in it
    (``whole[index]`` is ``param``): a low-rank z is drawn for the whole matrix, then cut alike."""

    param: Tensor
    group: dict[str, Any]
    buffers: dict[str, Tensor]
    whole: Tensor
    index: tuple[int | slice, ...]


@dataclass(frozen=True)
class Gaussian:
    """z ~ N(0, I) over all trainable numbers: the MeZO paper's perturbation, and the default.

    Per bucket (see :class:`ZerothOrderSGD`'s contract) one flat ``torch.randn`` of the bucket's size."""

    def describe(self) -> dict[str, Any]:
        """What a state dict records of the distribution, to refuse resuming under another one."""
        return {"kind": "gaussian"}


@dataclass(frozen=True)
class LowRank:
    """LOZO's low-rank perturbation (Chen et al. 2024): per 2-D parameter (m, n), z = U Vᵀ / sqrt(rank)
    with U (m × rank) and V (n × rank) standard normal, so r(m + n) numbers are drawn instead of mn.
    Parameters of any other number of dimensions (biases, norms) keep the Gaussian.

    Scaling: for U, V with independent N(0, 1) entries, E[(U Vᵀ)_ij (U Vᵀ)_kl] = rank · δ_ik δ_jl, so
    z = U Vᵀ / sqrt(rank) has E[vec(z) vec(z)ᵀ] = I, the Gaussian's covariance: the two-point estimate
    g z, g = (L(θ + εz) - L(θ - εz)) / 2ε ≈ zᵀ∇L, has mean ∇L to first order in ε, as MeZO's does, and
    lr and ε keep their meaning. LOZO writes the same estimator as a perturbation εUVᵀ and an update
    g UVᵀ / rank: its ε is this ε · sqrt(rank). Each step draws fresh U and V from its seed (LOZO's
    lazy sampling of V, kept for ν steps, is not implemented: ν = 1). The update of a matrix is a
    rank-``rank`` matrix per perturbation, added by ``addmm_`` without building z: no pass over a drawn
    z, no scratch buffer.

    Draw order, per device generator reseeded with the seed and walking the slices in bucket order: at
    the first slice of a 2-D parameter, ``torch.randn(rank * (m + n))``, U its first m·rank numbers as
    (m, rank), V the rest as (n, rank); a slice ``whole[index]`` of it gets ``U[index[0]] V[index[1]]ᵀ``
    (all of V for a block of rows). A slice of any other parameter draws ``torch.randn`` of its shape.
    """

    rank: int = 4

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"a low-rank perturbation needs rank >= 1, got {self.rank}")

    def describe(self) -> dict[str, Any]:
        return {"kind": "lowrank", "rank": self.rank}


# Sparse perturbations select blocks of this many consecutive numbers of a bucket's flat z: choosing among
# blocks (a randperm over numel / 64 entries) instead of single numbers keeps the choice cheap next to the
# draw it saves, and 64 floats are a cache line's multiple.
SPARSE_BLOCK = 64


@dataclass(frozen=True)
class Sparse:
    """A random sparse perturbation (Sparse MeZO's idea, Liu et al. 2024, with a random mask): per bucket of
    N numbers cut into B = ceil(N / 64) blocks of 64 consecutive numbers (the last one shorter), exactly
    k = max(1, round(density · B)) blocks are perturbed, chosen uniformly without replacement and drawn
    anew for each perturbation from its seed; the other numbers get z = 0.

    Sparse MeZO chooses its mask by weight magnitude (the smallest weights); that mask depends on the
    weights, which the perturbation itself moves between a step's passes, so it is not used here: the
    random mask is a pure function of the seed, the same in every pass and in a replay.

    Scaling: each perturbed number is N(0, 1) / sqrt(p), p = k / B the chance that a block is chosen,
    so E[z_i²] = p / p = 1 and E[z_i z_j] = 0 (independent zero-mean values): E[vec(z) vec(z)ᵀ] = I, the
    Gaussian's covariance, and g z has mean ∇L to first order in ε with the same lr and ε. (Without the
    1 / sqrt(p) its mean would be p ∇L: the lr would shrink by p.)

    Draw order, per bucket on its device's generator reseeded with the seed: ``torch.randperm(B)``, of
    which the first k are the chosen blocks, then ``torch.randn(k * 64)``, the chosen blocks' values in
    the order of that list.
    """

    density: float = 0.25

    def __post_init__(self) -> None:
        if not 0 < self.density <= 1:
            raise ValueError(f"a sparse perturbation needs a density in (0, 1], got {self.density}")

    def describe(self) -> dict[str, Any]:
        return {"kind": "sparse", "density": self.density}

    def chosen_blocks(self, numel: int) -> tuple[int, int]:
        """(blocks of a bucket of `numel` numbers, blocks chosen)."""
        blocks = -(-numel // SPARSE_BLOCK)
        return blocks, min(blocks, max(1, round(self.density * blocks)))


Perturbation = Gaussian | LowRank | Sparse
# The paper's distribution; a frozen dataclass, safe to share as every optimiser's default.
DEFAULT_PERTURBATION: Perturbation = Gaussian()


class _NormalSource:
    """Standard-normal draws from one generator per device, written into a reused scratch buffer.

    Drawing into a buffer that already exists (``normal_``) gives the very numbers ``torch.randn`` gives
    from the same generator state, without allocating and first-touching fresh memory for every draw:
    on a CPU that is about 40% of the cost of a draw, and the draws dominate a full-parameter step.
    """

    def __init__(self) -> None:
        self.generators: dict[torch.device, torch.Generator] = {}
        self._scratch: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def reseed(self, devices: Iterable[torch.device], seed: int) -> None:
        for device in devices:
            if device not in self.generators:
                self.generators[device] = torch.Generator(device=device)
            self.generators[device].manual_seed(seed)

    def buffer(self, numel: int, like: Tensor, keep: bool) -> Tensor:
        """A flat tensor of `numel` elements on `like`'s device and dtype, its values undefined: fresh when
        `keep`, else the scratch buffer, valid until the next call."""
        if keep:
            return torch.empty(numel, device=like.device, dtype=like.dtype)
        key = (like.device, like.dtype)
        if key not in self._scratch or self._scratch[key].numel() < numel:
            self._scratch[key] = torch.empty(numel, device=like.device, dtype=like.dtype)
        return self._scratch[key][:numel]

    def draw(self, numel: int, like: Tensor, keep: bool) -> Tensor:
        """A flat z of `numel` elements on `like`'s device and dtype; unless `keep`, it lives in the scratch
        buffer until the next draw."""
        generator = self.generators[like.device]
        if keep:
            return torch.randn(numel, generator=generator, device=like.device, dtype=like.dtype)
        return self.buffer(numel, like, keep=False).normal_(generator=generator)

    def draw_sparse(self, numel: int, like: Tensor, keep: bool, sparse: Sparse) -> Tensor:
        """A flat sparse z of `numel` elements (see :class:`Sparse`), in the scratch buffer unless `keep`."""
        generator = self.generators[like.device]
        blocks, chosen = sparse.chosen_blocks(numel)
        picked = torch.randperm(blocks, generator=generator, device=like.device)[:chosen]
        values = torch.randn(chosen, SPARSE_BLOCK, generator=generator, device=like.device, dtype=like.dtype)
        values.mul_(1 / math.sqrt(chosen / blocks))
        # Padded to whole blocks so that one index_copy_ places them all; the padding is cut off below.
        padded = self.buffer(blocks * SPARSE_BLOCK, like, keep).zero_()
        padded.view(blocks, SPARSE_BLOCK).index_copy_(0, picked, values)
        return padded[:numel]


Bucket = list[_Slice]


def _buckets(slices: list[_Slice], max_numel: int) -> list[Bucket]:
    """Consecutive slices of one param group, device and dtype, packed while they total at most
    ``max_numel`` elements. A bucket's z is one draw and its parameters move in one ``foreach`` call: on a
    GPU a pass over many small tensors (LoRA adapters, biases) is bound by kernel launches, not by work."""
    buckets: list[Bucket] = []
    total = 0
    for piece in slices:
        numel = piece.param.numel()
        if buckets and _same_bucket(buckets[-1][-1], piece) and total + numel <= max_numel:
            buckets[-1].append(piece)
            total += numel
        else:
            buckets.append([piece])
            total = numel
    return buckets


def _same_bucket(last: _Slice, piece: _Slice) -> bool:
    return (last.group is piece.group and last.param.device == piece.param.device
            and last.param.dtype == piece.param.dtype)


class _DenseZ:
    """A bucket's z drawn in full, one tensor per slice."""

    def __init__(self, zs: list[Tensor]) -> None:
        self.zs = zs

    def add_to(self, targets: list[Tensor], alpha: float) -> None:
        """``target += alpha * z`` for each slice's target (the parameter, or a state tensor shaped like it)."""
        torch._foreach_add_(targets, self.zs, alpha=alpha)


# A slice's share of a low-rank z: (rows of U / sqrt(rank), rows of V) for a slice of a matrix, else a Gaussian z.
LowRankPart = Tensor | tuple[Tensor, Tensor]


class _LowRankZ:
    """A bucket's low-rank z, kept as factors: per slice of a matrix its rows of U and columns of V (the
    1 / sqrt(rank) folded into the factor of U), per other slice a drawn Gaussian tensor."""

    def __init__(self, parts: list[LowRankPart]) -> None:
        self.parts = parts

    def add_to(self, targets: list[Tensor], alpha: float) -> None:
        for target, part in zip(targets, self.parts, strict=True):
            if isinstance(part, Tensor):
                target.add_(part, alpha=alpha)
            elif target.dim() == 2:  # a block of rows: U_rows Vᵀ
                target.addmm_(part[0], part[1].T, alpha=alpha)
            else:  # a piece of one row (a row over the bound): V_cols u_row
                target.addmv_(part[1], part[0], alpha=alpha)


BucketZ = _DenseZ | _LowRankZ


class _Direction:
    """The random direction z of one perturbation, reproduced from its seed on every pass.

    Each pass reseeds the per-device generators and draws one z per bucket in a fixed order (see the
    distributions' contracts), so the +eps, -2 eps, +eps and update passes all see the same z. With
    ``cache`` the first pass keeps the drawn tensors for the later passes instead (memory equal to the
    trainable parameters, for the low-rank z only its factors). Without it, a bucket's z is valid only
    until the next one is drawn: consume it before asking for the next.
    """

    def __init__(self, seed: int, buckets: list[Bucket], source: _NormalSource, cache: bool,
                 perturbation: Perturbation) -> None:
        self.seed = seed
        self._buckets = buckets
        self._source = source
        self._cache = cache
        self._perturbation = perturbation
        self._drawn: list[BucketZ] | None = None

    def buckets(self) -> Iterator[tuple[Bucket, BucketZ]]:
        """Yield every bucket with its z."""
        if self._drawn is not None:
            yield from zip(self._buckets, self._drawn, strict=True)
            return
        self._source.reseed({bucket[0].param.device for bucket in self._buckets}, self.seed)
        drawn: list[BucketZ] = []
        # A matrix cut into slices over several buckets draws its factors once, at its first slice.
        factors: dict[int, tuple[Tensor, Tensor]] = {}
        for bucket in self._buckets:
            z = self._draw(bucket, factors)
            if self._cache:
                drawn.append(z)
            yield bucket, z
        if self._cache:
            self._drawn = drawn

    def _draw(self, bucket: Bucket, factors: dict[int, tuple[Tensor, Tensor]]) -> BucketZ:
        if isinstance(self._perturbation, LowRank):
            return _LowRankZ([self._low_rank_part(piece, factors, self._perturbation.rank) for piece in bucket])
        sizes = [piece.param.numel() for piece in bucket]
        if isinstance(self._perturbation, Sparse):
            flat = self._source.draw_sparse(sum(sizes), bucket[0].param, self._cache, self._perturbation)
        else:
            flat = self._source.draw(sum(sizes), bucket[0].param, keep=self._cache)
        return _DenseZ([z.view(piece.param.shape) for z, piece in zip(flat.split(sizes), bucket, strict=True)])

    def _low_rank_part(self, piece: _Slice, factors: dict[int, tuple[Tensor, Tensor]], rank: int) -> LowRankPart:
        whole = piece.whole
        generator = self._source.generators[whole.device]
        if whole.dim() != 2:
            return torch.randn(piece.param.shape, generator=generator, device=whole.device, dtype=whole.dtype)
        if id(whole) not in factors:
            rows, columns = whole.shape
            drawn = torch.randn(rank * (rows + columns), generator=generator, device=whole.device, dtype=whole.dtype)
            factors[id(whole)] = (drawn[: rows * rank].view(rows, rank).mul_(1 / math.sqrt(rank)),
                                  drawn[rows * rank :].view(columns, rank))
        left, right = factors[id(whole)]
        return left[piece.index[0]] if piece.index else left, right[piece.index[1]] if len(piece.index) > 1 else right


def _bounded_indices(shape: torch.Size, max_numel: int) -> Iterator[tuple[int | slice, ...]]:
    """Indices that tile a tensor of ``shape`` along its first dimension, each view with at most
    ``max_numel`` elements; ``()`` is the whole tensor.

    A single row larger than the bound is itself split along its own first dimension, recursively. The
    tiling depends only on the shape, so every pass over the parameters draws z identically.
    """
    numel = math.prod(shape)
    if numel <= max_numel:
        yield ()
        return
    row_numel = numel // shape[0]
    rows_per_slice = max(1, max_numel // row_numel)
    for start in range(0, shape[0], rows_per_slice):
        stop = min(start + rows_per_slice, shape[0])
        if (stop - start) * row_numel <= max_numel:
            yield (slice(start, stop),)
        else:
            yield from ((start, *inner) for inner in _bounded_indices(shape[1:], max_numel))


def _params(bucket: Bucket) -> list[Tensor]:
    return [piece.param for piece in bucket]


def _loss_value(loss: Tensor | float) -> float:
    if isinstance(loss, Tensor):
        if loss.numel() != 1:
            raise ValueError(
                f"the closure must return a scalar loss, got a tensor of shape {tuple(loss.shape)}"
            )
        return float(loss.detach().float().item())
    return float(loss)


@dataclass(frozen=True)
class LinearSchedule:
    """A number of perturbations per step that moves linearly from ``start`` at step 0 to ``end`` at step
    ``steps - 1`` (and stays there), rounded to the nearest integer.

    Growing N over a run spends few forward passes early, while the gradient is large against the
    estimator's noise, and more late, when it is small and a one-direction estimate is mostly noise.
    Pass it as ``n_perturbations``: the optimiser calls it with the number of steps it has taken, which
    its state dict keeps, so a resumed run continues the schedule.
    """

    start: int
    end: int
    steps: int

    def __post_init__(self) -> None:
        if self.start < 1 or self.end < 1:
            raise ValueError(f"a perturbation schedule needs start and end >= 1, got {self.start} and {self.end}")
        if self.steps < 1:
            raise ValueError(f"a perturbation schedule needs steps >= 1, got {self.steps}")

    def __call__(self, step: int) -> int:
        fraction = min(step, self.steps - 1) / max(self.steps - 1, 1)
        return self.start + math.floor((self.end - self.start) * fraction + 0.5)


class _ZerothOrderOptimizer(torch.optim.Optimizer):
    """What the zeroth-order optimisers share: per-perturbation seeds, z reproduced from them, two-point
    losses with guaranteed restoration, the fused restore-and-update, and a count of the steps taken.

    Subclasses define ``step`` and, through :meth:`_buffers`, the per-parameter state tensors that their
    slices carry alongside the parameter views. They share one stepping interface,
    ``step(closure, full_closure=None) -> ZOStepStats``: ``closure`` is the loss over the step's
    minibatch; ``full_closure`` the loss over a large batch, called only by an estimator that needs one
    and only on the steps that need it (ZerothOrderSGD never calls it, ZerothOrderSVRG on its snapshot
    steps). A caller can therefore pass both on every step, whatever the estimator, and draw the large
    batch lazily inside ``full_closure``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        defaults: dict[str, Any],
        eps: float,
        n_perturbations: PerturbationCount,
        seed: int,
        max_chunk_numel: int,
        cache_z: bool,
        perturbation: Perturbation,
    ) -> None:
        _check_hyperparameters(eps=eps, max_chunk_numel=max_chunk_numel)
        if not callable(n_perturbations):
            _check_hyperparameters(n_perturbations=n_perturbations)
        super().__init__(params, defaults)
        self.eps = eps
        self.n_perturbations = n_perturbations
        self.max_chunk_numel = max_chunk_numel
        self.cache_z = cache_z
        self.perturbation = perturbation
        # Steps that applied an update; drives n_perturbations schedules (and the SVRG snapshot period).
        self.steps_taken = 0
        # Set by ZerothOrderSGD only; the two-point losses consult it to defer their finiteness check.
        self.exchange: Exchange | None = None
        self._seed_generator = torch.Generator().manual_seed(seed)
        self._normal_source = _NormalSource()

    def state_dict(self) -> dict[str, Any]:
        """The torch optimiser state (per-parameter buffers, groups), the seed generator's state, the
        number of steps taken and the perturbation distribution (z itself is never stored: the seeds and
        the distribution regenerate it)."""
        state = super().state_dict()
        state[_SEED_GENERATOR_KEY] = self._seed_generator.get_state()
        state[_STEPS_KEY] = self.steps_taken
        state[_PERTURBATION_KEY] = self.perturbation.describe()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, so that the following steps draw the same seeds."""
        state_dict = dict(state_dict)
        if _SEED_GENERATOR_KEY not in state_dict:
            raise ValueError(
                f"not a {type(self).__name__} state dict: it has no {_SEED_GENERATOR_KEY!r} entry"
            )
        generator_state = state_dict.pop(_SEED_GENERATOR_KEY)
        # Checkpoints written before the distributions existed drew Gaussian directions.
        saved = state_dict.pop(_PERTURBATION_KEY, Gaussian().describe())
        if saved != self.perturbation.describe():
            raise ValueError(f"the state dict was written by an optimiser drawing {saved}, this one draws "
                             f"{self.perturbation.describe()}: its seeds would give other directions")
        # Checkpoints written before the count existed come from runs without schedules: 0 is exact there.
        steps_taken = state_dict.pop(_STEPS_KEY, 0)
        super().load_state_dict(state_dict)
        self._seed_generator.set_state(generator_state.cpu())
        self.steps_taken = steps_taken

    def _perturbations_this_step(self) -> int:
        if not callable(self.n_perturbations):
            return self.n_perturbations
        count = self.n_perturbations(self.steps_taken)
        _check_hyperparameters(n_perturbations=count)
        return count

    def _draw_directions(self, slices: list[_Slice]) -> list[_Direction]:
        """This step's directions, one seed each from the seed generator (a failed step still uses them up)."""
        buckets = _buckets(slices, self.max_chunk_numel)
        return [
            _Direction(self._next_seed(), buckets, self._normal_source, self.cache_z, self.perturbation)
            for _ in range(self._perturbations_this_step())
        ]

    def _next_seed(self) -> int:
        # One draw per seed, as the seed sequence of saved runs was drawn.
        return int(torch.randint(_SEED_BOUND, (1,), generator=self._seed_generator).item())

    def _trainable_slices(self) -> list[_Slice]:
        slices: list[_Slice] = []
        for group in self.param_groups:
            for param in group["params"]:
                if param.requires_grad:
                    slices.extend(self._slices_of(param, group))
        if not slices:
            raise ValueError(f"{type(self).__name__} has no parameter with requires_grad=True to train")
        return slices

    def _slices_of(self, param: Tensor, group: dict[str, Any]) -> Iterator[_Slice]:
        # The tiling depends on the shape only, so the buffers' views line up with the parameter's.
        buffers = self._buffers(param, group)
        return (
            _Slice(param[index] if index else param, group,
                   {key: buffer[index] if index else buffer for key, buffer in buffers.items()}, param, index)
            for index in _bounded_indices(param.shape, self.max_chunk_numel)
        )

    def _buffers(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """The state tensors of ``param`` (shaped like it) that the slices carry, by state key."""
        return {}

    def _state_buffer(self, param: Tensor, key: str) -> Tensor:
        """``self.state[param][key]``, allocated as zeros on first use."""
        state = self.state[param]
        if key not in state:
            state[key] = torch.zeros_like(param, memory_format=torch.preserve_format)
        return state[key]

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
            # With an exchange the check waits for the exchanged losses: every process then sees the same
            # non-finite loss and stops at the same step, instead of one leaving the others waiting.
            if not math.isfinite(loss_plus) and self.exchange is None:
                raise NonFiniteLossError(direction.seed, index, loss_plus, loss_minus)
            self._perturb(direction, -2 * self.eps)
            applied = -self.eps
            loss_minus = _loss_value(closure())
            if not math.isfinite(loss_minus) and self.exchange is None:
                raise NonFiniteLossError(direction.seed, index, loss_plus, loss_minus)
            measured = True
        finally:
            if applied and (restore or not measured):
                self._perturb(direction, -applied)
        return loss_plus, loss_minus

    def _measure(self, closure: Closure, directions: list[_Direction], restore_last: bool) -> list[tuple[float, float]]:
        """(loss+, loss-) for each direction, the parameters restored between them; the last one leaves
        them at ``p - eps*z`` unless ``restore_last`` (see ``_two_point_losses``)."""
        last = len(directions) - 1
        return [
            self._two_point_losses(closure, direction, index, restore=restore_last or index != last)
            for index, direction in enumerate(directions)
        ]

    @staticmethod
    def _perturb(direction: _Direction, scale: float) -> None:
        for bucket, z in direction.buckets():
            z.add_to(_params(bucket), scale)

    def _update(self, slices: list[_Slice], directions: list[_Direction], grads: list[float]) -> None:
        """Apply ``p <- p - lr * (mean_i(g_i z_i) + wd * p)``, through the momentum buffer if any.

        The parameters arrive at ``p - eps*z`` of the last direction (see ``_two_point_losses``); its
        ``+eps*z`` restore rides along with its update. Decay scales the pending ``-eps*z`` too, so the
        restore is scaled alike: ``(p - eps z)(1 - lr wd) + eps (1 - lr wd) z = p (1 - lr wd)``.
        """
        for piece in slices:
            if "momentum_buffer" in piece.buffers:
                piece.buffers["momentum_buffer"].mul_(piece.group["momentum"])
            if piece.group["weight_decay"] > 0:
                piece.param.mul_(1 - piece.group["lr"] * piece.group["weight_decay"])
        for index, (direction, grad) in enumerate(zip(directions, grads, strict=True)):
            weight = grad / len(directions)
            pending_restore = self.eps if index == len(directions) - 1 else 0.0
            for bucket, z in direction.buckets():
                group = bucket[0].group
                restore = pending_restore * (1 - group["lr"] * group["weight_decay"])
                if "momentum_buffer" in bucket[0].buffers:
                    z.add_to([piece.buffers["momentum_buffer"] for piece in bucket], weight)
                    if restore:
                        z.add_to(_params(bucket), restore)
                else:
                    z.add_to(_params(bucket), restore - group["lr"] * weight)
        for piece in slices:
            if "momentum_buffer" in piece.buffers:
                piece.param.add_(piece.buffers["momentum_buffer"], alpha=-piece.group["lr"])

    def _projected_grads(self, measurements: list[tuple[float, float]]) -> list[float]:
        return [(plus - minus) / (2 * self.eps) for plus, minus in measurements]


def _no_forward() -> float:
    """The closure of a replayed step: its losses are known already, only its passes over z are wanted."""
    return 0.0


def _shared_lr(groups: Iterable[dict[str, Any]], rate: Callable[[dict[str, Any]], float]) -> float | None:
    """The learning rate every group's update applies (`rate` of each group), None when they differ."""
    rates = {rate(group) for group in groups}
    return rates.pop() if len(rates) == 1 else None


def _step_stats(
    measurements: list[tuple[float, float]], grads: list[float], directions: list[_Direction], forward_passes: int,
    step: int, lr: float | None,
) -> ZOStepStats:
    losses_plus = [plus for plus, _ in measurements]
    losses_minus = [minus for _, minus in measurements]
    return ZOStepStats(
        loss_plus=math.fsum(losses_plus) / len(losses_plus),
        loss_minus=math.fsum(losses_minus) / len(losses_minus),
        projected_grad=math.fsum(grads) / len(grads),
        losses_plus=losses_plus,
        losses_minus=losses_minus,
        projected_grads=grads,
        seeds=[direction.seed for direction in directions],
        forward_passes=forward_passes,
        step=step,
        lr=lr,
    )


class ZerothOrderSGD(_ZerothOrderOptimizer):
    """MeZO: zeroth-order SGD with the random-seed trick (Malladi et al. 2023, Algorithm 1).

    Each :meth:`step` runs ``2 * n_perturbations`` forward passes through ``closure`` and no backward
    pass. Per perturbation it draws a seed from the optimiser's own seed generator (a CPU generator
    seeded with ``seed`` and saved by :meth:`state_dict`, so a resumed run draws the same seeds),
    perturbs the trainable parameters in place by ``+eps*z`` and ``-2*eps*z``, restores them, and
    computes the projected gradient ``g = (loss+ - loss-) / (2 eps)`` in double precision. The update
    averages over perturbations (n-SPSA) and uses decoupled weight decay::

        p <- p - lr * (mean_i(g_i * z_i) + weight_decay * p)

    All ``g_i`` are measured at the same point; the update is applied afterwards, one bucket of parameter
    slices and one perturbation at a time, regenerating each ``z_i`` from its seed.

    Reproducibility contract: the trainable parameters, in param-group order, are cut into slices: a
    parameter with more than ``max_chunk_numel`` elements is tiled along its first dimension (recursively
    for rows over the bound). Consecutive slices of one group, device and dtype are packed into buckets of
    at most ``max_chunk_numel`` elements. z for a seed is, bucket by bucket, one flat ``torch.randn`` of
    the bucket's size, dtype and device drawn from a ``torch.Generator`` on that device seeded with the
    seed, split in order into the slices' shapes (the Gaussian default; :class:`LowRank` and
    :class:`Sparse` state their own draws on the same buckets and generators). This bounds the transient
    memory of a pass to ``max_chunk_numel`` elements, and moves each bucket with one draw and one
    ``foreach`` call. A step is
    a pure function of the parameters, the closure and the seeds: the global RNG is never touched. Given
    the step's projected gradients, the closure is not needed either: :meth:`replay` repeats the step
    without a forward pass, to the bit.

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
        n_perturbations: number of perturbations N averaged per step, or a schedule: a function of the
            number of steps taken so far (:attr:`steps_taken`, kept by :meth:`state_dict`) that returns
            N, such as :class:`LinearSchedule`.
        seed: seeds the generator of per-perturbation seeds.
        max_chunk_numel: largest number of elements of z drawn at once.
        cache_z: keep each perturbation's z from its first pass for the later passes instead of
            regenerating it: faster for small trainable sets such as LoRA adapters, at a memory cost of
            N times the trainable parameters during the step. Results are bitwise identical.
        perturbation: the distribution of z: :class:`Gaussian` (MeZO's, the default), :class:`LowRank`
            (LOZO) or :class:`Sparse`. Each has E[vec(z) vec(z)ᵀ] = I, so the estimate's mean and the
            meaning of lr and eps are the same; each is regenerated from the seed alone, so replay and
            resume work alike (the state dict records the distribution and refuses another one).
        exchange: called once a step, after the losses are measured and before the update, with the step's
            seeds and this process's (loss+, loss-) per direction; returns those the update uses. Data-parallel
            training (:mod:`zoft.distributed`) gathers every rank's measurements here, so that all ranks apply
            the same update. Non-finite losses are then checked after the exchange.

    The closure must be deterministic between its two calls (MeZO turns dropout off: call
    ``model.eval()``), and is called under ``torch.no_grad()``. Gradient accumulation is the caller's
    business and needs nothing from the optimiser: a closure that averages the loss over several
    micro-batches (weighted by their sizes) sees the same perturbation for all of them, which makes the
    step one on their union.

    Non-finite losses: if the closure returns NaN or infinity (or raises), the parameters are restored
    at once (up to float rounding, as at the end of every perturbation) and no update is applied; a
    non-finite loss then raises :class:`NonFiniteLossError` (a ``FloatingPointError``), so a training
    loop cannot miss divergence. The step's seeds stay drawn, and the step is not counted as taken.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        n_perturbations: PerturbationCount = 1,
        seed: int = 0,
        max_chunk_numel: int = DEFAULT_MAX_CHUNK_NUMEL,
        cache_z: bool = False,
        perturbation: Perturbation = DEFAULT_PERTURBATION,
        exchange: Exchange | None = None,
    ) -> None:
        _check_hyperparameters(lr=lr, weight_decay=weight_decay, momentum=momentum)
        super().__init__(
            params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum},
            eps=eps, n_perturbations=n_perturbations, seed=seed, max_chunk_numel=max_chunk_numel, cache_z=cache_z,
            perturbation=perturbation,
        )
        self.exchange = exchange

    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Closure | None = None, full_closure: Closure | None = None
    ) -> ZOStepStats:
        """Estimate the gradient from ``2 * n_perturbations`` calls of ``closure`` and update.

        ``full_closure`` is never called: it is accepted so that every zeroth-order optimiser steps alike
        (see :class:`~zoft.optim.ZerothOrderSVRG`, which calls it on its snapshot steps).
        """
        if closure is None:
            raise TypeError(
                "ZerothOrderSGD.step needs a closure that returns the loss, e.g. "
                "opt.step(lambda: model(**batch).loss): it evaluates the loss at perturbed parameters"
            )
        slices = self._trainable_slices()
        directions = self._draw_directions(slices)
        measurements = self._measure(closure, directions, restore_last=False)
        if self.exchange is not None:
            measurements = self._exchanged(directions, measurements)
        grads = self._projected_grads(measurements)
        self._update(slices, directions, grads)
        self.steps_taken += 1
        return _step_stats(measurements, grads, directions, forward_passes=2 * len(directions),
                           step=self.steps_taken, lr=_shared_lr(self.param_groups, lambda group: group["lr"]))

    @torch.no_grad()
    def replay(self, seeds: Sequence[int], projected_grads: Sequence[float]) -> None:
        """Apply a step that :meth:`step` took, from its ``seeds`` and ``projected_grads`` (its stats'),
        at the groups' current ``lr``, without a closure: no forward pass.

        It runs step's own passes in step's order (``+eps*z``, ``-2*eps*z``, the restores and the fused
        update) with the losses left out, because the parameters after a step carry the rounding of those
        passes, not only the update: from the same parameters and momentum buffers, on the same device,
        the result is the very tensors step left, to the bit. A run's trainable tensors are therefore a
        function of its starting point and its steps' seeds, projected gradients and learning rates.
        """
        if len(seeds) != len(projected_grads) or not seeds:
            raise ValueError(f"a step has one projected gradient per seed, at least one: got {len(seeds)} seeds "
                             f"and {len(projected_grads)} projected gradients")
        slices = self._trainable_slices()
        buckets = _buckets(slices, self.max_chunk_numel)
        directions = [_Direction(seed, buckets, self._normal_source, self.cache_z, self.perturbation)
                      for seed in seeds]
        self._measure(_no_forward, directions, restore_last=False)
        self._update(slices, directions, list(projected_grads))
        self.steps_taken += 1

    def _exchanged(self, directions: list[_Direction], measurements: list[tuple[float, float]]
                   ) -> list[tuple[float, float]]:
        """The measurements the exchange returns, checked for finiteness. The parameters wait at ``p - eps*z`` of
        the last direction (see ``_two_point_losses``): a failed exchange or a non-finite loss restores them."""
        assert self.exchange is not None
        try:
            shared = self.exchange([direction.seed for direction in directions], measurements)
            for index, (plus, minus) in enumerate(shared):
                if not (math.isfinite(plus) and math.isfinite(minus)):
                    raise NonFiniteLossError(directions[index].seed, index, plus, minus)
        except BaseException:
            self._perturb(directions[-1], self.eps)
            raise
        return shared

    def _buffers(self, param: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        if group["momentum"] == 0:
            return {}
        return {"momentum_buffer": self._state_buffer(param, "momentum_buffer")}


_HYPERPARAMETER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (lambda value: value >= 0, ">= 0"),
    "lr_full": (lambda value: value is None or value >= 0, ">= 0 (or None)"),
    "eps": (lambda value: value > 0, "> 0"),
    "weight_decay": (lambda value: value >= 0, ">= 0"),
    "momentum": (lambda value: 0 <= value < 1, "in [0, 1)"),
    "n_perturbations": (lambda value: value >= 1, ">= 1"),
    "max_chunk_numel": (lambda value: value >= 1, ">= 1"),
    "q": (lambda value: value >= 1, ">= 1"),
}


def _check_hyperparameters(**values: Any) -> None:
    for name, value in values.items():
        valid, rule = _HYPERPARAMETER_RULES[name]
        if not valid(value):
            raise ValueError(f"{name} must be {rule}, got {value}")

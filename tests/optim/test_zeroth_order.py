"""Tests of ZerothOrderSGD (MeZO) on tiny tensors and models: estimator, update, seeds, state, options."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

from zoft import trajectory
from zoft.optim import (
    Gaussian,
    LowRank,
    NonFiniteLossError,
    Perturbation,
    Sparse,
    ZerothOrderSGD,
    ZerothOrderSVRG,
    ZOStepStats,
    decay_param_groups,
)

FLOAT32_ULP = torch.finfo(torch.float32).eps
# The perturbation distributions (section 12); the tests of resume and of the estimator run on each.
DISTRIBUTIONS = [Gaussian(), LowRank(rank=2), Sparse(density=0.5)]
DISTRIBUTION_IDS = ["gaussian", "lowrank", "sparse"]


def replay_z(params: list[Tensor], seed: int) -> list[Tensor]:
    """z for a seed, rebuilt from the documented contract with an independent generator, for parameters of
    one group and dtype that fit one bucket: one flat draw, split into the parameters' shapes."""
    generator = torch.Generator().manual_seed(seed)
    flat = torch.randn(sum(p.numel() for p in params), generator=generator, dtype=params[0].dtype)
    return [z.view(p.shape) for z, p in zip(flat.split([p.numel() for p in params]), params, strict=True)]


def snapshot(params: list[Tensor]) -> list[Tensor]:
    return [p.detach().clone() for p in params]


def assert_within_ulps(actual: Tensor, expected: Tensor, ulps: int = 4) -> None:
    # In-place +eps z, -2 eps z, +eps z restores a parameter up to rounding, never bitwise.
    torch.testing.assert_close(actual, expected, rtol=ulps * FLOAT32_ULP, atol=1e-8)


def cosine(a: Tensor, b: Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


class Quadratic:
    """f(x) = 0.5 (x - a)^T A (x - a), with A symmetric positive definite."""

    def __init__(self, dim: int = 20, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        root = torch.randn(dim, dim, generator=generator)
        self.matrix = root @ root.T / dim + torch.eye(dim)
        self.centre = torch.randn(dim, generator=generator)
        self.x = nn.Parameter(torch.randn(dim, generator=generator))

    def loss(self) -> Tensor:
        offset = self.x - self.centre
        return 0.5 * offset @ self.matrix @ offset

    def gradient(self) -> Tensor:
        return self.matrix @ (self.x.detach() - self.centre)


def separable_data(n: int = 64, dim: int = 6, seed: int = 0) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, dim, generator=generator)
    labels = (inputs @ torch.randn(dim, generator=generator) > 0).long()
    return inputs, labels


def tiny_mlp(seed: int = 0, dim: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2))


def classification_loss(model: nn.Module, inputs: Tensor, labels: Tensor) -> Callable[[], Tensor]:
    return lambda: nn.functional.cross_entropy(model(inputs), labels)


# 1. The estimator is unbiased with the right sign and scale, and concentrates with more samples.


def test_mean_update_converges_to_the_true_gradient() -> None:
    quadratic = Quadratic()
    start = snapshot([quadratic.x])[0]
    true_gradient = quadratic.gradient()
    # lr = 1 and a reset after each step make the update itself, -(g * z), the sample: this catches a z
    # in the update that differs from the perturbation's (the mean would tend to 0, cosine ~ 0), a wrong
    # sign (cosine ~ -1) and a wrong scale such as a missing /2 (norm ratio ~ 2). The central difference
    # is exact on a quadratic, so the mean's only error is sampling noise, ~ sqrt((dim + 1) / n).
    optimizer = ZerothOrderSGD([quadratic.x], lr=1.0, eps=1e-3, seed=0)
    samples = []
    for _ in range(4000):
        optimizer.step(quadratic.loss)
        samples.append(start - quadratic.x.detach())
        with torch.no_grad():
            quadratic.x.copy_(start)
    samples = torch.stack(samples)

    few, many = samples[:10].mean(0), samples.mean(0)
    assert cosine(many, true_gradient) > 0.95
    assert cosine(few, true_gradient) < 0.8
    assert many.norm() / true_gradient.norm() == pytest.approx(1.0, abs=0.15)


# 2. lr = 0 restores the parameters; a step is a pure function of the seed.


def test_zero_lr_restores_parameters_and_same_seed_gives_identical_steps() -> None:
    results = []
    for _ in range(2):
        model = tiny_mlp()
        start = snapshot(list(model.parameters()))
        inputs, labels = separable_data()
        optimizer = ZerothOrderSGD(model.parameters(), lr=0.0, eps=1e-3, seed=7)
        stats = optimizer.step(classification_loss(model, inputs, labels))
        assert stats.projected_grad != 0.0
        for param, before in zip(model.parameters(), start, strict=True):
            assert_within_ulps(param.detach(), before)
        optimizer.param_groups[0]["lr"] = 1e-2
        optimizer.step(classification_loss(model, inputs, labels))
        results.append(snapshot(list(model.parameters())))
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_steps_do_not_touch_the_global_rng() -> None:
    model = tiny_mlp()
    inputs, labels = separable_data()
    optimizer = ZerothOrderSGD(model.parameters(), lr=1e-2, seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    optimizer.step(classification_loss(model, inputs, labels))
    assert torch.equal(torch.rand(3), expected)


# 3. The update uses the perturbation's z, as the seed's contract describes.


def test_update_replays_the_recorded_seed() -> None:
    model = tiny_mlp()
    params = list(model.parameters())
    start = snapshot(params)
    inputs, labels = separable_data()
    lr = 1e-2
    optimizer = ZerothOrderSGD(params, lr=lr, eps=1e-3, seed=3)
    stats = optimizer.step(classification_loss(model, inputs, labels))

    assert stats.forward_passes == 2
    assert stats.projected_grad == pytest.approx((stats.loss_plus - stats.loss_minus) / 2e-3)
    for param, before, z in zip(params, start, replay_z(params, stats.seeds[0]), strict=True):
        assert_within_ulps(param.detach(), before.add(z, alpha=-lr * stats.projected_grad))


def test_loss_plus_is_measured_at_plus_eps_z() -> None:
    quadratic = Quadratic(dim=5)
    start = snapshot([quadratic.x])[0]
    eps = 1e-2
    stats = ZerothOrderSGD([quadratic.x], lr=0.0, eps=eps, seed=1).step(quadratic.loss)
    (z,) = replay_z([quadratic.x], stats.seeds[0])

    def loss_at(x: Tensor) -> float:
        offset = x - quadratic.centre
        return float(0.5 * offset @ quadratic.matrix @ offset)

    assert stats.loss_plus == pytest.approx(loss_at(start + eps * z), rel=1e-5)
    assert stats.loss_minus == pytest.approx(loss_at(start - eps * z), rel=1e-5)


# 4. Weight decay: only the groups that ask for it, and decoupled.


def test_decay_param_groups_split_by_name_and_dimension() -> None:
    model = nn.ModuleDict(
        {
            "dense": nn.Linear(4, 4),
            "LayerNorm": nn.LayerNorm(4),
            "ln_1": nn.LayerNorm(4),  # GPT-2 style: only the 1-D rule catches it
            "frozen": nn.Linear(4, 4),
        }
    )
    model["frozen"].requires_grad_(False)
    decayed, exempt = decay_param_groups(model.named_parameters(), weight_decay=0.1)
    assert decayed["weight_decay"] == 0.1
    assert exempt["weight_decay"] == 0.0
    assert decayed["params"] == [model["dense"].weight]
    assert exempt["params"] == [
        model["dense"].bias,
        model["LayerNorm"].weight,
        model["LayerNorm"].bias,
        model["ln_1"].weight,
        model["ln_1"].bias,
    ]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_weight_decay_shrinks_exactly_the_decayed_matrices(momentum: float) -> None:
    lr, weight_decay = 0.1, 0.5

    def run(decay: float) -> list[Tensor]:
        model = tiny_mlp()
        groups = decay_param_groups(model.named_parameters(), weight_decay=decay)
        optimizer = ZerothOrderSGD(groups, lr=lr, momentum=momentum, seed=0)
        stats = optimizer.step(lambda: 1.0)  # a constant loss: g = 0, only decay can move anything
        assert stats.projected_grad == 0.0
        return [p.detach().clone() for group in groups for p in group["params"]]

    model = tiny_mlp()
    start = [p for group in decay_param_groups(model.named_parameters(), 0.0) for p in group["params"]]
    without_decay, with_decay = run(0.0), run(weight_decay)
    n_decayed = 2  # the two Linear weights; biases and LayerNorm parameters are exempt
    for index, (plain, decayed, before) in enumerate(zip(without_decay, with_decay, start, strict=True)):
        assert_within_ulps(plain, before.detach())
        if index < n_decayed:  # the restore of the last perturbation rides with the update: ulps, not bits
            assert_within_ulps(decayed, plain * (1 - lr * weight_decay))
        else:
            assert torch.equal(decayed, plain)


# 5. n-SPSA averages single estimates; accumulation is the closure's business.


def test_two_perturbations_average_two_single_estimates() -> None:
    model = tiny_mlp()
    params = list(model.parameters())
    start = snapshot(params)
    inputs, labels = separable_data()
    closure = classification_loss(model, inputs, labels)
    lr = 1e-2
    stats = ZerothOrderSGD(params, lr=lr, n_perturbations=2, seed=5).step(closure)
    assert stats.forward_passes == 4
    assert len(set(stats.seeds)) == 2

    updated = snapshot(params)
    with torch.no_grad():
        for param, before in zip(params, start, strict=True):
            param.copy_(before)
    single = ZerothOrderSGD(params, lr=0.0, n_perturbations=1, seed=5)
    singles = [single.step(closure) for _ in range(2)]
    assert [s.seeds[0] for s in singles] == stats.seeds
    assert [s.projected_grad for s in singles] == pytest.approx(stats.projected_grads, rel=1e-4)
    assert stats.projected_grad == pytest.approx(sum(stats.projected_grads) / 2)

    first, second = (replay_z(params, seed) for seed in stats.seeds)
    g1, g2 = stats.projected_grads
    for after, before, z1, z2 in zip(updated, start, first, second, strict=True):
        assert_within_ulps(after, before - lr * (g1 * z1 + g2 * z2) / 2)


def test_closure_averaging_micro_batches_equals_a_step_on_their_union() -> None:
    inputs, labels = separable_data(n=48)
    split = 16  # unequal halves, so an unweighted mean of the two losses would differ

    def union_loss(model: nn.Module) -> Callable[[], Tensor]:
        return classification_loss(model, inputs, labels)

    def accumulated_loss(model: nn.Module) -> Callable[[], Tensor]:
        def closure() -> Tensor:
            head = nn.functional.cross_entropy(model(inputs[:split]), labels[:split])
            tail = nn.functional.cross_entropy(model(inputs[split:]), labels[split:])
            return (head * split + tail * (len(labels) - split)) / len(labels)

        return closure

    results = []
    for make_closure in (union_loss, accumulated_loss):
        model = tiny_mlp()
        optimizer = ZerothOrderSGD(model.parameters(), lr=1e-2, seed=11)
        stats = [optimizer.step(make_closure(model)) for _ in range(3)]
        results.append((stats, snapshot(list(model.parameters()))))
    (union_stats, union_params), (accumulated_stats, accumulated_params) = results
    for union, accumulated in zip(union_stats, accumulated_stats, strict=True):
        assert accumulated.seeds == union.seeds
        assert accumulated.projected_grad == pytest.approx(union.projected_grad, rel=1e-3, abs=1e-3)
    # float32 losses agree to ~1e-7, which 1 / (2 eps) amplifies in g; a different z would move the
    # parameters by ~lr * g ~ 1e-3.
    for union, accumulated in zip(union_params, accumulated_params, strict=True):
        torch.testing.assert_close(accumulated, union, rtol=1e-4, atol=1e-5)


# 6. Chunked z for tensors over max_chunk_numel.


def test_large_tensors_draw_z_in_bounded_deterministic_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = nn.Parameter(torch.randn(10, 4))  # 40 elements: slices of 3 rows (12 elements), then 1 row
    long_rows = nn.Parameter(torch.randn(2, 20))  # a row over the bound: each row split into 12 + 8
    vector = nn.Parameter(torch.randn(30))  # 12 + 12 + 6
    params = [matrix, long_rows, vector]
    start = snapshot(params)
    target = [torch.randn(p.shape) for p in params]

    def loss() -> Tensor:
        return sum(((p - t) ** 2).sum() for p, t in zip(params, target, strict=True))

    drawn_sizes = []
    original_normal = torch.Tensor.normal_

    def recording_normal(tensor: Tensor, *args, **kwargs) -> Tensor:
        drawn_sizes.append(tensor.numel())
        return original_normal(tensor, *args, **kwargs)

    optimizer = ZerothOrderSGD(params, lr=0.0, max_chunk_numel=12, seed=2)
    monkeypatch.setattr(torch.Tensor, "normal_", recording_normal)
    stats = optimizer.step(loss)
    monkeypatch.undo()
    assert max(drawn_sizes) == 12
    for param, before in zip(params, start, strict=True):
        assert_within_ulps(param.detach(), before)

    lr = 1e-3
    optimizer.param_groups[0]["lr"] = lr
    stats = optimizer.step(loss)
    generator = torch.Generator().manual_seed(stats.seeds[0])

    def draw(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator)

    expected_z = [
        torch.cat([draw(3, 4), draw(3, 4), draw(3, 4), draw(1, 4)]),
        torch.stack([torch.cat([draw(12), draw(8)]), torch.cat([draw(12), draw(8)])]),
        torch.cat([draw(12), draw(12), draw(6)]),
    ]
    for param, before, z in zip(params, start, expected_z, strict=True):
        assert_within_ulps(param.detach(), before.add(z, alpha=-lr * stats.projected_grad))


def test_small_tensors_of_one_group_share_a_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = {"a": 3, "b": 4, "c": 5, "d": 2}  # max 10: a+b, then c; d is in another group
    params = {name: nn.Parameter(torch.randn(size)) for name, size in sizes.items()}
    start = snapshot(list(params.values()))
    groups = [{"params": [params["a"], params["b"], params["c"]]}, {"params": [params["d"]], "weight_decay": 0.5}]
    drawn_sizes = []
    original_normal = torch.Tensor.normal_

    def recording_normal(tensor: Tensor, *args, **kwargs) -> Tensor:
        drawn_sizes.append(tensor.numel())
        return original_normal(tensor, *args, **kwargs)

    lr = 1e-2
    optimizer = ZerothOrderSGD(groups, lr=lr, max_chunk_numel=10, seed=6)
    monkeypatch.setattr(torch.Tensor, "normal_", recording_normal)
    stats = optimizer.step(lambda: sum((p**2).sum() for p in params.values()))
    monkeypatch.undo()

    assert drawn_sizes == [7, 5, 2] * 3  # +eps, -2 eps, and the update pass
    generator = torch.Generator().manual_seed(stats.seeds[0])
    first, second, third = (torch.randn(n, generator=generator) for n in (7, 5, 2))
    expected_z = [first[:3], first[3:], second, third]
    step = lr * stats.projected_grad
    for param, before, z, decay in zip(params.values(), start, expected_z, (0, 0, 0, 0.5), strict=True):
        assert_within_ulps(param.detach(), before * (1 - lr * decay) - step * z)


# 7. cache_z changes speed and memory, never results.


def test_cached_z_gives_bitwise_identical_results() -> None:
    results = []
    for cache_z in (False, True):
        model = tiny_mlp()
        inputs, labels = separable_data()
        groups = decay_param_groups(model.named_parameters(), weight_decay=0.1)
        optimizer = ZerothOrderSGD(
            groups, lr=1e-2, momentum=0.5, n_perturbations=2, max_chunk_numel=10, cache_z=cache_z, seed=4
        )
        stats = [optimizer.step(classification_loss(model, inputs, labels)) for _ in range(3)]
        results.append((stats, snapshot(list(model.parameters()))))
    (plain_stats, plain_params), (cached_stats, cached_params) = results
    assert cached_stats == plain_stats
    assert all(torch.equal(a, b) for a, b in zip(plain_params, cached_params, strict=True))


# 8. It trains.


def test_a_short_run_fits_a_tiny_classifier() -> None:
    model = tiny_mlp()
    inputs, labels = separable_data(n=128)
    closure = classification_loss(model, inputs, labels)
    groups = decay_param_groups(model.named_parameters(), weight_decay=0.01)
    optimizer = ZerothOrderSGD(groups, lr=0.05, eps=1e-3, seed=0)
    with torch.no_grad():
        initial = float(closure())
        accuracy_before = float((model(inputs).argmax(1) == labels).float().mean())
    for _ in range(300):
        optimizer.step(closure)
    with torch.no_grad():
        final = float(closure())
        accuracy_after = float((model(inputs).argmax(1) == labels).float().mean())
    assert final < 0.5 * initial
    assert accuracy_after > max(0.9, accuracy_before)


# 9. Non-finite losses, resume, momentum.


@pytest.mark.parametrize("bad_call", [0, 1], ids=["loss_plus", "loss_minus"])
def test_non_finite_loss_restores_parameters_and_raises(bad_call: int) -> None:
    model = tiny_mlp()
    params = list(model.parameters())
    start = snapshot(params)
    inputs, labels = separable_data()
    finite = classification_loss(model, inputs, labels)
    calls = []

    def closure() -> Tensor:
        calls.append(None)
        return torch.tensor(math.nan) if len(calls) == bad_call + 1 else finite()

    optimizer = ZerothOrderSGD(params, lr=1.0, momentum=0.9, seed=0)
    with pytest.raises(FloatingPointError, match="non-finite") as caught:
        optimizer.step(closure)
    assert isinstance(caught.value, NonFiniteLossError)
    assert len(calls) == bad_call + 1
    for param, before in zip(params, start, strict=True):
        assert_within_ulps(param.detach(), before)
        assert torch.equal(optimizer.state[param]["momentum_buffer"], torch.zeros_like(param))


def test_closure_exception_restores_parameters() -> None:
    quadratic = Quadratic(dim=4)
    start = snapshot([quadratic.x])[0]
    calls = []

    def closure() -> Tensor:
        calls.append(None)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return quadratic.loss()

    with pytest.raises(RuntimeError, match="out of memory"):
        ZerothOrderSGD([quadratic.x], lr=1.0, seed=0).step(closure)
    assert_within_ulps(quadratic.x.detach(), start)


@pytest.mark.parametrize("perturbation", DISTRIBUTIONS, ids=DISTRIBUTION_IDS)
def test_state_dict_round_trip_resumes_identically(perturbation: Perturbation) -> None:
    inputs, labels = separable_data()

    def fresh(seed: int) -> tuple[nn.Module, ZerothOrderSGD]:
        model = tiny_mlp()
        groups = decay_param_groups(model.named_parameters(), weight_decay=0.1)
        return model, ZerothOrderSGD(groups, lr=1e-2, momentum=0.9, n_perturbations=2, seed=seed,
                                     perturbation=perturbation)

    model, optimizer = fresh(seed=0)
    for _ in range(3):
        optimizer.step(classification_loss(model, inputs, labels))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    continued = [optimizer.step(classification_loss(model, inputs, labels)) for _ in range(2)]

    resumed_model, resumed_optimizer = fresh(seed=99)  # a different seed: the checkpoint must win
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_optimizer.load_state_dict(checkpoint["optimizer"])
    resumed = [resumed_optimizer.step(classification_loss(resumed_model, inputs, labels)) for _ in range(2)]

    assert resumed == continued
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_momentum_accumulates_decoupled_from_weight_decay() -> None:
    quadratic = Quadratic(dim=6)
    x = quadratic.x
    lr, beta, weight_decay = 1e-2, 0.9, 0.1
    optimizer = ZerothOrderSGD([x], lr=lr, momentum=beta, weight_decay=weight_decay, seed=0)
    start = snapshot([x])[0]
    first = optimizer.step(quadratic.loss)
    middle = snapshot([x])[0]
    second = optimizer.step(quadratic.loss)

    (z1,) = replay_z([x], first.seeds[0])
    (z2,) = replay_z([x], second.seeds[0])
    m1 = first.projected_grad * z1
    m2 = beta * m1 + second.projected_grad * z2
    torch.testing.assert_close(optimizer.state[x]["momentum_buffer"], m2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(middle, start - lr * (m1 + weight_decay * start), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.detach(), middle - lr * (m2 + weight_decay * middle), rtol=1e-6, atol=1e-6)


def test_no_momentum_allocates_no_buffer() -> None:
    quadratic = Quadratic(dim=4)
    optimizer = ZerothOrderSGD([quadratic.x], lr=1e-2, seed=0)
    optimizer.step(quadratic.loss)
    assert len(optimizer.state) == 0


# 10. Schedulers and per-group learning rates.


def test_lambda_lr_scheduler_drives_the_step_size() -> None:
    quadratic = Quadratic(dim=5)
    x = quadratic.x
    optimizer = ZerothOrderSGD([x], lr=1e-2, seed=0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: [0.0, 0.5][min(step, 1)])
    start = snapshot([x])[0]
    optimizer.step(quadratic.loss)
    scheduler.step()
    assert_within_ulps(x.detach(), start)  # lr 0 in the first step

    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)
    stats = optimizer.step(quadratic.loss)
    (z,) = replay_z([x], stats.seeds[0])
    assert_within_ulps(x.detach(), start.add(z, alpha=-5e-3 * stats.projected_grad))


def test_each_group_uses_its_own_learning_rate() -> None:
    frozen_by_lr = nn.Parameter(torch.randn(3))
    trained = nn.Parameter(torch.randn(4))
    params = [frozen_by_lr, trained]
    start = snapshot(params)
    optimizer = ZerothOrderSGD([{"params": [frozen_by_lr], "lr": 0.0}, {"params": [trained]}], lr=0.1, seed=0)
    stats = optimizer.step(lambda: (frozen_by_lr.sum() + trained.sum()) ** 2)
    _, z = replay_z(params, stats.seeds[0])
    assert_within_ulps(frozen_by_lr.detach(), start[0])
    assert_within_ulps(trained.detach(), start[1].add(z, alpha=-0.1 * stats.projected_grad))


# Contracts at the edges.


def test_step_without_closure_is_refused() -> None:
    optimizer = ZerothOrderSGD([nn.Parameter(torch.zeros(2))])
    with pytest.raises(TypeError, match="closure"):
        optimizer.step()


def test_parameters_without_grad_are_left_alone() -> None:
    trained, frozen = nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(3), requires_grad=False)
    start = frozen.detach().clone()
    optimizer = ZerothOrderSGD([trained, frozen], lr=0.1, seed=0)
    optimizer.step(lambda: (trained - frozen).square().sum())
    assert torch.equal(frozen, start)
    frozen_only = ZerothOrderSGD([frozen])
    with pytest.raises(ValueError, match="requires_grad"):
        frozen_only.step(lambda: frozen.sum())


def test_half_precision_parameters_get_half_precision_z() -> None:
    # z is drawn in bfloat16, not drawn in float32 and cast: the two differ in a few elements in a hundred,
    # which the first perturbation shows exactly when x starts at 0 and eps is a power of two (x + eps z is
    # then eps z with no rounding).
    x = nn.Parameter(torch.zeros(1000, dtype=torch.bfloat16))
    target = torch.randn(1000)
    eps = 2.0**-6
    perturbed: list[Tensor] = []

    def loss() -> Tensor:
        perturbed.append(x.detach().clone())
        return (x.float() - target).square().sum()

    stats = ZerothOrderSGD([x], lr=1e-4, eps=eps, seed=0).step(loss)
    (z,) = replay_z([x], stats.seeds[0])
    cast = torch.randn(1000, generator=torch.Generator().manual_seed(stats.seeds[0])).to(torch.bfloat16)
    assert z.dtype == x.dtype == torch.bfloat16 and not torch.equal(z, cast)
    assert torch.equal(perturbed[0], eps * z)
    assert torch.equal(perturbed[1], -eps * z)


def test_stats_are_plain_python_numbers() -> None:
    quadratic = Quadratic(dim=3)
    stats = ZerothOrderSGD([quadratic.x], n_perturbations=3, seed=0).step(quadratic.loss)
    assert isinstance(stats, ZOStepStats)
    assert all(type(value) is float for value in [stats.loss_plus, stats.loss_minus, stats.projected_grad])
    assert all(type(seed) is int for seed in stats.seeds)
    assert stats.forward_passes == 6
    assert (stats.step, stats.lr) == (1, 1e-4) and type(stats.lr) is float
    assert len(stats.losses_plus) == len(stats.losses_minus) == len(stats.projected_grads) == 3
    assert stats.loss == pytest.approx((stats.loss_plus + stats.loss_minus) / 2)


def test_full_closure_is_accepted_and_never_called() -> None:
    # One stepping interface for both estimators: SPSA takes the large-batch closure and ignores it.
    quadratic, twin = Quadratic(dim=4), Quadratic(dim=4)

    def never() -> Tensor:
        raise AssertionError("ZerothOrderSGD called full_closure")

    stats = ZerothOrderSGD([quadratic.x], lr=0.1, seed=3).step(quadratic.loss, full_closure=never)
    plain = ZerothOrderSGD([twin.x], lr=0.1, seed=3).step(twin.loss)
    assert stats == plain
    assert torch.equal(quadratic.x, twin.x)


def test_the_record_is_the_loss_and_the_two_point_means() -> None:
    quadratic = Quadratic(dim=3)
    stats = ZerothOrderSGD([quadratic.x], n_perturbations=3, seed=0).step(quadratic.loss)
    assert stats.record() == {"loss": stats.loss, "loss_plus": stats.loss_plus, "loss_minus": stats.loss_minus,
                              "projected_grad": stats.projected_grad}
    # The very float the method used to log by recomputing it.
    assert stats.record()["loss"] == (stats.loss_plus + stats.loss_minus) / 2


# 9. A step is rebuilt from its seeds and projected gradients alone (zoft replay).


@pytest.mark.parametrize("cache_z", [False, True], ids=["regenerated-z", "cached-z"])
def test_replay_rebuilds_the_steps_bit_for_bit_without_a_forward(cache_z: bool) -> None:
    """Momentum, weight decay (two groups), n-SPSA growing per step, several buckets, a changing lr."""
    model = tiny_mlp()
    start = snapshot(list(model.parameters()))
    inputs, labels = separable_data()
    optimizer = ZerothOrderSGD(decay_param_groups(model.named_parameters(), weight_decay=0.1), lr=1e-2,
                               momentum=0.5, n_perturbations=lambda step: 1 + step % 3, max_chunk_numel=10,
                               cache_z=cache_z, seed=4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    logged = []
    for _ in range(4):
        lr = optimizer.param_groups[0]["lr"]
        stats = optimizer.step(classification_loss(model, inputs, labels))
        logged.append((lr, stats.seeds, stats.projected_grads))
        scheduler.step()
    assert [len(seeds) for _, seeds, _ in logged] == [1, 2, 3, 1]

    rebuilt = tiny_mlp()
    with torch.no_grad():
        for param, value in zip(rebuilt.parameters(), start, strict=True):
            param.copy_(value)
    replayer = ZerothOrderSGD(decay_param_groups(rebuilt.named_parameters(), weight_decay=0.1), lr=1e-2,
                              momentum=0.5, max_chunk_numel=10, seed=99)
    for lr, seeds, grads in logged:
        for group in replayer.param_groups:
            group["lr"] = lr
        replayer.replay(seeds, grads)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), rebuilt.parameters(), strict=True))
    assert replayer.steps_taken == 4
    trained, replayed = optimizer.state_dict()["state"], replayer.state_dict()["state"]
    assert all(torch.equal(trained[k]["momentum_buffer"], replayed[k]["momentum_buffer"]) for k in trained)


def test_the_optimiser_alone_keeps_a_trajectory_that_replays_bit_for_bit(tmp_path) -> None:
    """Each step's stats are its trajectory record (zoft.trajectory's), numbered on across a state-dict resume
    and carrying the scheduled lr the update applied: written, read back and replayed, they give the tensors."""
    model = tiny_mlp()
    start = snapshot(list(model.parameters()))
    inputs, labels = separable_data()

    def optimizer_of(module: nn.Module, seed: int) -> ZerothOrderSGD:
        groups = decay_param_groups(module.named_parameters(), weight_decay=0.1)
        return ZerothOrderSGD(groups, lr=1e-2, momentum=0.5, n_perturbations=2, seed=seed)

    path = tmp_path / "trajectory.bin"
    trajectory.create(path, device="cpu")
    optimizer = optimizer_of(model, seed=4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    for _ in range(3):
        trajectory.append(path, optimizer.step(classification_loss(model, inputs, labels)).trajectory_record())
        scheduler.step()
    resumed = optimizer_of(model, seed=99)
    resumed.load_state_dict(optimizer.state_dict())
    trajectory.append(path, resumed.step(classification_loss(model, inputs, labels)).trajectory_record())

    records = trajectory.read(path).records
    assert [record.step for record in records] == [1, 2, 3, 4]
    assert [record.lr for record in records] == [1e-2 * (1 / (1 + step)) for step in range(4)]
    assert all(len(record.seeds) == len(record.projected_grads) == 2 for record in records)
    rebuilt = tiny_mlp(seed=1)
    with torch.no_grad():
        for param, value in zip(rebuilt.parameters(), start, strict=True):
            param.copy_(value)
    replayer = optimizer_of(rebuilt, seed=0)
    for record in records:
        for group in replayer.param_groups:
            group["lr"] = record.lr
        replayer.replay(record.seeds, record.projected_grads)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), rebuilt.parameters(), strict=True))


def test_a_trajectory_record_needs_one_lr_and_an_spsa_step() -> None:
    model = tiny_mlp()
    inputs, labels = separable_data()
    head, body = list(model[-1].parameters()), [p for layer in model[:-1] for p in layer.parameters()]
    stats = ZerothOrderSGD([{"params": body}, {"params": head, "lr": 1e-2}], lr=1e-3).step(
        classification_loss(model, inputs, labels))
    assert stats.lr is None
    with pytest.raises(ValueError, match="different learning rates"):
        stats.trajectory_record()
    svrg = ZerothOrderSVRG(model.parameters(), lr=1e-3, q=2)
    snapshot_step = svrg.step(full_closure=classification_loss(model, inputs, labels))
    assert (snapshot_step.step, snapshot_step.lr) == (1, 1e-3)
    with pytest.raises(TypeError, match="full-batch estimate"):
        snapshot_step.trajectory_record()


def test_replay_needs_one_projected_gradient_per_seed() -> None:
    optimizer = ZerothOrderSGD(tiny_mlp().parameters())
    with pytest.raises(ValueError, match="one projected gradient per seed"):
        optimizer.replay([1, 2], [0.5])


# 12. Low-rank (LOZO) and sparse perturbations: the estimator each claims, z rebuilt from the documented
# contract by an implementation of its own.


def low_rank_z(params: list[Tensor], seed: int, rank: int) -> list[Tensor]:
    """LowRank's z for a seed, from its contract: walking the parameters in order on one generator, a matrix
    (m, n) draws randn(rank (m + n)), U its first m rank numbers as (m, rank), V the rest as (n, rank), and
    z = U V^T / sqrt(rank); any other parameter draws randn of its shape (each within one slice here)."""
    generator = torch.Generator().manual_seed(seed)
    zs = []
    for param in params:
        if param.dim() != 2:
            zs.append(torch.randn(param.shape, generator=generator))
            continue
        rows, columns = param.shape
        drawn = torch.randn(rank * (rows + columns), generator=generator)
        left, right = drawn[: rows * rank].reshape(rows, rank), drawn[rows * rank :].reshape(columns, rank)
        zs.append(left @ right.T / math.sqrt(rank))
    return zs


def sparse_z(params: list[Tensor], seed: int, density: float) -> list[Tensor]:
    """Sparse's z for a seed, from its contract, for parameters that fit one bucket: the bucket's N numbers in
    blocks of 64 (the last shorter), randperm over the blocks, the first k = max(1, round(density blocks))
    chosen, then randn(k, 64) for them, scaled by 1 / sqrt(k / blocks); the rest 0."""
    generator = torch.Generator().manual_seed(seed)
    numel = sum(p.numel() for p in params)
    blocks = -(-numel // 64)
    chosen = min(blocks, max(1, round(density * blocks)))
    picked = torch.randperm(blocks, generator=generator)[:chosen]
    values = torch.randn(chosen, 64, generator=generator) / math.sqrt(chosen / blocks)
    flat = torch.zeros(blocks, 64)
    for row, block in enumerate(picked.tolist()):
        flat[block] = values[row]
    flat = flat.flatten()[:numel]
    return [z.view(p.shape) for z, p in zip(flat.split([p.numel() for p in params]), params, strict=True)]


class MatrixQuadratic:
    """f(X) = 0.5 vec(X - C)^T A vec(X - C) over a matrix X, so that a low-rank z has a matrix to act on."""

    def __init__(self, rows: int = 12, columns: int = 10, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        dim = rows * columns
        root = torch.randn(dim, dim, generator=generator)
        self.matrix = root @ root.T / dim + torch.eye(dim)
        self.centre = torch.randn(dim, generator=generator)
        self.x = nn.Parameter(torch.randn(rows, columns, generator=generator))

    def loss(self) -> Tensor:
        offset = self.x.flatten() - self.centre
        return 0.5 * offset @ self.matrix @ offset

    def gradient(self) -> Tensor:
        return (self.matrix @ (self.x.detach().flatten() - self.centre)).view(self.x.shape)


@pytest.mark.parametrize("perturbation", DISTRIBUTIONS, ids=DISTRIBUTION_IDS)
def test_each_distribution_gives_the_gradient_in_the_mean(perturbation: Perturbation) -> None:
    """E[vec(z) vec(z)^T] = I for each: the mean update -(g z) tends to the true gradient with its scale.
    A low-rank z without its 1 / sqrt(rank), or a sparse one without its 1 / sqrt(p), would give a mean
    rank or p times the gradient (norm ratio 2 or 0.5 here), which the ratio check refuses."""
    quadratic = MatrixQuadratic()
    start = quadratic.x.detach().clone()
    true_gradient = quadratic.gradient().flatten()
    optimizer = ZerothOrderSGD([quadratic.x], lr=1.0, eps=1e-3, seed=0, perturbation=perturbation)
    total = torch.zeros_like(start)
    samples = 3000
    for _ in range(samples):
        optimizer.step(quadratic.loss)
        total += start - quadratic.x.detach()
        with torch.no_grad():
            quadratic.x.copy_(start)
    mean = (total / samples).flatten()
    assert cosine(mean, true_gradient) > 0.95
    assert mean.norm() / true_gradient.norm() == pytest.approx(1.0, abs=0.15)


def test_low_rank_update_is_minus_lr_g_z_with_z_rebuilt_from_the_seed() -> None:
    """Matrices tiled into blocks of rows and a matrix whose rows are over the bound (cut within a row) draw
    their factors once for the whole matrix: z is the contract's, whatever max_chunk_numel is."""
    params = [nn.Parameter(torch.randn(10, 4)), nn.Parameter(torch.randn(6)), nn.Parameter(torch.randn(2, 20))]
    start = snapshot(params)
    target = [torch.randn(p.shape) for p in params]
    lr = 1e-3
    for max_chunk_numel in (10**6, 12):
        with torch.no_grad():
            for param, value in zip(params, start, strict=True):
                param.copy_(value)
        optimizer = ZerothOrderSGD(params, lr=lr, eps=1e-3, seed=5, max_chunk_numel=max_chunk_numel,
                                   perturbation=LowRank(rank=3))
        stats = optimizer.step(lambda: sum(((p - t) ** 2).sum() for p, t in zip(params, target, strict=True)))
        for param, before, z in zip(params, start, low_rank_z(params, stats.seeds[0], rank=3), strict=True):
            assert_within_ulps(param.detach(), before.add(z, alpha=-lr * stats.projected_grad), ulps=16)


def test_a_low_rank_update_has_rank_at_most_r_and_a_gaussian_one_full_rank() -> None:
    ranks = {}
    for name, perturbation in (("lowrank", LowRank(rank=3)), ("gaussian", Gaussian())):
        matrix = nn.Parameter(torch.randn(20, 16))
        start = matrix.detach().clone()
        target = torch.randn(20, 16)
        optimizer = ZerothOrderSGD([matrix], lr=1.0, seed=1, perturbation=perturbation)
        optimizer.step(lambda: ((matrix - target) ** 2).sum())  # noqa: B023 - called at once, in this iteration
        # The perturb-and-restore passes leave float32 rounding (~1e-7) in every entry, full rank; the
        # update's own singular values are ~1e5 times larger.
        ranks[name] = int(torch.linalg.matrix_rank((matrix.detach() - start).double(), rtol=1e-4))
    assert ranks == {"lowrank": 3, "gaussian": 16}


def test_the_sparse_mask_has_its_density_and_is_the_same_in_every_pass_and_in_the_replay() -> None:
    """A bucket of 1,320 numbers (a 32 x 40 matrix and a 40 vector): 21 blocks, the last of 40 numbers;
    density 0.25 chooses round(5.25) = 5 of them. Parameters start at 0, so each pass's displacement is
    exactly eps z (or its multiple) where z is not 0 and exactly 0 elsewhere."""
    params = [nn.Parameter(torch.zeros(32, 40)), nn.Parameter(torch.zeros(40))]
    target = [torch.randn(p.shape) for p in params]
    masks: list[list[Tensor]] = []

    def loss() -> Tensor:
        masks.append([p.detach() != 0 for p in params])  # at +eps z, then at -eps z
        return sum(((p - t) ** 2).sum() for p, t in zip(params, target, strict=True))

    lr, eps = 1e-2, 1e-3
    optimizer = ZerothOrderSGD(params, lr=lr, eps=eps, seed=3, perturbation=Sparse(density=0.25))
    stats = optimizer.step(loss)
    masks.append([p.detach() != 0 for p in params])  # the update, -lr g z
    expected = sparse_z(params, stats.seeds[0], density=0.25)
    for param, z in zip(params, expected, strict=True):
        assert_within_ulps(param.detach(), -lr * stats.projected_grad * z)

    replayed = [nn.Parameter(torch.zeros(p.shape)) for p in params]
    ZerothOrderSGD(replayed, lr=lr, eps=eps, seed=99, perturbation=Sparse(density=0.25)).replay(
        stats.seeds, stats.projected_grads)
    masks.append([p.detach() != 0 for p in replayed])
    assert all(torch.equal(a, b) for a, b in zip(params, replayed, strict=True))

    expected_mask = [z != 0 for z in expected]
    chosen = sum(int(mask.sum()) for mask in expected_mask)
    assert len(masks) == 4
    for mask in masks:
        assert all(torch.equal(a, b) for a, b in zip(mask, expected_mask, strict=True))
    # 5 whole blocks of 64, or 4 and the 40-number last block.
    assert chosen in (5 * 64, 4 * 64 + 40)
    block_of = torch.arange(1320) // 64
    hit_blocks = torch.unique(block_of[torch.cat([m.flatten() for m in expected_mask])])
    assert len(hit_blocks) == 5


@pytest.mark.parametrize("perturbation", DISTRIBUTIONS[1:], ids=DISTRIBUTION_IDS[1:])
def test_cache_and_replay_reproduce_each_distribution_bit_for_bit(perturbation: Perturbation) -> None:
    """Momentum, decay groups, two perturbations a step, several buckets (max_chunk_numel 10 cuts the first
    layer's rows apart): z cached or regenerated gives the same run, and replay rebuilds it."""
    inputs, labels = separable_data()
    start = snapshot(list(tiny_mlp().parameters()))

    def optimizer_of(model: nn.Module, cache_z: bool, seed: int) -> ZerothOrderSGD:
        return ZerothOrderSGD(decay_param_groups(model.named_parameters(), weight_decay=0.1), lr=1e-2,
                              momentum=0.5, n_perturbations=2, max_chunk_numel=10, cache_z=cache_z, seed=seed,
                              perturbation=perturbation)

    runs = []
    for cache_z in (False, True):
        model = tiny_mlp()
        optimizer = optimizer_of(model, cache_z, seed=4)
        stats = [optimizer.step(classification_loss(model, inputs, labels)) for _ in range(3)]
        runs.append((stats, snapshot(list(model.parameters()))))
    (plain_stats, plain_params), (cached_stats, cached_params) = runs
    assert cached_stats == plain_stats
    assert all(torch.equal(a, b) for a, b in zip(plain_params, cached_params, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(plain_params, start, strict=True))

    rebuilt = tiny_mlp()
    replayer = optimizer_of(rebuilt, cache_z=False, seed=99)
    for step in plain_stats:
        replayer.replay(step.seeds, step.projected_grads)
    assert all(torch.equal(a, b) for a, b in zip(plain_params, rebuilt.parameters(), strict=True))


def test_a_state_dict_of_another_distribution_is_refused_and_an_old_one_is_gaussian() -> None:
    model = tiny_mlp()
    low_rank = ZerothOrderSGD(model.parameters(), perturbation=LowRank(rank=2)).state_dict()
    for other in (Gaussian(), LowRank(rank=3), Sparse()):
        with pytest.raises(ValueError, match=re.escape("drawing {'kind': 'lowrank', 'rank': 2}")):
            ZerothOrderSGD(model.parameters(), perturbation=other).load_state_dict(low_rank)
    old = ZerothOrderSGD(model.parameters()).state_dict()
    del old["zeroth_order_perturbation"]  # a checkpoint written before the distributions existed
    ZerothOrderSGD(model.parameters()).load_state_dict(old)
    with pytest.raises(ValueError, match=re.escape("drawing {'kind': 'gaussian'}")):
        ZerothOrderSGD(model.parameters(), perturbation=Sparse()).load_state_dict(old)


def test_distribution_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="rank >= 1"):
        LowRank(rank=0)
    for density in (0.0, 1.5):
        with pytest.raises(ValueError, match="density in"):
            Sparse(density=density)


@pytest.mark.parametrize("perturbation", DISTRIBUTIONS[1:], ids=DISTRIBUTION_IDS[1:])
def test_svrg_draws_the_same_distribution(perturbation: Perturbation) -> None:
    """The snapshot step moves by -lr_full g z with the distribution's z (rebuilt from its contract)."""
    matrix = nn.Parameter(torch.zeros(8, 16))
    start = matrix.detach().clone()
    target = torch.randn(8, 16)
    lr_full = 1e-2
    optimizer = ZerothOrderSVRG([matrix], lr=1e-3, lr_full=lr_full, q=2, seed=2, perturbation=perturbation)
    stats = optimizer.step(full_closure=lambda: ((matrix - target) ** 2).sum())
    if isinstance(perturbation, LowRank):
        (z,) = low_rank_z([matrix], stats.seeds[0], rank=perturbation.rank)
    else:
        (z,) = sparse_z([matrix], stats.seeds[0], density=perturbation.density)
    assert_within_ulps(matrix.detach(), start - lr_full * stats.projected_grad * z, ulps=16)

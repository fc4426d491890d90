"""Method mezo with MeZO-SVRG and n-SPSA schedules: through the real CLI on a tiny BERT and a slice of MRPC,
and its estimator side (large batches, records) on a tiny random classifier."""

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from zoft.cli import main
from zoft.config import MethodConfig
from zoft.methods import build_method
from zoft.methods.zeroth_order import SnapshotBatches, ZerothOrder, build_zo_optimizer, mean_loss, trajectory_refusal
from zoft.optim import Gaussian, LinearSchedule, LowRank, Sparse, ZerothOrderSGD, ZerothOrderSVRG, decay_param_groups

TIMING_FIELDS = {"step_seconds", "train_seconds", "eval_seconds"}


def without_timings(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def train_records(run):
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "train"]


# tiny_run_args: 6 steps of one micro-batch of 8 examples, from 64 training examples (8 micro-batches).
@pytest.mark.parametrize(
    ("svrg_batches", "forwards", "examples_seen"),
    [
        # snapshots at steps 1 and 4: the step's micro-batch and 2 more from the stream, 2 forwards each;
        # the other steps 4 forwards (the minibatch at the parameters and at the snapshot, each at +-eps z)
        (3, [6, 10, 14, 20, 24, 28], [24, 32, 40, 64, 72, 80]),
        # the whole split, 8 micro-batches in order, outside the stream: 16 forwards a snapshot
        (0, [16, 20, 24, 40, 44, 48], [8, 16, 24, 32, 40, 48]),
    ],
    ids=["stream", "whole-split"],
)
def test_svrg_counts_the_snapshot_forwards_as_training(tmp_path, tiny_run_args, svrg_batches, forwards,
                                                        examples_seen):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--method", "mezo", "--zo-estimator", "svrg", "--svrg-every", "3",
                 "--svrg-batches", str(svrg_batches), "--svrg-lr-full", "1e-3", *tiny_run_args]) == 0
    records = train_records(run)
    assert [r["forward_passes"] for r in records] == forwards
    assert [r["examples_seen"] for r in records] == examples_seen
    assert [r["snapshot"] for r in records] == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert all("projected_grad_at_snapshot" in r for r in records if not r["snapshot"])
    assert all(r["backward_passes"] == 0 and r["loss"] == pytest.approx((r["loss_plus"] + r["loss_minus"]) / 2)
               for r in records)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["passes"] == {"forward": forwards[-1], "backward": 0}


def test_the_perturbation_schedule_sets_the_forwards_per_step(tmp_path, tiny_run_args):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--method", "mezo", "--n-perturbations-final", "3",
                 *tiny_run_args]) == 0
    # N grows linearly from 1 to 3 over the 6 steps: 1, 1, 2, 2, 3, 3 directions, 2 forwards each.
    assert [r["forward_passes"] for r in train_records(run)] == [2, 4, 8, 12, 18, 24]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--method", "lora", "--zo-estimator", "svrg"], "mezo only"),
        (["--method", "mezo", "--zo-estimator", "svrg", "--momentum", "0.9"], "no momentum"),
        (["--method", "mezo", "--zo-estimator", "svrg", "--grad-accumulation", "4", "--svrg-batches", "2"],
         "at least"),
        (["--method", "mezo", "--svrg-every", "0"], "svrg_every"),
        (["--method", "mezo", "--n-perturbations-final", "0"], "n_perturbations_final"),
        (["--method", "lora", "--perturbation", "lowrank"], "'perturbation': lowrank applies to method mezo"),
    ],
)
def test_svrg_settings_that_cannot_work_are_refused(tmp_path, capsys, options, message):
    assert main(["train", "--out", str(tmp_path / "run"), *options]) != 0
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("params", ["lora", "all"])
def test_cache_z_runs_are_the_same_runs_bit_for_bit(tmp_path, tiny_run_args, params):
    runs = {}
    for cache in ("false", "true"):
        runs[cache] = tmp_path / cache
        assert main(["train", "--out", str(runs[cache]), "--method", "mezo", "--params", params, "--n-perturbations",
                     "2", "--cache-z", cache, *tiny_run_args]) == 0
    plain, cached = (load_file(runs[c] / "checkpoint" / "trainable.safetensors") for c in ("false", "true"))
    assert plain.keys() == cached.keys() and all(torch.equal(plain[name], cached[name]) for name in plain)
    assert without_timings(train_records(runs["false"])) == without_timings(train_records(runs["true"]))


# The estimator side on a tiny random classifier (no data): what is drawn when, and what is logged.


def zo_config(**overrides) -> MethodConfig:
    settings = {"method": "mezo", "lr": 1e-3, "weight_decay": 0.0, "schedule": "constant", "warmup_ratio": 0.0,
                **overrides}
    return MethodConfig(**settings)


class CountingDraws:
    """draw_batches for the method: records each request and serves fresh random micro-batches."""

    def __init__(self, make_batch) -> None:
        self.make_batch = make_batch
        self.requests: list[int | None] = []

    def __call__(self, count: int | None) -> list[dict[str, torch.Tensor]]:
        self.requests.append(count)
        return [self.make_batch(4, 100 + i) for i in range(3 if count is None else count)]


def test_svrg_draws_its_large_batch_only_on_snapshot_steps(tiny_classifier, make_batch) -> None:
    draws = CountingDraws(make_batch)
    method = ZerothOrder(tiny_classifier, zo_config(zo_estimator="svrg", svrg_every=2, svrg_batches=3),
                         total_steps=5, seed=0, draw_batches=draws)
    drawn_by_step = []
    for step in range(5):
        record = method.step([make_batch(4, step)])
        drawn_by_step.append(list(draws.requests))
        draws.requests.clear()
        assert record["snapshot"] == (1.0 if step % 2 == 0 else 0.0)
        assert ("projected_grad_at_snapshot" in record) == (step % 2 == 1)
    # Snapshots at steps 0, 2 and 4: the step's micro-batch and 2 more, drawn once for the 2N forwards.
    assert drawn_by_step == [[2], [], [2], [], [2]]


def test_svrg_with_size_0_draws_the_whole_split(tiny_classifier, make_batch) -> None:
    draws = CountingDraws(make_batch)
    method = ZerothOrder(tiny_classifier, zo_config(zo_estimator="svrg", svrg_every=3, svrg_batches=0),
                         total_steps=3, seed=0, draw_batches=draws)
    method.step([make_batch(4, 0)])
    assert draws.requests == [None]


def test_snapshot_batches_are_drawn_at_the_first_call_and_kept() -> None:
    draws = []

    def draw(count):
        draws.append(count)
        return [{"labels": torch.zeros(2)} for _ in range(count)]

    class Model(torch.nn.Module):
        def forward(self, labels):
            return SimpleNamespace(loss=labels.sum() + len(labels))

    closure = SnapshotBatches(3, draw).loss(Model(), [{"labels": torch.zeros(4)}])
    assert draws == []  # building the closure draws nothing
    assert float(closure()) == float(closure()) == 4 * 4 / 8 + 2 * 2 * 2 / 8
    assert draws == [2]


def test_spsa_never_draws_and_logs_the_optimisers_record(tiny_classifier, make_batch) -> None:
    draws = CountingDraws(make_batch)
    method = ZerothOrder(tiny_classifier, zo_config(n_perturbations=2), total_steps=3, seed=0, draw_batches=draws)
    record = method.step([make_batch(4, 0), make_batch(2, 1)])
    assert draws.requests == []
    assert list(record) == ["loss", "loss_plus", "loss_minus", "projected_grad", "lr", "backward_passes"]
    assert record["loss"] == (record["loss_plus"] + record["loss_minus"]) / 2
    assert isinstance(method.optimizer, ZerothOrderSGD)


def test_svrg_without_a_way_to_draw_is_refused_at_its_snapshot(tiny_classifier, make_batch) -> None:
    method = ZerothOrder(tiny_classifier, zo_config(zo_estimator="svrg", svrg_every=2, svrg_batches=3),
                         total_steps=3, seed=0)
    before = {name: p.detach().clone() for name, p in tiny_classifier.named_parameters()}
    with pytest.raises(ValueError, match="draw training batches"):
        method.step([make_batch(4, 0)])
    assert all(torch.equal(before[name], p) for name, p in tiny_classifier.named_parameters())


def test_build_zo_optimizer_follows_the_estimator_and_the_schedule() -> None:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(3))]}]
    svrg = build_zo_optimizer(groups, zo_config(zo_estimator="svrg", svrg_every=7, svrg_lr_full=0.5), 10, seed=0)
    assert isinstance(svrg, ZerothOrderSVRG) and svrg.q == 7 and svrg.param_groups[0]["lr_full"] == 0.5
    spsa = build_zo_optimizer(groups, zo_config(n_perturbations=1, n_perturbations_final=4), 10, seed=0)
    assert isinstance(spsa, ZerothOrderSGD) and spsa.n_perturbations == LinearSchedule(1, 4, 10)
    assert spsa.perturbation == Gaussian()
    low_rank = build_zo_optimizer(groups, zo_config(perturbation="lowrank", perturbation_rank=3), 10, seed=0)
    assert low_rank.perturbation == LowRank(rank=3)
    sparse = build_zo_optimizer(groups, zo_config(zo_estimator="svrg", perturbation="sparse",
                                                  perturbation_density=0.1), 10, seed=0)
    assert isinstance(sparse, ZerothOrderSVRG) and sparse.perturbation == Sparse(density=0.1)


# The exact head (head_grad=exact): the classifier trained by AdamW on the features of the perturbed forwards.


def test_the_exact_head_is_left_out_of_the_zeroth_order_groups(tiny_classifier) -> None:
    method = ZerothOrder(tiny_classifier, zo_config(head_grad="exact"), total_steps=1, seed=0)
    zo_params = [p for group in method.optimizer.param_groups for p in group["params"]]
    head = list(tiny_classifier.classifier.parameters())
    assert len(zo_params) == len(list(tiny_classifier.parameters())) - len(head) == len({id(p) for p in zo_params})
    assert not any(p is h for p in zo_params for h in head)


def test_one_exact_head_step_is_adamw_on_the_mean_of_the_perturbed_features(tiny_classifier, make_batch) -> None:
    """The update, worked out here independently: cross-entropy of the head at the mean of the features that
    the forwards at +eps*z and -eps*z fed it, one AdamW step at head_lr; the encoder moves by the ZO estimate."""
    batch = make_batch(8, 0)
    head = tiny_classifier.classifier
    start = copy.deepcopy(head)
    encoder_before = {name: p.detach().clone() for name, p in tiny_classifier.bert.named_parameters()}
    seen: list[torch.Tensor] = []
    head.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    method = ZerothOrder(tiny_classifier, zo_config(head_grad="exact", head_lr=0.01, eps=1e-2), total_steps=1,
                         seed=0)
    record = method.step([batch])

    # the forwards at +eps*z and -eps*z, then the head's own training forward, on their mean
    assert len(seen) == 3
    mean = (seen[0] + seen[1]) / 2
    torch.testing.assert_close(seen[2], mean, rtol=0, atol=1e-7)
    assert not torch.allclose(seen[0], mean, atol=1e-4)  # the features at +eps*z alone would be another update
    expected = copy.deepcopy(start)
    adamw = torch.optim.AdamW(expected.parameters(), lr=0.01, weight_decay=0.0)
    loss = torch.nn.functional.cross_entropy(expected(mean), batch["labels"])
    loss.backward()
    adamw.step()
    assert record["head_loss"] == pytest.approx(float(loss.detach()), rel=1e-6)
    torch.testing.assert_close(head.weight, expected.weight, rtol=0, atol=1e-7)
    torch.testing.assert_close(head.bias, expected.bias, rtol=0, atol=1e-7)
    assert not torch.equal(head.weight, start.weight)
    assert any(not torch.equal(encoder_before[name], p) for name, p in tiny_classifier.bert.named_parameters())


def test_an_exact_head_at_lr_0_stays_bit_for_bit(tiny_classifier, make_batch) -> None:
    head = tiny_classifier.classifier
    start = copy.deepcopy(head)
    method = ZerothOrder(tiny_classifier, zo_config(head_grad="exact", head_lr=0.0), total_steps=2, seed=0)
    for step in range(2):
        method.step([make_batch(8, step)])
    assert torch.equal(head.weight, start.weight) and torch.equal(head.bias, start.bias)


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def test_accumulated_micro_batches_make_the_step_of_their_union(tiny_classifier, make_batch) -> None:
    """The same z (same seed): the losses at +-eps z are the union's, so its projected gradient and update are too;
    weighting the micro-batches equally instead (3 and 1 examples, the 1 of the other class) would not be."""
    with torch.no_grad():
        tiny_classifier.classifier.bias.copy_(torch.tensor([1.0, -1.0]))
    twin = copy.deepcopy(tiny_classifier)
    big, small = make_batch(3, 0), make_batch(1, 1)
    big["labels"], small["labels"] = torch.zeros(3, dtype=torch.long), torch.ones(1, dtype=torch.long)
    union = {key: torch.cat([big[key], small[key]]) for key in big}
    start = trainable(tiny_classifier)
    accumulated = ZerothOrder(tiny_classifier, zo_config(lr=1e-2), total_steps=3, seed=0).step([big, small])
    whole = ZerothOrder(twin, zo_config(lr=1e-2), total_steps=3, seed=0).step([union])
    for key in ("loss_plus", "loss_minus", "loss"):
        assert accumulated[key] == pytest.approx(whole[key], rel=1e-6)
    assert accumulated["projected_grad"] == pytest.approx(whole["projected_grad"], rel=1e-3, abs=1e-3)
    with torch.no_grad():
        tiny_classifier.eval()
        mean_of_means = (tiny_classifier(**big).loss + tiny_classifier(**small).loss) / 2
    assert accumulated["loss"] != pytest.approx(float(mean_of_means), rel=0.1)
    after, twin_after = trainable(tiny_classifier), trainable(twin)
    moved = max(float((after[name] - start[name]).abs().max()) for name in after)
    assert moved > 1e-4
    for name in after:
        torch.testing.assert_close(after[name], twin_after[name], rtol=0, atol=moved * 1e-2)


def test_momentum_from_the_config_drives_the_method_s_updates(tiny_classifier, make_batch) -> None:
    """mezo with momentum 0.9 moves exactly as ZerothOrderSGD(momentum=0.9) on the same parameters and seed, and
    from the second step on not as without momentum (the first step's buffer is its own estimate: the same move,
    up to the rounding of the buffer's path)."""
    models = {name: copy.deepcopy(tiny_classifier) for name in ("method", "optimiser", "none")}
    method = build_method(models["method"], zo_config(momentum=0.9), total_steps=3, seed=0)
    plain = build_method(models["none"], zo_config(), total_steps=3, seed=0)
    groups = decay_param_groups(list(models["optimiser"].named_parameters()), 0.0)
    optimiser = ZerothOrderSGD(groups, lr=1e-3, eps=1e-3, momentum=0.9, seed=0)
    for step in range(3):
        batch = make_batch(4, step)
        method.step([batch])
        plain.step([batch])
        models["optimiser"].eval()
        optimiser.step(lambda batch=batch: mean_loss(models["optimiser"], [batch], [1.0]))
        with_momentum, by_hand, without = (trainable(models[name]) for name in ("method", "optimiser", "none"))
        assert all(torch.equal(with_momentum[name], by_hand[name]) for name in by_hand)
        apart = max(float((with_momentum[name] - without[name]).abs().max()) for name in by_hand)
        assert apart < 1e-6 if step == 0 else apart > 1e-5


def test_the_exact_head_steps_by_adamw_on_the_gradient_at_the_mean_of_the_perturbed_features(
        tiny_classifier, make_batch) -> None:
    """The head's update, rebuilt apart from ExactHead: the features the head read at +eps z and -eps z (a hook
    of the test's own), averaged per micro-batch (told apart by their sizes, 3 and 5), the cross-entropy weighted
    by examples, its gradient by autograd, one AdamW step. AdamW's first moment after one step is (1 - beta1) g:
    the gradient itself, not only the update's signs."""
    head = tiny_classifier.classifier
    before = copy.deepcopy(head)
    seen: list[torch.Tensor] = []
    # the zeroth-order forwards run without autograd; the head's own gradient step after them with it
    head.register_forward_pre_hook(lambda module, args: None if torch.is_grad_enabled()
                                   else seen.append(args[0].detach().clone()))
    method = ZerothOrder(tiny_classifier, zo_config(head_grad="exact", head_lr=0.01, eps=1e-2), total_steps=3, seed=0)
    parts = [make_batch(3, 0), make_batch(5, 1)]
    record = method.step(parts)

    assert [len(f) for f in seen] == [3, 5, 3, 5]  # +eps z, then -eps z, micro-batch by micro-batch
    features = [torch.stack([f for f in seen if len(f) == len(part["labels"])]).mean(0) for part in parts]
    assert not torch.allclose(features[0], seen[0], rtol=0, atol=1e-6)  # the mean is not either perturbed point
    expected = copy.deepcopy(before)
    loss = sum(len(part["labels"]) / 8 * torch.nn.functional.cross_entropy(expected(f), part["labels"])
               for f, part in zip(features, parts, strict=True))
    loss.backward()
    gradients = {name: p.grad.clone() for name, p in expected.named_parameters()}
    torch.optim.AdamW(expected.parameters(), lr=0.01, weight_decay=0.0).step()

    assert record["head_loss"] == pytest.approx(float(loss.detach()), rel=1e-6)
    state = method.exact_head.optimizer.state
    for name, p in head.named_parameters():
        torch.testing.assert_close(state[p]["exp_avg"], 0.1 * gradients[name], rtol=1e-5, atol=1e-9)
        torch.testing.assert_close(p.detach(), dict(expected.named_parameters())[name].detach(), rtol=1e-6,
                                   atol=1e-8)
        assert not torch.equal(p.detach(), dict(before.named_parameters())[name].detach())


@pytest.mark.parametrize(("settings", "reason"), [
    ({"method": "lora"}, "method lora trains by backprop"),
    ({"method": "full"}, "method full trains by backprop"),
    ({"zo_estimator": "svrg"}, "zo_estimator=svrg also steps by its snapshots' full-batch estimates"),
    ({"head_grad": "exact"}, "head_grad=exact trains the head by gradients"),
], ids=["lora", "full", "svrg", "exact-head"])
def test_only_spsa_steps_with_a_zeroth_order_head_make_a_trajectory(settings, reason) -> None:
    # the training loop logs trajectory.bin, and zoft replay rebuilds a run, exactly when this is None
    assert trajectory_refusal(zo_config()) is None
    assert trajectory_refusal(zo_config(n_perturbations=3, momentum=0.9, n_perturbations_final=5)) is None
    assert reason in trajectory_refusal(zo_config(**settings))

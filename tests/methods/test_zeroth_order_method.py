"""Method mezo with MeZO-SVRG and n-SPSA schedules: through the real CLI on a tiny BERT and a slice of MRPC,
and its estimator side (large batches, records) on a tiny random classifier."""

import json
import os
import signal
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from zoft.cli import main
from zoft.config import MethodConfig
from zoft.methods.zeroth_order import SnapshotBatches, ZerothOrder, build_zo_optimizer, trajectory_refusal
from zoft.optim import LinearSchedule, ZerothOrderSGD, ZerothOrderSVRG
from zoft.train import Trainer

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


def test_a_stopped_svrg_run_with_a_schedule_resumes_bit_exactly(tmp_path, tiny_run_args, monkeypatch):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    args = [*tiny_run_args, "--method", "mezo", "--zo-estimator", "svrg", "--svrg-every", "3", "--svrg-batches", "2",
            "--n-perturbations-final", "2", "--checkpoint-every", "0"]
    assert main(["train", "--out", str(straight), *args]) == 0

    original_step = Trainer.train_step

    def press_ctrl_c_at_step_5(self):  # between snapshots: the resumed steps need θ̄, g and the step count
        record = original_step(self)
        if record["step"] == 5:
            os.kill(os.getpid(), signal.SIGINT)
        return record

    monkeypatch.setattr(Trainer, "train_step", press_ctrl_c_at_step_5)
    assert main(["train", "--out", str(stopped), *args]) == 130
    monkeypatch.setattr(Trainer, "train_step", original_step)
    assert main(["train", "--out", str(stopped), "--resume", "--quiet"]) == 0

    assert without_timings(train_records(stopped)) == without_timings(train_records(straight))
    straight_params = load_file(straight / "checkpoint" / "trainable.safetensors")
    stopped_params = load_file(stopped / "checkpoint" / "trainable.safetensors")
    assert all(torch.equal(straight_params[k], stopped_params[k]) for k in straight_params)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--method", "lora", "--zo-estimator", "svrg"], "mezo only"),
        (["--method", "mezo", "--zo-estimator", "svrg", "--momentum", "0.9"], "no momentum"),
        (["--method", "mezo", "--zo-estimator", "svrg", "--grad-accumulation", "4", "--svrg-batches", "2"],
         "at least"),
        (["--method", "mezo", "--svrg-every", "0"], "svrg_every"),
        (["--method", "mezo", "--n-perturbations-final", "0"], "n_perturbations_final"),
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

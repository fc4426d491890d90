"""The linear-probe head initialisation, and MeZO's exact head gradient."""

import json

import pytest
import torch
from safetensors.torch import load_file

from zoft.cli import main
from zoft.probe import L2_GRID, fit_logistic, fit_ridge, score


def test_logistic_fit_acts_on_raw_features_and_separates_the_classes():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 5, generator=generator) * torch.tensor([1.0, 10.0, 0.1, 5.0, 1.0]) + 3.0
    labels = (features[:, 0] - 0.1 * features[:, 1] + 4 * features[:, 2] > 3.0).long()
    weight, bias = fit_logistic(features, labels, num_classes=2, l2=1e-4)
    assert score(weight, bias, features, labels) > 0.97
    strong = fit_logistic(features, labels, num_classes=2, l2=10.0)
    assert strong[0].norm() < weight.norm()  # the penalty shrinks the weights


def test_ridge_recovers_a_linear_function():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(300, 4, generator=generator)
    targets = features @ torch.tensor([1.0, -2.0, 0.5, 0.0]) + 3.0
    weight, bias = fit_ridge(features, targets, l2=1e-8)
    torch.testing.assert_close(weight, torch.tensor([[1.0, -2.0, 0.5, 0.0]]), atol=1e-4, rtol=0)
    torch.testing.assert_close(bias, torch.tensor([3.0]), atol=1e-4, rtol=0)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_probe_sets_the_head_before_training(tmp_path, tiny_run_args):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--method", "mezo", "--pooling", "mean", "--head-init", "linear-probe",
                 *tiny_run_args]) == 0
    summary = json.loads((run / "summary.json").read_text())
    head_init = summary["head_init"]
    assert head_init["l2"] in L2_GRID
    step0 = read_jsonl(run / "metrics.jsonl")[0]
    assert step0["kind"] == "eval" and step0["step"] == 0
    # the head fitted on train features and chosen on validation is what the step-0 evaluation scores
    assert step0["validation/accuracy"] == pytest.approx(head_init["validation_score"], abs=1e-6)


def test_exact_head_gradient_trains_the_head_apart_from_the_zeroth_order_estimate(tmp_path, learning_run_args,
                                                                                   assert_trained):
    """Through the CLI: the head's AdamW state and its moves, the ZO groups without it. That its update is AdamW
    on the perturbed forwards' mean features, and that head_lr 0 freezes it, is worked out in
    tests/methods/test_zeroth_order_method.py."""
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--method", "mezo", "--pooling", "mean", "--head-grad", "exact",
                 "--head-lr", "0.01", "--checkpoint-every", "3", *learning_run_args]) == 0
    records = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    assert all("head_loss" in r for r in records)
    assert all(r["backward_passes"] == 0 and r["forward_passes"] == 2 * r["step"] for r in records)
    assert_trained(run)  # best step 3 (measured), adapters off zero
    state = torch.load(run / "checkpoint" / "state.pt", weights_only=True)
    zo_params = [p for group in state["method"]["optimizer"]["param_groups"] for p in group["params"]]
    trainable = load_file(run / "checkpoint" / "trainable.safetensors")
    assert {"head.weight", "head.bias"} < trainable.keys()
    assert len(zo_params) == len(trainable) - 2 and all("lora_" in name for name in trainable if "head" not in name)
    head_state = state["method"]["head_optimizer"]["state"]
    assert len(head_state) == 2  # the head's weight and bias, moved by AdamW
    assert all(int(s["step"]) == 6 for s in head_state.values())
    # the head of model/ (step 3, the best) is not the head at step 6: it moved (by ZO it would not: not in its groups)
    best_head = load_file(run / "model" / "head.safetensors")
    assert not torch.equal(best_head["weight"], trainable["head.weight"])

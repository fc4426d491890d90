"""Method lora / full (Backprop): one AdamW step over accumulated micro-batches, on a tiny random BERT."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from zoft.config import MethodConfig
from zoft.methods.backprop import Backprop


def method_config(**overrides) -> MethodConfig:
    settings = {"method": "full", "lr": 1e-2, "weight_decay": 0.0, "schedule": "constant", "warmup_ratio": 0.0,
                "max_grad_norm": 1.0, **overrides}
    return MethodConfig(**settings)


def parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_one_step_moves_the_parameters_and_reports_it(tiny_classifier, make_batch) -> None:
    before = parameters(tiny_classifier)
    method = Backprop(tiny_classifier, method_config(), total_steps=10)
    record = method.step([make_batch(4, 0), make_batch(4, 1)])
    assert set(record) == {"loss", "grad_norm", "lr", "backward_passes"}
    assert math.isfinite(record["loss"]) and record["grad_norm"] > 0
    assert record["lr"] == 1e-2 and record["backward_passes"] == 2
    after = parameters(tiny_classifier)
    assert all(not torch.equal(before[name], after[name]) for name in ("classifier.weight", "classifier.bias"))
    assert all(p.grad is None for p in tiny_classifier.parameters())


def test_accumulation_weights_micro_batches_by_their_examples(tiny_classifier, make_batch) -> None:
    # Micro-batches of 3 and 1 examples make the step of their union, one batch of 4: the loss is the mean
    # over the 4 examples, not the mean of the two micro-batches' means, and so is the gradient.
    with torch.no_grad():
        tiny_classifier.classifier.bias.copy_(torch.tensor([1.0, -1.0]))  # class 0 likely: the losses differ
    twin = copy.deepcopy(tiny_classifier)
    big, small = make_batch(3, 0), make_batch(1, 1)
    big["labels"], small["labels"] = torch.zeros(3, dtype=torch.long), torch.ones(1, dtype=torch.long)
    union = {key: torch.cat([big[key], small[key]]) for key in big}
    with torch.no_grad():
        mean_of_means = (tiny_classifier(**big).loss + tiny_classifier(**small).loss) / 2
    accumulated = Backprop(tiny_classifier, method_config(), total_steps=10).step([big, small])
    whole = Backprop(twin, method_config(), total_steps=10).step([union])
    assert accumulated["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert accumulated["loss"] != pytest.approx(float(mean_of_means), rel=0.1)
    assert accumulated["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-5)


# The skipped optimiser step makes torch warn that the scheduler stepped first: that is the point here.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_a_non_finite_loss_skips_the_update(tiny_classifier, make_batch) -> None:
    with torch.no_grad():
        tiny_classifier.classifier.bias.fill_(math.inf)  # logits inf - inf: the loss is NaN
    before = parameters(tiny_classifier)
    method = Backprop(tiny_classifier, method_config(), total_steps=10)
    record = method.step([make_batch(4, 0)])
    assert math.isnan(record["loss"])
    after = parameters(tiny_classifier)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not method.optimizer.state  # AdamW never stepped: no moments were started
    assert all(p.grad is None for p in tiny_classifier.parameters())
    assert method.scheduler.last_epoch == 1  # the schedule still advances with the loop's step count


def gradients_at_the_update(method: Backprop) -> list[dict[str, torch.Tensor]]:
    """The gradients the optimiser holds at each of its steps (after accumulation and clipping), by parameter."""
    seen: list[dict[str, torch.Tensor]] = []
    names = {id(p): name for name, p in method.model.named_parameters()}

    def record(optimizer, args, kwargs) -> None:
        seen.append({names[id(p)]: p.grad.clone() for group in optimizer.param_groups for p in group["params"]})

    method.optimizer.register_step_pre_hook(record)
    return seen


def test_accumulated_micro_batches_step_on_the_gradient_of_their_union(tiny_classifier, make_batch) -> None:
    """Every gradient entry, not only the norm: AdamW's first step is about lr * sign(g), so equal updates alone
    would not show equal gradients."""
    twin = copy.deepcopy(tiny_classifier)
    parts = [make_batch(3, 0), make_batch(1, 1), make_batch(2, 2)]
    union = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    accumulating = Backprop(tiny_classifier, method_config(max_grad_norm=0.0), total_steps=10)
    whole = Backprop(twin, method_config(max_grad_norm=0.0), total_steps=10)
    accumulated_grads, whole_grads = gradients_at_the_update(accumulating), gradients_at_the_update(whole)
    assert accumulating.step(parts)["backward_passes"] == 3
    whole.step([union])
    assert accumulated_grads[0].keys() == whole_grads[0].keys()
    for name, grad in whole_grads[0].items():
        torch.testing.assert_close(accumulated_grads[0][name], grad, rtol=1e-5, atol=1e-7)


def test_the_gradient_is_clipped_to_max_grad_norm_and_its_norm_before_is_logged(tiny_classifier, make_batch) -> None:
    batch = make_batch(4, 0)
    twin = copy.deepcopy(tiny_classifier)
    twin(**batch).loss.backward()
    raw = {name: p.grad.clone() for name, p in twin.named_parameters()}
    norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw.values()])))

    clipped_model, unclipped_model = tiny_classifier, copy.deepcopy(tiny_classifier)
    clipped = Backprop(clipped_model, method_config(max_grad_norm=norm / 4), total_steps=10)
    unclipped = Backprop(unclipped_model, method_config(max_grad_norm=0.0), total_steps=10)
    clipped_grads, unclipped_grads = gradients_at_the_update(clipped), gradients_at_the_update(unclipped)
    assert clipped.step([batch])["grad_norm"] == pytest.approx(norm, rel=1e-5)  # the norm before clipping
    assert unclipped.step([batch])["grad_norm"] == pytest.approx(norm, rel=1e-5)
    for name, grad in raw.items():
        torch.testing.assert_close(clipped_grads[0][name], grad / 4, rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(unclipped_grads[0][name], grad, rtol=1e-5, atol=1e-8)

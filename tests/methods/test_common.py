"""What the methods share (zoft.methods.common): the learning-rate schedule, read from the lr each step logs."""

from __future__ import annotations

import math

import pytest
import torch

from zoft.config import MethodConfig
from zoft.methods import build_method

STEPS, WARMUP_RATIO, LR = 8, 0.25, 1e-2  # 2 warm-up steps


def expected_factor(schedule: str, step: int) -> float:
    """The documented shapes, written out independently of transformers: a linear warm-up from 0 over the
    first steps, then linear decay to 0, a half cosine to 0, or constant. `step` counts from 0."""
    warmup = round(WARMUP_RATIO * STEPS) if schedule != "constant" else 0
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / (STEPS - warmup)
    return {"linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
            "constant_with_warmup": 1.0, "constant": 1.0}[schedule]


@pytest.mark.parametrize("method", ["full", "mezo"])
@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant_with_warmup", "constant"])
def test_each_step_logs_the_scheduled_lr_it_used(tiny_classifier, make_batch, method, schedule) -> None:
    config = MethodConfig(method=method, lr=LR, weight_decay=0.0, schedule=schedule,
                          warmup_ratio=0.0 if schedule == "constant" else WARMUP_RATIO)
    trainer = build_method(tiny_classifier, config, total_steps=STEPS, seed=0)
    start = {name: p.detach().clone() for name, p in tiny_classifier.named_parameters()}
    logged = []
    for step in range(STEPS):
        logged.append(trainer.step([make_batch(4, step)])["lr"])
        if step == 0 and method == "full" and schedule != "constant":  # warm-up starts at lr 0: nothing moved
            assert all(torch.equal(start[name], p) for name, p in tiny_classifier.named_parameters())
    assert logged == pytest.approx([LR * expected_factor(schedule, step) for step in range(STEPS)], rel=1e-6, abs=1e-12)

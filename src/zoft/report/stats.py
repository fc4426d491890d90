"""Measurements derived from a run's records: peak memory, time per step, loss spread, MeZO's projected gradient."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

import numpy as np

from zoft.report.records import Record, RunRecord, last
from zoft.report.text import missing

STABILITY_SHARE = 0.1  # the tail of the run whose loss spread the stability column reports
OUTLIER_FACTOR = 5.0  # |projected grad| above this many times its median counts as an outlier


def peak_memory(run: RunRecord) -> tuple[int | None, str]:
    """(bytes, what was measured): the GPU allocator's peak where there is one, else the training-phase RSS."""
    memory = run.summary.memory if run.summary else {}
    if memory.get("cuda_max_allocated_bytes") is not None:
        return memory["cuda_max_allocated_bytes"], "GPU allocated"
    return memory.get("train_peak_rss_bytes"), "process RSS"


def seconds_per_step(run: RunRecord) -> float | None:
    recorded = run.summary.time.seconds_per_step if run.summary else None
    if recorded is not None or not run.train:
        return recorded
    return last(run.train, "train_seconds") / last(run.train, "step")


def finite(records: Iterable[Record], key: str) -> list[float]:
    return [r[key] for r in records if not missing(r.get(key))]


def loss_spread(run: RunRecord) -> float | None:
    """Standard deviation of the training loss over the last 10% of logged steps (at least two)."""
    tail = run.train[-max(2, math.ceil(STABILITY_SHARE * len(run.train))):]
    losses = finite(tail, "loss")
    return statistics.stdev(losses) if len(losses) >= 2 else None


def mean_loss(records: Sequence[Record]) -> float | None:
    losses = finite(records, "loss")
    return statistics.fmean(losses) if losses else None


def projected_grad_stats(run: RunRecord) -> dict[str, float | None]:
    grads = np.array(finite(run.train, "projected_grad"))
    if grads.size == 0:
        return {"mean": None, "std": None, "mean_abs": None, "outlier_share": None}
    magnitude = np.abs(grads)
    return {"mean": float(grads.mean()), "std": float(grads.std()), "mean_abs": float(magnitude.mean()),
            "outlier_share": float(np.mean(magnitude > OUTLIER_FACTOR * np.median(magnitude)))}


def budget_at(run: RunRecord, record: Record, key: str) -> float | None:
    """A budget (forward_passes, train_seconds) at an evaluation; older runs logged it on the train record only."""
    if key in record:
        return record[key]
    if record["step"] == 0:
        return 0
    return next((r.get(key) for r in run.train if r["step"] == record["step"]), None)


def forwards_to_best(run: RunRecord) -> int | None:
    record = next((r for r in run.evals if r["step"] == run.best.get("step")), None)
    return None if record is None else budget_at(run, record, "forward_passes")


def highest_perturbed_loss(run: RunRecord) -> tuple[float | None, int | None]:
    """The largest of loss+ and loss− over the run and its step: the spikes a MeZO run is known for."""
    candidates = [(r[key], r["step"]) for r in run.train for key in ("loss_plus", "loss_minus")
                  if not missing(r.get(key))]
    return max(candidates, default=(None, None))

"""Where a run's logged records go: the run folder, the console, and any sink a user adds (TensorBoard).

The loop hands each logged record (a training step every ``log_every`` steps, every evaluation, the step that
diverged) to every sink, and the summary to each once at the end. ``metrics.jsonl`` in the run folder stays
the source of truth that resume and the report read; the other sinks are views of the same records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from zoft.console import Console
from zoft.errors import ZoftError
from zoft.runs import RunFolder, Summary


class MetricSink(Protocol):
    def log(self, record: dict[str, Any]) -> None:
        """One logged record: ``kind`` (train or eval), ``step``, and its measurements."""
        ...

    def close(self, summary: Summary) -> None:
        """The run has ended (completed, diverged, interrupted or crashed); `summary` says how."""
        ...


class RunFolderSink:
    """metrics.jsonl, a line per record, and summary.json at the end."""

    def __init__(self, run: RunFolder) -> None:
        self.run = run

    def log(self, record: dict[str, Any]) -> None:
        self.run.append_metrics(record)

    def close(self, summary: Summary) -> None:
        self.run.write_summary(summary)


class ConsoleSink:
    """The evaluations as lines for a person watching (the progress bar follows every step, not only the
    logged ones, so the loop updates it itself), and the outcome at the end."""

    def __init__(self, console: Console, select_key: str, folder: Path) -> None:
        self.console, self.select_key, self.folder = console, select_key, folder

    def log(self, record: dict[str, Any]) -> None:
        if record["kind"] == "eval":
            self.console.evaluation(record, self.select_key)

    def close(self, summary: Summary) -> None:
        self.console.close(summary, self.folder)


class TensorBoardSink:
    """Every number of every record as a TensorBoard scalar: train records under ``train/``, evaluations under
    their split (``validation/accuracy``) and ``eval/`` for the rest; the x axis is the step.

    Needs the optional ``tensorboard`` package. The writer opens at the first record and purges the events
    from that step on, so a resumed run replaces what its first life logged after the checkpoint.
    """

    def __init__(self, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional extra: zoft[tensorboard]
        except ImportError:
            raise ZoftError("--tensorboard needs the tensorboard package: pip install 'zoft[tensorboard]'") from None
        self.folder = folder
        self.open_writer = SummaryWriter
        self.writer: Any = None

    def log(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            self.writer = self.open_writer(str(self.folder), purge_step=record["step"])
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, record["step"])

    def close(self, summary: Summary) -> None:
        if self.writer is not None:
            self.writer.close()


def scalars(record: dict[str, Any]) -> list[tuple[str, float]]:
    """The record's numbers with TensorBoard tags; its kind and step are the axes, not values."""
    group = "train" if record["kind"] == "train" else "eval"
    return [(key if "/" in key else f"{group}/{key}", float(value)) for key, value in record.items()
            if key not in ("kind", "step") and isinstance(value, int | float) and not isinstance(value, bool)]

"""What a person watching a run sees: a progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from zoft.runs import Summary


def _format_metrics(record: dict[str, Any], prefix: str) -> str:
    return ", ".join(
        f"{key.split('/', 1)[1]} {value:.4f}" for key, value in record.items()
        if key.startswith(prefix) and not key.endswith("majority_share")
    )


def format_baseline(baseline: dict[str, Any]) -> str:
    """What a constant prediction scores on test: the majority class, or for regression the mean score
    (whose correlations are undefined, so its mean squared error is shown)."""
    if "share" in baseline:
        values = ", ".join(f"{key} {value:.4f}" for key, value in baseline.items()
                           if isinstance(value, float) and key != "share")
        return f"majority class: {values}"
    return f"constant mean {baseline['mean']:.4f}: mse {baseline['mse']:.4f}"


class Console:
    """Progress output of one run. Plain lines go out every `plain_every` steps when not on a terminal."""

    def __init__(self, stream: TextIO | None = None, progress: bool | None = None, plain_every: int = 50,
                 quiet: bool = False) -> None:
        self.stream = sys.stderr if stream is None else stream  # the stderr of now, not of import time
        self.progress = self.stream.isatty() if progress is None else progress
        self.plain_every = plain_every
        self.quiet = quiet
        self.bar: tqdm | None = None
        self.last_metric = ""

    def print(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    def start(self, lines: list[str], total: int, done: int) -> None:
        for line in lines:
            self.print(line)
        if self.progress and not self.quiet:
            self.bar = tqdm(total=total, initial=done, file=self.stream, unit="step", dynamic_ncols=True)

    def step(self, record: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {record['loss']:.4f}{self.last_metric}", refresh=False)
        elif record["step"] % self.plain_every == 0:
            self.print(f"step {record['step']}: loss {record['loss']:.4f}, lr {record['lr']:.3g}, "
                       f"{record['train_seconds']:.0f} s")

    def evaluation(self, record: dict[str, Any], select_key: str) -> None:
        self.last_metric = f", {select_key} {record[select_key]:.4f}"
        self.print(f"step {record['step']} eval: validation: {_format_metrics(record, 'validation/')}; "
                   f"test: {_format_metrics(record, 'test/')}")

    def warn(self, message: str) -> None:
        self.print(f"warning: {message}")

    def close(self, summary: Summary, folder: Path) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        best = summary.best
        self.print(f"{summary.status}: {summary.steps} steps in {summary.time.wall_seconds:.0f} s")
        if best["step"] is not None:
            self.print(f"best by {summary.select_key} at step {best['step']}: "
                       f"test {_format_metrics(best, 'test/')} ({format_baseline(summary.majority_baseline)})")
        if summary.beats_majority is False:
            self.print("warning: the best checkpoint does not beat the majority-class baseline on test")
        self.print(f"run folder: {folder}")

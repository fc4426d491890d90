"""The report's PNG plots (metric curves, training loss, costs) and the sweep's heat map.

Each plot is a matplotlib Figure of its own, drawn and saved without pyplot, so nothing is left in a global
figure registry and no backend needs choosing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from zoft.report.records import RunRecord
from zoft.report.stats import budget_at, peak_memory, seconds_per_step
from zoft.report.text import PERCENT_METRICS, format_bytes, format_metric, format_seconds, metric_title, missing
from zoft.runs import Status

PLOT_DPI = 120
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # 7 against 8 colours: a (colour, marker) pair repeats after 56 runs
LINESTYLES = ("-", "--", ":", "-.")


def plot_style(index: int) -> dict[str, Any]:
    """Colour, marker and line style of the index-th run: each round of the colours gets the next line style,
    so that runs stay apart in plots whose lines carry no markers (the loss plot)."""
    return {"color": COLORS[index % len(COLORS)], "marker": MARKERS[index % len(MARKERS)],
            "linestyle": LINESTYLES[index // len(COLORS) % len(LINESTYLES)]}


def _axis_unit(largest: float, units: Sequence[tuple[str, float]], at_least: float = 1) -> tuple[str, float]:
    """The largest of `units` (given large to small) in which `largest` reads as at least `at_least`."""
    return next(((name, size) for name, size in units if largest >= at_least * size), units[-1])


def _curve(run: RunRecord, x_key: str, y_key: str) -> list[tuple[float, float, bool]]:
    """(x, y, one class predicted) at each evaluation that has both values."""
    points = [(budget_at(run, r, x_key), r.get(y_key), r.get("test/majority_share") == 1.0) for r in run.evals]
    return [(x, y, one_class) for x, y, one_class in points if x is not None and not missing(y)]


def plot_metric_curves(runs: Sequence[RunRecord], path: Path) -> None:
    metric = runs[0].main_metric
    scale = 100 if metric in PERCENT_METRICS else 1
    longest = max((budget_at(run, r, "train_seconds") or 0 for run in runs for r in run.evals), default=0)
    time_unit, time_size = _axis_unit(longest, [("h", 3600), ("min", 60), ("s", 1)], at_least=3)
    axes_spec = [("step", "training step", 1),
                 ("train_seconds", f"training time ({time_unit}, evaluation excluded)", time_size),
                 ("forward_passes", "forward passes", 1)]
    figure = Figure(figsize=(15, 4.8), layout="constrained")
    axes = figure.subplots(1, 3, sharey=True)
    for ax, (x_key, xlabel, x_size) in zip(axes, axes_spec, strict=True):
        for index, run in enumerate(runs):
            points = _curve(run, x_key, f"test/{metric}")
            if not points:
                continue
            xs, ys, one_class = (np.array(column) for column in zip(*points, strict=True))
            style = plot_style(index)
            ax.plot(xs / x_size, ys * scale, label=run.label, linewidth=1.8, markersize=6, **style)
            ax.plot(xs[one_class] / x_size, ys[one_class] * scale, linestyle="none", markersize=6,
                    markerfacecolor="white", markeredgecolor=style["color"], marker=style["marker"])
        for baseline in sorted({run.baseline for run in runs if not missing(run.baseline)}):
            ax.axhline(baseline * scale, color="0.35", linestyle="--", linewidth=1.2,
                       label=f"majority class ({format_metric(baseline, metric)})")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test {metric_title(metric)}" + (" (%)" if scale == 100 else ""))
    figure.suptitle(f"{runs[0].task}: test {metric_title(metric)} by budget")
    handles, labels = axes[0].get_legend_handles_labels()
    if any(run.one_class_steps for run in runs):
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="0.3"))
        labels.append("hollow: one class predicted for all test examples")
    figure.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 6), frameon=False)
    figure.savefig(path, dpi=PLOT_DPI, bbox_inches="tight")  # long run labels stay inside


def _ema(values: np.ndarray, span: float) -> np.ndarray:
    """Exponential moving average that skips non-finite values (a diverged step logs NaN)."""
    alpha = 2 / (span + 1)
    smoothed, average = np.empty_like(values), math.nan
    for i, value in enumerate(values):
        if math.isfinite(value):
            average = value if math.isnan(average) else alpha * value + (1 - alpha) * average
        smoothed[i] = average
    return smoothed


def plot_loss(runs: Sequence[RunRecord], path: Path) -> None:
    figure = Figure(figsize=(10, 5), layout="constrained")
    ax = figure.subplots()
    for index, run in enumerate(runs):
        if not run.train:
            continue
        style = plot_style(index)
        color = style["color"]
        steps = np.array([r["step"] for r in run.train])
        loss = np.array([r.get("loss", math.nan) for r in run.train], dtype=float)
        span = min(50, max(1, len(loss) / 5))
        if run.is_mezo:
            ax.fill_between(steps, [r.get("loss_minus", math.nan) for r in run.train],
                            [r.get("loss_plus", math.nan) for r in run.train], color=color, alpha=0.15, linewidth=0)
        ax.plot(steps, loss, color=color, alpha=0.3, linewidth=0.8)
        status = "" if run.status == Status.COMPLETED else f" [{run.status}]"
        ax.plot(steps, _ema(loss, span), color=color, linestyle=style["linestyle"], linewidth=2,
                label=run.label + status)
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss")
    band = "; shaded: MeZO's loss+ … loss−" if any(run.is_mezo for run in runs) else ""
    ax.set_title(f"{runs[0].task}: training loss (bold: EMA-smoothed; faint: each logged step{band})")
    ax.grid(alpha=0.3)
    if any(run.train for run in runs):
        ax.legend(frameon=False)
    else:  # runs shorter than one logging interval
        ax.text(0.5, 0.5, "no training step logged", transform=ax.transAxes, ha="center", color="0.4")
    figure.savefig(path, dpi=PLOT_DPI, bbox_inches="tight")  # long run labels stay inside


def plot_costs(runs: Sequence[RunRecord], path: Path) -> None:
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    memory_ax, time_ax = figure.subplots(1, 2)
    memory = [peak_memory(run)[0] for run in runs]
    kinds = " / ".join(sorted({peak_memory(run)[1] for run in runs}))
    _bars(memory_ax, runs, memory, format_bytes, f"peak memory ({kinds})", [("GB", 1e9), ("MB", 1e6)])
    _bars(time_ax, runs, [seconds_per_step(run) for run in runs], format_seconds, "time per training step",
          [("s", 1), ("ms", 1e-3)])
    figure.suptitle(f"{runs[0].task}: cost per method")
    figure.savefig(path, dpi=PLOT_DPI, bbox_inches="tight")  # long run labels stay inside


def _bars(ax: Any, runs: Sequence[RunRecord], values: list[float | None], show: Callable[[float | None], str],
          quantity: str, units: Sequence[tuple[str, float]]) -> None:
    unit, size = _axis_unit(max((v for v in values if not missing(v)), default=0), units)
    heights = [0 if missing(v) else v / size for v in values]
    bars = ax.bar(range(len(runs)), heights, color=[plot_style(i)["color"] for i in range(len(runs))])
    ax.bar_label(bars, [show(v) for v in values], padding=2)
    ax.set_ylabel(f"{quantity} ({unit})")
    ax.margins(y=0.15)
    labels = [run.label for run in runs]
    crowded = sum(map(len, labels)) > 50  # labels side by side would overlap on a 5-inch panel
    ax.set_xticks(range(len(runs)), labels, rotation=25 if crowded else 0, ha="right" if crowded else "center")
    ax.grid(axis="y", alpha=0.3)


PLOTS = {"metrics": plot_metric_curves, "loss": plot_loss, "cost": plot_costs}


def plot_heat_map(scores: np.ndarray, labels: np.ndarray, rows: tuple[str, Sequence[str]],
                  columns: tuple[str, Sequence[str]], quantity: str, title: str, path: Path) -> None:
    """A grid of scores (NaN: no score) coloured by value, each cell written out as `labels` gives it;
    rows and columns are (key, values)."""
    (row_key, row_values), (column_key, column_values) = rows, columns
    figure = Figure(figsize=(1.6 * len(column_values) + 2.5, 1.2 * len(row_values) + 1.8))
    axes = figure.subplots()
    image = axes.imshow(scores, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(column_values)), column_values)
    axes.set_yticks(range(len(row_values)), row_values)
    axes.set_xlabel(column_key)
    axes.set_ylabel(row_key)
    for (i, j), label in np.ndenumerate(labels):
        axes.text(j, i, label, ha="center", va="center", bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0})
    figure.colorbar(image, ax=axes, label=quantity)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=PLOT_DPI)

"""Numbers and Markdown for people: the formatting every report section (and the sweep table) shares."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PERCENT_METRICS = {"accuracy", "f1"}


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def format_metric(value: float | None, metric: str) -> str:
    if missing(value):
        return "n/a"
    return f"{100 * value:.2f}%" if metric in PERCENT_METRICS else f"{value:.4f}"


def format_gap(gap: float, metric: str) -> str:
    return f"{100 * gap:.2f} points" if metric in PERCENT_METRICS else f"{gap:.4f}"


def format_bytes(count: float | None) -> str:
    if missing(count):
        return "n/a"
    return f"{count / 1e9:.2f} GB" if count >= 1e9 else f"{count / 1e6:.0f} MB"


def format_seconds(seconds: float | None) -> str:
    if missing(seconds):
        return "n/a"
    if seconds < 1:
        return f"{1000 * seconds:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_count(count: float | None) -> str:
    """1.23M, 2.11K, 357.6M."""
    if missing(count):
        return "n/a"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            scaled = count / size
            return f"{scaled:.1f}{unit}" if scaled >= 100 else f"{scaled:.2f}{unit}"
    return str(count)


def format_int(count: int | None) -> str:
    return "n/a" if missing(count) else f"{count:,}"


def format_loss(value: float | None) -> str:
    return "n/a" if missing(value) else f"{value:.4f}"


def format_commit(commit: str | None) -> str:
    if not commit:
        return "n/a"
    clean = commit.removesuffix("-dirty")
    return f"`{clean[:12]}`" + (" + uncommitted changes" if clean != commit else "")


def format_mean_std(values: Sequence[float | None], metric: str) -> str:
    """'mean ± std' over the values that are known, with how many when some are not."""
    known = [v for v in values if not missing(v)]
    if not known:
        return "n/a"
    text = f"{format_metric(float(np.mean(known)), metric)} ± {format_metric(float(np.std(known)), metric)}"
    return text if len(known) == len(values) else f"{text} ({len(known)} of {len(values)})"


def metric_title(metric: str) -> str:
    return {"f1": "F1"}.get(metric, metric)


def short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and "/" in value:
        return Path(value).name
    return str(value)


def list_steps(steps: Sequence[int]) -> str:
    shown = [str(s) for s in steps] if len(steps) <= 6 else [*map(str, steps[:3]), "…", str(steps[-1])]
    return ("step " if len(steps) == 1 else "steps ") + ", ".join(shown)


def spread(count: int, wanted: int) -> list[int]:
    """About `wanted` indices spread evenly over range(count), first and last included."""
    if count <= wanted:
        return list(range(count))
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]], numbers: bool = True) -> str:
    """The first column left-aligned (names); the others right-aligned when they hold numbers."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    rule = "|" + "|".join([":---", *[("---:" if numbers else ":---")] * (len(header) - 1)]) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])

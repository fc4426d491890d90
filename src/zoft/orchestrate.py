"""Several runs, one after another: how compare and sweep build each run's config, and what they do with a run
folder that already holds something.

One way to layer a config (defaults → preset → the user's keys → a grid point or budget → the method) and one
rule for an existing folder (keep a finished run of the same config, resume a stopped one, refuse one of another
config unless --overwrite), so that `zoft compare` and `zoft sweep` behave alike when run again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoft import presets
from zoft.config import RunConfig, build_config, load_yaml
from zoft.console import Console
from zoft.method_names import lookup
from zoft.runs import RunFolder, Summary

Train = Callable[..., Summary]  # zoft.train.train(config, out, *, overwrite, resume)


def layered_config(method: str, overrides: dict[str, Any], preset: Path | None = None,
                   extra: dict[str, Any] | None = None) -> RunConfig:
    """A method's config: the defaults, then `preset` (else the packaged one for the task, model, head and
    method, else none), then the user's `overrides`, then `extra` (a grid point, a budget), then the method."""
    keys = lookup(method).keys()
    if preset is None:
        chosen = build_config(overrides={**overrides, **keys})
        preset = presets.packaged(chosen.data.task, chosen.model.model, chosen.model.head, method)
    preset_keys = load_yaml(preset) if preset else {}
    return build_config(overrides={**preset_keys, **overrides, **(extra or {}), **keys})


@dataclass(frozen=True)
class PlannedRun:
    name: str  # what the status line calls it: the method (compare) or the grid point (sweep)
    config: RunConfig
    folder: RunFolder


def train_each(runs: Sequence[PlannedRun], train: Train, *, overwrite: bool, console: Console,
               command: str) -> None:
    """Train each run into its folder, one after another (never two at once: timings would interfere).

    Every folder is checked before the first run starts, so a folder holding another config stops the command
    before any work is done rather than after hours of it."""
    states = [run.folder.state(run.config, overwrite=overwrite) for run in runs]
    for index, (run, state) in enumerate(zip(runs, states, strict=True), 1):
        where = f"{command}: {index}/{len(runs)} {run.name}"
        if state == "finished":
            console.print(f"{where}: {run.folder.path} already holds this run; keeping it")
            continue
        console.print(f"{where} → {run.folder.path}" + (" (resuming)" if state == "stopped" else ""))
        train(run.config, run.folder.path, overwrite=state == "stale", resume=state == "stopped")

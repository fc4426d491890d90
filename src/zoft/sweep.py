"""zoft sweep: a grid of configs, each scored on the validation split (never on test).

Every grid point trains into its own run folder; the sweep writes a sorted table (Markdown and CSV), a
heat map when the grid has two keys, and best.yaml, the winning settings, which `zoft compare --preset`
takes. A diverged run is recorded as such and the sweep goes on; a sweep run again continues where it
stopped (finished points are kept, a stopped one is resumed).
"""

from __future__ import annotations

import csv
import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from zoft.compare import method_name
from zoft.config import RunConfig, build_config, config_keys, load_yaml
from zoft.console import Console
from zoft.errors import ZoftError
from zoft.orchestrate import Failed, PlannedRun, Processes, Train, layered_config, train_each
from zoft.report.plots import plot_heat_map
from zoft.report.text import markdown_table
from zoft.runs import RunFolder, Status


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """['lr=1e-5,1e-4', 'eps=1e-3'] → {'lr': ['1e-5', '1e-4'], 'eps': ['1e-3']}."""
    grid: dict[str, list[str]] = {}
    known = config_keys()
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not values.strip():
            raise ZoftError(f"--grid expects KEY=V1,V2,..., got '{item}'")
        if key not in known:
            raise ZoftError(f"--grid: unknown config key '{key}'")
        if key in grid:
            raise ZoftError(f"--grid: key '{key}' given twice")
        grid[key] = [v.strip() for v in values.split(",") if v.strip()]
    if not grid:
        raise ZoftError("--grid needs at least one KEY=V1,V2,...")
    return grid


def grid_points(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def point_name(point: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in point.items())


@dataclass
class SweepResult:
    point: dict[str, str]
    folder: Path
    status: Status
    select_metric: str  # e.g. validation/accuracy
    score: float | None  # its best value over the run's evaluations
    best_step: int | None
    final_score: float | None  # its value at the last evaluation: breaks ties in favour of the steadier run
    steps: int

    @property
    def ranked(self) -> bool:
        return self.status == Status.COMPLETED and self.score is not None and not math.isnan(self.score)


def plan(grid: dict[str, list[str]], overrides: dict[str, Any], preset: Path | None = None
         ) -> list[tuple[dict[str, str], RunConfig]]:
    """The config of every grid point: `preset` (else the packaged one for the task, model, head and method),
    then the overrides, then the point; each is checked before anything trains."""
    method = method_name(build_config(overrides={**(load_yaml(preset) if preset else {}), **overrides}))
    return [(point, layered_config(method, overrides, preset, point)) for point in grid_points(grid)]


def run_sweep(points: list[tuple[dict[str, str], RunConfig]], out: Path, train: Train, overwrite: bool = False,
              console: Console | None = None, processes: Processes | None = None
              ) -> tuple[list[SweepResult], list[Failed]]:
    """Train every grid point into out/runs/<point> (in this process one after another, or in child processes,
    several at once: `processes`) and rank them on validation; a point whose child failed ranks last, crashed."""
    runs = [PlannedRun(point_name(point), config, RunFolder(out / "runs" / point_name(point)))
            for point, config in points]
    failed = train_each(runs, train, overwrite=overwrite, console=console or Console(), command="sweep",
                        processes=processes)
    failed_folders = {failure.run.folder.path for failure in failed}
    results = [_result(point, run.folder) if run.folder.path not in failed_folders else _failed(point, run.folder)
               for (point, _), run in zip(points, runs, strict=True)]
    return rank(results), failed


def rank(results: list[SweepResult]) -> list[SweepResult]:
    """Best first: by validation score, ties by the final validation value; unranked runs last."""
    return sorted(results, key=_rank_key)


def _rank_key(result: SweepResult) -> tuple[bool, float, float]:
    if not result.ranked:
        return True, 0.0, 0.0
    final = result.final_score if result.final_score is not None and not math.isnan(result.final_score) else -math.inf
    return False, -result.score, -final


def _result(point: dict[str, str], folder: RunFolder) -> SweepResult:
    summary = folder.read_summary()
    key = summary.select_key
    return SweepResult(point=point, folder=folder.path, status=summary.status, select_metric=key,
                       score=summary.best.get(key), best_step=summary.best["step"],
                       final_score=summary.final.get(key), steps=summary.steps)


def _failed(point: dict[str, str], folder: RunFolder) -> SweepResult:
    """A point whose `zoft train` failed: crashed, unranked, whatever an earlier attempt's summary said."""
    earlier = folder.read_summary() if folder.summary_path.is_file() else None
    return SweepResult(point=point, folder=folder.path, status=Status.CRASHED,
                       select_metric=earlier.select_key if earlier else "validation score", score=None,
                       best_step=None, final_score=None, steps=earlier.steps if earlier else 0)


def write_table(results: list[SweepResult], out: Path) -> None:
    keys, select_metric = list(results[0].point), results[0].select_metric
    header = [*keys, select_metric, "best step", "final", "steps", "status", "run"]
    rows = [[*r.point.values(), _score(r), r.best_step, _final(r), r.steps, r.status,
             os.path.relpath(r.folder, out)] for r in results]
    with (out / "sweep.csv").open("w", newline="") as file:
        csv.writer(file).writerows([header, *rows])
    table = markdown_table(header, [["" if cell is None else str(cell) for cell in row] for row in rows],
                           numbers=False)
    note = (f"Scored by {select_metric} (the best evaluation of each run), the validation split carved from "
            "the training data; ties go to the higher final value (the last evaluation). The test split played "
            "no part in the ranking. A best step of 0 means training never improved on the starting model.")
    (out / "sweep.md").write_text(f"# Sweep\n\n{note}\n\n{table}\n")


def _final(result: SweepResult) -> str:
    return "" if result.final_score is None else f"{result.final_score:.4f}"


def _score(result: SweepResult) -> str:
    return f"{result.score:.4f}" if result.ranked else result.status


def write_heat_map(results: list[SweepResult], grid: dict[str, list[str]], out: Path) -> Path:
    row_key, column_key = list(grid)
    select_metric = results[0].select_metric
    scores = np.full((len(grid[row_key]), len(grid[column_key])), np.nan)
    labels = np.full(scores.shape, "", dtype=object)
    for r in results:
        i, j = grid[row_key].index(r.point[row_key]), grid[column_key].index(r.point[column_key])
        scores[i, j] = r.score if r.ranked else np.nan
        labels[i, j] = _score(r)
    path = out / "heatmap.png"
    plot_heat_map(scores, labels, (row_key, grid[row_key]), (column_key, grid[column_key]), select_metric,
                  f"{select_metric} (validation split)", path)
    return path


def write_best(results: list[SweepResult], grid: dict[str, list[str]], out: Path) -> Path | None:
    """best.yaml, for compare --preset: the best point's method settings, how its model is set up (head,
    pooling, LoRA; not which model), and its swept keys."""
    ranked = [r for r in results if r.ranked]
    if not ranked:
        return None
    best = ranked[0]
    config = RunFolder(best.folder).read_config().to_dict()
    section_of = {key: section for key, (section, _) in config_keys().items()}
    setup = {key: value for key, value in config["model"].items() if key not in ("model", "dtype")}
    document = {"method": config["method"], "model": setup}
    for key in grid:
        document.setdefault(section_of[key], {})[key] = config[section_of[key]][key]
    header = (f"# Chosen by zoft sweep in {best.folder.parent.parent}: best validation score {best.score:.4f} "
              f"at {point_name(best.point)}\n")
    path = out / "best.yaml"
    path.write_text(header + yaml.safe_dump(document, sort_keys=False))
    return path


def finish(results: list[SweepResult], grid: dict[str, list[str]], out: Path) -> Path | None:
    """What a sweep leaves in `out`: sweep.md and sweep.csv, heatmap.png for a grid of two keys, and best.yaml
    (returned; None when no point completed)."""
    out.mkdir(parents=True, exist_ok=True)
    write_table(results, out)
    if len(grid) == 2:
        write_heat_map(results, grid, out)
    return write_best(results, grid, out)

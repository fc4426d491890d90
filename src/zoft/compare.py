"""zoft compare: several methods on the same task, model, splits, seed, evaluation and measurement.

The methods run one after another (never two at once: timings would interfere), each into its own run
folder under the output folder, and the report is written from those folders. A compare that was
stopped continues where it stopped when run again: finished runs are kept, a stopped one is resumed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoft import presets
from zoft.config import RunConfig, build_config, to_yaml
from zoft.console import Console
from zoft.errors import ZoftError
from zoft.method_names import name_of
from zoft.orchestrate import Failed, PlannedRun, Processes, Train, layered_config, train_each
from zoft.runs import RunFolder


def method_name(config: RunConfig) -> str:
    """The compare name of a config's method (e.g. mezo-lora), or 'mezo-<params>' for a custom subset."""
    return name_of(config.method.method, config.method.params)


def preset_method(path: Path) -> str:
    """The method a preset file is for, read from its method (and params) keys."""
    return method_name(build_config(path))


def forwards_per_step(config: RunConfig) -> int:
    """Forward passes of a plain step; MeZO-SVRG snapshots and growing n-SPSA take more, which the
    max_forward_passes cap accounts for exactly."""
    m = config.method
    return m.grad_accumulation * (2 * m.n_perturbations if m.method == "mezo" else 1)


def plan(methods: list[str], overrides: dict[str, Any], preset_names: list[str],
         budget_forwards: int | None = None) -> dict[str, RunConfig]:
    """The config of each method: defaults, then its preset, then the user's overrides, then the method.

    A method's preset is the one given (`preset_names`: files, packaged names or families), else the
    packaged one for the task, model and head (zoft.presets.packaged), else none."""
    by_method = {preset_method(path): path for name in preset_names for path in presets.find(name, methods)}
    unused = set(by_method) - set(methods)
    if unused:
        raise ZoftError(f"--preset given for {', '.join(sorted(unused))}, which is not among the methods compared")
    configs = {}
    for name in methods:
        config = layered_config(name, overrides, by_method.get(name))
        if budget_forwards is not None:
            budget = {"max_forward_passes": budget_forwards,
                      "steps": max(1, budget_forwards // forwards_per_step(config))}
            config = layered_config(name, overrides, by_method.get(name), budget)
        configs[name] = config
    return configs


def describe_plan(configs: dict[str, RunConfig]) -> str:
    """Each method's resolved config as a YAML document, then the keys whose values differ between them."""
    documents = [f"# {name}\n{to_yaml(config)}" for name, config in configs.items()]
    flat = {name: {key: value for section in config.to_dict().values() for key, value in section.items()}
            for name, config in configs.items()}
    keys = dict.fromkeys(key for values in flat.values() for key in values)
    differing = [f"#   {key}: " + "; ".join(f"{name}: {values[key]}" for name, values in flat.items())
                 for key in keys if len({repr(values[key]) for values in flat.values()}) > 1]
    summary = ["# the keys that differ between them:", *(differing or ["#   none"])] if len(configs) > 1 else []
    return "---\n".join(documents) + "\n".join(summary) + ("\n" if summary else "")


def run_all(configs: dict[str, RunConfig], out: Path, train: Train, overwrite: bool = False,
            console: Console | None = None, processes: Processes | None = None) -> tuple[list[Path], list[Failed]]:
    """Train each config into out/<method>, one after another (in this process, or each in a child process:
    `processes`); keep finished runs of the same config. Returns the run folders and the runs that failed."""
    runs = [PlannedRun(name, config, RunFolder(out / name)) for name, config in configs.items()]
    failed = train_each(runs, train, overwrite=overwrite, console=console or Console(), command="compare",
                        processes=processes)
    return [run.folder.path for run in runs], failed

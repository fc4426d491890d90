"""Run folders as the report reads them: one RunRecord per folder, their labels, and groups of seeds.

Only what `zoft train` leaves behind is read (config.yaml, metrics.jsonl, summary.json); summary.json goes
through runs.Summary, the one reader of that file. A run killed before its summary has only its records, from
which the figures the summary would have held are recovered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from zoft.errors import ZoftError
from zoft.method_names import label_of
from zoft.report.text import missing, short_value
from zoft.runs import RunFolder, Summary, read_jsonl

Record = dict[str, Any]

REQUIRED_FILES = ("config.yaml", "metrics.jsonl")
MAX_LABEL_KEYS = 3  # runs of one method told apart by more differing keys than this are named by their folder
# Config keys that change how fast a run goes, never what it computes (cache_z: the same run bit for bit,
# tests/methods/test_zeroth_order_method.py), so runs that differ only in them are seeds of one setting.
SPEED_ONLY_KEYS = frozenset({"cache_z"})


@dataclass
class RunRecord:
    """One run folder as read from disk. `summary` is None when the process died before writing it."""

    path: Path
    config: dict[str, Any]
    summary: Summary | None
    train: list[Record]
    evals: list[Record]
    label: str

    @property
    def task(self) -> str:
        return (self.summary and self.summary.task) or self.config["data"]["task"]

    @property
    def model(self) -> str:
        return (self.summary and self.summary.model) or self.config["model"]["model"]

    @property
    def method(self) -> str:
        return self.config["method"]["method"]

    @property
    def is_mezo(self) -> bool:
        return self.method == "mezo"

    @property
    def flat_config(self) -> dict[str, Any]:
        return flat_config(self.config)

    @property
    def status(self) -> str:
        return str(self.summary.status) if self.summary else "no summary.json"

    @property
    def select_metric(self) -> str:
        """The validation metric that chose the best checkpoint, e.g. 'validation/accuracy'."""
        if self.summary and self.summary.select_key:
            return self.summary.select_key
        chosen = self.config.get("train", {}).get("select_metric")
        if chosen:
            return f"validation/{chosen}"
        # the training loop writes the task's main metric first
        return next((key for record in self.evals for key in record if key.startswith("validation/")),
                    "validation/accuracy")

    @property
    def main_metric(self) -> str:
        return self.select_metric.split("/", 1)[1]

    @property
    def best(self) -> Record:
        """The evaluation chosen on validation: the summary's, else recomputed as the loop does (first maximum)."""
        best = self.summary.best if self.summary else {}
        if best.get("step") is not None:
            return best
        scored = [r for r in self.evals if not missing(r.get(self.select_metric))]
        return max(scored, key=lambda r: r[self.select_metric], default={})

    @property
    def final(self) -> Record:
        return self.evals[-1] if self.evals else {}

    @property
    def start(self) -> Record:
        """The evaluation before the first step (empty if the run did not evaluate at step 0)."""
        return self.evals[0] if self.evals and self.evals[0].get("step") == 0 else {}

    def _or_logged(self, value: Any, key: str) -> Any:
        """The summary's value, else the last one metrics.jsonl holds (a killed run, or a summary without it)."""
        return last(self.train, key) if value is None else value

    @property
    def steps(self) -> int | None:
        return self._or_logged(self.summary and self.summary.steps, "step")

    @property
    def planned_steps(self) -> int | None:
        return self.summary.planned_steps if self.summary else None

    @property
    def forward_passes(self) -> int | None:
        return self._or_logged(self.summary and self.summary.passes.forward, "forward_passes")

    @property
    def backward_passes(self) -> int | None:
        return self._or_logged(self.summary and self.summary.passes.backward, "backward_passes")

    @property
    def baseline(self) -> float | None:
        return self.summary.majority_baseline.get(self.main_metric) if self.summary else None

    @property
    def one_class_steps(self) -> list[int]:
        return [r["step"] for r in self.evals if r.get("test/majority_share") == 1.0]

    @property
    def beats_majority(self) -> bool | None:
        best, baseline = self.best.get(f"test/{self.main_metric}"), self.baseline
        return None if missing(best) or missing(baseline) else best > baseline


def last(records: Sequence[Record], key: str) -> Any:
    return next((r[key] for r in reversed(records) if key in r), None)


def load_run(path: str | Path) -> RunRecord:
    """Read one run folder; a ZoftError names the folder and the file it lacks."""
    path = Path(path)
    if not path.is_dir():
        raise ZoftError(f"{path} is not a run folder: no such folder")
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise ZoftError(f"{path} is not a run folder: it has no {name}")
    folder = RunFolder(path)
    records = read_jsonl(folder.metrics_path)
    summary = folder.read_summary() if folder.summary_path.is_file() else None
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    return RunRecord(path=path, config=config, summary=summary,
                     train=[r for r in records if r.get("kind") == "train"],
                     evals=[r for r in records if r.get("kind") == "eval"],
                     label=method_name(config.get("method", {})))


def method_name(method: dict[str, Any]) -> str:
    """A readable name: LoRA, Full FT, MeZO (LoRA), MeZO (all), MeZO (<regex>)."""
    return label_of(str(method.get("method", "?")), method.get("params"))


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    # leaf keys are unique across sections (config.py promises it), so they name options as the CLI does
    return {key: value for section in config.values() if isinstance(section, dict) for key, value in section.items()}


def trains_lora(config: dict[str, Any]) -> bool:
    """Of a flat config: the run trains LoRA adapters (by backprop or by MeZO)."""
    return config.get("method") == "lora" or (config.get("method") == "mezo" and config.get("params") == "lora")


def differing(runs: Sequence[RunRecord], values: Callable[[RunRecord], dict[str, Any]]) -> dict[str, list[Any]]:
    """{key: one value per run ("n/a" where a run lacks the key)} for the keys whose known values differ."""
    per_run = [values(run) for run in runs]
    keys = dict.fromkeys(key for mapping in per_run for key in mapping)
    found = {}
    for key in keys:
        known = [mapping[key] for mapping in per_run if key in mapping]
        if any(value != known[0] for value in known):
            found[key] = [mapping.get(key, "n/a") for mapping in per_run]
    return found


def label_by_difference(runs: Sequence[RunRecord], values: Callable[[RunRecord], dict[str, Any]],
                        most_keys: int | None = None) -> list[str]:
    """Each run's method name, plus the keys of `values` that tell it from the other runs of its method. With
    `most_keys`, runs told apart by no key or by more than that many are named by their folder instead."""
    names = [method_name(run.config.get("method", {})) for run in runs]
    labels = []
    for run, name in zip(runs, names, strict=True):
        twins = [other for other, other_name in zip(runs, names, strict=True) if other_name == name]
        if len(twins) == 1:
            labels.append(name)
            continue
        keys = differing(twins, values)
        if most_keys is not None and not 0 < len(keys) <= most_keys:
            labels.append(f"{name} {run.path.name}")
            continue
        position = next(i for i, twin in enumerate(twins) if twin is run)
        labels.append(f"{name} " + ", ".join(f"{key}={short_value(column[position])}" for key, column in keys.items()))
    return labels


def label_runs(runs: Sequence[RunRecord]) -> list[RunRecord]:
    """Make labels unique: runs sharing a method get the config keys that tell them apart (else the folder)."""
    labels = label_by_difference(runs, lambda run: run.flat_config, most_keys=MAX_LABEL_KEYS)
    return [replace(run, label=f"{label} #{labels[:i].count(label) + 1}" if labels.count(label) > 1 else label)
            for i, (run, label) in enumerate(zip(runs, labels, strict=True))]


def check_same_task(runs: Sequence[RunRecord]) -> None:
    first = runs[0]
    for run in runs[1:]:
        if run.task != first.task:
            raise ZoftError(f"cannot compare runs of different tasks: {first.path} is {first.task}, "
                            f"{run.path} is {run.task}")


def setting(run: RunRecord) -> dict[str, Any]:
    """The run's config without its seed and speed-only keys: what seeds of one setting share."""
    return {key: value for key, value in run.flat_config.items() if key != "seed" and key not in SPEED_ONLY_KEYS}


def seed_groups(runs: Sequence[RunRecord]) -> list[list[RunRecord]]:
    """Runs whose configs are the same but for the seed (which also draws their data, e.g. k-shot samples)
    and speed-only keys, in groups of two or more."""
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        key = json.dumps(setting(run), sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
    return [group for group in groups.values() if len(group) > 1]

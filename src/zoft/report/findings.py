"""The findings the report writes in words: who wins and by how much, what it cost, and what to distrust."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from zoft.report.records import RunRecord, differing, trains_lora
from zoft.report.stats import forwards_to_best, peak_memory, seconds_per_step
from zoft.report.text import (
    format_bytes,
    format_gap,
    format_int,
    format_metric,
    format_seconds,
    list_steps,
    metric_title,
    missing,
    short_value,
)
from zoft.runs import Status

# The keys that make a comparison like for like: what every run should share unless the comparison is about
# it. The method's own settings (lr, eps, schedule, ...) are shown beside them but not flagged.
SETUP_KEYS = ("head", "template", "label_words", "pooling", "pair_encoding", "head_init", "train_lm_head", "lora_r",
              "lora_alpha", "target_modules", "batch_size", "grad_accumulation", "max_length", "dtype")
LORA_KEYS = ("lora_r", "lora_alpha", "target_modules", "train_lm_head")  # compared only between runs with LoRA


def findings_section(runs: Sequence[RunRecord]) -> str:
    metric = runs[0].main_metric
    results = [*_accuracy_findings(runs, metric), *_cost_findings(runs), *_budget_findings(runs)]
    warnings = [*_baseline_warnings(runs, metric), *_one_class_warnings(runs), *_status_warnings(runs),
                *_data_warnings(runs), *_setup_warnings(runs), *_device_warnings(runs), *_recorded_warnings(runs)]
    lines = ["## Findings", "", *(f"- {line}" for line in results)]
    if warnings:
        lines += ["", "**Warnings**", "", *(f"- {line}" for line in warnings)]
    return "\n".join(lines)


def _accuracy_findings(runs: Sequence[RunRecord], metric: str) -> list[str]:
    scored = sorted((run for run in runs if not missing(run.best.get(f"test/{metric}"))),
                    key=lambda run: run.best[f"test/{metric}"], reverse=True)
    if not scored:
        return [f"No run has a test {metric} yet."]
    winner, best = scored[0], scored[0].best[f"test/{metric}"]
    at = ("step 0, before any training step" if winner.best["step"] == 0 else f"step {winner.best['step']}")
    line = f"Best test {metric_title(metric)}: {winner.label}, {format_metric(best, metric)} ({at})"
    tied = [run.label for run in scored[1:] if run.best[f"test/{metric}"] == best]
    behind = [run for run in scored[1:] if run.best[f"test/{metric}"] < best]
    if tied:
        line += f", tied with {', '.join(tied)}"
    if behind:
        runner_up = behind[0].best[f"test/{metric}"]
        line += (f", {format_gap(best - runner_up, metric)} ahead of {behind[0].label} "
                 f"({format_metric(runner_up, metric)})")
    findings = [line + "."]
    unimproved = [run.label for run in scored if run.best["step"] == 0 and (run.steps or 0) > 0]
    if unimproved:
        findings.append(f"No training step improved on the starting model (validation chose step 0, the model "
                        f"before training): {', '.join(unimproved)}; its score is the starting model's, not the "
                        f"method's.")
    return findings


def _cost_findings(runs: Sequence[RunRecord]) -> list[str]:
    kinds = sorted({peak_memory(run)[1] for run in runs})
    if len(kinds) == 1:
        memory = _ratio_finding(runs, f"Peak memory ({kinds[0]})", "lowest", lambda run: peak_memory(run)[0],
                                format_bytes)
    else:
        memory = f"Peak memory: not compared, the runs measured different things ({', '.join(kinds)})."
    time = _ratio_finding(runs, "Time per step", "fastest", seconds_per_step, format_seconds)
    return [line for line in (memory, time) if line]


def _ratio_finding(runs: Sequence[RunRecord], what: str, best_word: str,
                   measure: Callable[[RunRecord], float | None], show: Callable[[float], str]) -> str | None:
    measured = sorted(((measure(run), run) for run in runs if not missing(measure(run))), key=lambda pair: pair[0])
    if len(measured) < 2 or measured[0][0] <= 0:
        return None
    (low, lowest), others = measured[0], measured[1:]
    ratios = "; ".join(f"{run.label} {show(value)} ({value / low:.2f}×)" for value, run in others)
    return f"{what}: {best_word} {lowest.label}, {show(low)}; {ratios}."


def _budget_findings(runs: Sequence[RunRecord]) -> list[str]:
    passes = "; ".join(f"{run.label} {format_int(run.forward_passes)} forward + "
                       f"{format_int(run.backward_passes)} backward (best after "
                       f"{format_int(forwards_to_best(run))} forward)" for run in runs)
    findings = [f"Passes used: {passes}."]
    if len({run.steps for run in runs}) > 1:
        findings.append(f"Budgets differ: {_by_run(runs, (f'{format_int(run.steps)} steps' for run in runs))}; "
                        "compare equal steps in the evaluation table below.")
    return findings


def _by_run(runs: Sequence[RunRecord], texts: Iterable[str]) -> str:
    return ", ".join(f"{run.label} {text}" for run, text in zip(runs, texts, strict=True))


def _baseline_warnings(runs: Sequence[RunRecord], metric: str) -> list[str]:
    return [f"{run.label} did not beat the majority class ({format_metric(run.baseline, metric)}): its best test "
            f"{metric_title(metric)} is {format_metric(run.best.get(f'test/{metric}'), metric)}."
            for run in runs if run.beats_majority is False]


def _one_class_warnings(runs: Sequence[RunRecord]) -> list[str]:
    return [f"{run.label} predicted one class for every test example at {len(steps)} of {len(run.evals)} "
            f"evaluations ({list_steps(steps)})."
            for run in runs if (steps := run.one_class_steps)]


def _status_warnings(runs: Sequence[RunRecord]) -> list[str]:
    warnings = []
    for run in runs:
        if run.summary is None:
            warnings.append(f"{run.label} left no summary.json (killed before the end?): figures come from "
                            f"metrics.jsonl up to step {format_int(run.steps)}.")
        elif run.summary.status != Status.COMPLETED:
            warnings.append(f"{run.label} {run.status} at step {format_int(run.steps)} of "
                            f"{format_int(run.planned_steps)}.")
    return warnings


def _data_warnings(runs: Sequence[RunRecord]) -> list[str]:
    def data_of(run: RunRecord) -> dict[str, Any]:
        sizes = run.summary.data.sizes if run.summary else {}
        return {**{f"{split} size": n for split, n in sizes.items()}, **run.config.get("data", {})}

    return _difference_warning(runs, data_of, "Not comparable: the runs differ in their data")


def _setup_warnings(runs: Sequence[RunRecord]) -> list[str]:
    """The like-for-like keys (SETUP_KEYS) whose values differ: LoRA's own between the runs that use LoRA."""
    lora_runs = [run for run in runs if trains_lora(run.flat_config)]

    def setup_of(run: RunRecord) -> dict[str, Any]:
        config = run.flat_config
        shared = [key for key in SETUP_KEYS if key not in LORA_KEYS or run in lora_runs]
        return {key: config[key] for key in shared if key in config}

    return _difference_warning(runs, setup_of, "Not like for like: the runs differ beyond the method in their setup")


def _device_warnings(runs: Sequence[RunRecord]) -> list[str]:
    def device_of(run: RunRecord) -> dict[str, Any]:
        device = run.summary.device if run.summary else None
        return {"device": f"{device.type} ({device.name})", "threads": device.threads} if device else {}

    return _difference_warning(runs, device_of, "Time and memory not comparable: the runs ran on different machines")


def _difference_warning(runs: Sequence[RunRecord], values: Callable[[RunRecord], dict[str, Any]],
                        lead: str) -> list[str]:
    found = differing(runs, values)
    details = "; ".join(f"{key} ({_by_run(runs, map(short_value, column))})" for key, column in found.items())
    return [f"{lead}: {details}."] if found else []


def _recorded_warnings(runs: Sequence[RunRecord]) -> list[str]:
    """The runs' own warnings, one line per message with its steps; one-class ones are already reported above."""
    lines = []
    for run in runs:
        grouped: dict[str, list[int]] = {}
        for warning in run.summary.warnings if run.summary else []:
            match = re.fullmatch(r"step (\d+): (.*)", warning, flags=re.DOTALL)
            message = match.group(2) if match else warning
            if message.startswith("the model predicts one class"):
                continue
            grouped.setdefault(message, []).extend([int(match.group(1))] if match else [])
        lines += [f"{run.label}: {message}" + (f" ({list_steps(steps)})." if steps else "")
                  for message, steps in grouped.items()]
    return lines

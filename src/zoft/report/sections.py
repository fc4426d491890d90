"""The report's Markdown sections about the runs: header and provenance, setup, comparison, seeds."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

import zoft
from zoft.report.records import RunRecord, label_by_difference, seed_groups, setting, trains_lora
from zoft.report.stats import (
    loss_spread,
    peak_memory,
    seconds_per_step,
)
from zoft.report.text import (
    format_bytes,
    format_commit,
    format_count,
    format_int,
    format_loss,
    format_mean_std,
    format_metric,
    format_seconds,
    markdown_table,
    metric_title,
    short_value,
)
from zoft.runs import DataInfo, describe_stop, git_commit


def header_section(runs: Sequence[RunRecord], title: str, out: Path) -> str:
    """Title, task, model, data and provenance; run folders are named relative to `out`, the report's folder,
    so that the report reads the same wherever it was written from (and regenerates byte for byte)."""
    first = runs[0]
    data = first.summary.data if first.summary else DataInfo()
    sizes = ", ".join(f"{split} {format_int(n)}" for split, n in data.sizes.items()) or "n/a"
    models = dict.fromkeys(run.model for run in runs)
    commit = git_commit()
    lines = [
        f"# {title}", "",
        f"- **Task**: {first.task}; every number is scored on the **test** split (for GLUE tasks the GLUE dev set, "
        f"whose labels are public) unless marked validation; the best checkpoint is chosen by "
        f"`{first.select_metric}` (validation is carved from train).",
        f"- **Model**: {', '.join(f'`{m}`' for m in models)}",
        f"- **Data**: {data.source or 'n/a'}; split sizes: {sizes}",
        f"- **Report**: written by zoft {zoft.__version__}{f' at commit {format_commit(commit)}' if commit else ''}"
        f" from {len(runs)} run folder{'s' if len(runs) > 1 else ''}.",
        "", "## Runs", "",
        markdown_table(["Run", "Folder (relative to this report)", "Status", "Device", "Versions", "Made by commit"],
                       [_provenance_row(run, out) for run in runs], numbers=False),
        "", "Commands that produced them:", "", "```sh",
    ]
    by_command: dict[str, list[str]] = {}  # one compare command makes several runs: show it once
    for run in runs:
        command = run.summary.command if run.summary else None
        by_command.setdefault(shlex.join(command) if command else "# (not recorded: see config.yaml)", []).append(
            run.label)
    for command, labels in by_command.items():
        lines += [f"# {', '.join(labels)}", command]
    return "\n".join([*lines, "```"])


def _provenance_row(run: RunRecord, out: Path) -> list[str]:
    summary = run.summary
    device = summary.device.describe() if summary and summary.device else "n/a"
    versions = ", ".join(f"{name} {version}" for name, version in summary.versions.items()) if summary else ""
    return [run.label, f"`{os.path.relpath(run.path, out)}`", format_status(run), device, versions or "n/a",
            format_commit(summary.git_commit if summary else None)]


def format_status(run: RunRecord) -> str:
    """The status, with the budget that ended the run when it was not its planned steps."""
    if not run.summary or run.summary.stopped_by == "steps":
        return run.status
    train = run.config.get("train", {})
    limit = describe_stop(run.summary.stopped_by, train.get("max_minutes"), train.get("max_forward_passes"))
    return f"{run.status} ({limit})"


def setup_section(runs: Sequence[RunRecord]) -> str:
    """Per run, what it trains and on what inputs, with every cell that differs between runs in bold."""
    columns = {"Head": _head_cell, "Pooling": _config_cell("pooling"), "Pair encoding": _config_cell("pair_encoding"),
               "Head init": _config_cell("head_init"), "k-shot": _config_cell("k_shot"),
               "Batch": _config_cell("batch_size"), "Steps": _config_cell("steps"), "lr": _config_cell("lr"),
               "ε": _eps_cell, "Trainable set": _trainable_cell}
    cells = {name: [cell(run) for run in runs] for name, cell in columns.items()}
    rows = [[run.label, *(_bold_if_differs(cells[name], i) for name in columns)] for i, run in enumerate(runs)]
    notes = ["Bold: the value differs between runs. Prompt heads score label words with the masked-LM head at the "
             "mask of the template below; classifier heads are a linear layer on the model's features."]
    templates = dict.fromkeys(_prompt_text(run) for run in runs if run.flat_config.get("head") == "prompt")
    if templates:
        notes.append("Templates (label words in label order): " + "; ".join(templates) + ".")
    return "\n".join(["## Setup", "", markdown_table(["Run", *columns], rows, numbers=False), "",
                      *(f"- {note}" for note in notes)])


def _config_cell(key: str) -> Callable[[RunRecord], str]:
    def cell(run: RunRecord) -> str:
        value = run.flat_config.get(key, "n/a")
        return "none" if value is None else short_value(value)

    return cell


def _head_cell(run: RunRecord) -> str:
    return str(run.flat_config.get("head", "n/a"))


def _eps_cell(run: RunRecord) -> str:
    return short_value(run.flat_config.get("eps")) if run.is_mezo else "n/a"


def _prompt_text(run: RunRecord) -> str:
    config = run.flat_config
    return f"`{config.get('template')}` ({'/'.join(config.get('label_words') or [])})"


def _trainable_cell(run: RunRecord) -> str:
    config = run.flat_config
    parameters = run.summary.parameters if run.summary else None
    count = format_count(parameters.trainable if parameters else None)
    if trains_lora(config):
        targets = ",".join(config.get("target_modules") or []) or "default modules"
        what = f"LoRA r{config.get('lora_r')} ({targets})" + (" + LM head" if config.get("train_lm_head") else "")
    elif config.get("method") == "full" or config.get("params") == "all":
        what = "all weights"
    else:
        what = f"`{config.get('params')}`"
    return f"{what}, {count}"


def _bold_if_differs(column: Sequence[str], index: int) -> str:
    known = [value for value in column if value != "n/a"]
    return f"**{column[index]}**" if column[index] != "n/a" and len(set(known)) > 1 else column[index]


def comparison_section(runs: Sequence[RunRecord]) -> str:
    metric = runs[0].main_metric
    name = metric_title(metric)
    other_metrics = [key.split("/", 1)[1] for key in runs[0].best
                     if key.startswith("test/") and key not in (f"test/{metric}", "test/majority_share")]
    memory_kinds = {peak_memory(run)[1] for run in runs}
    memory_header = f"Peak memory ({memory_kinds.pop()})" if len(memory_kinds) == 1 else "Peak memory"
    classification = any("test/majority_share" in r for run in runs for r in run.evals)
    baseline_name = "Majority class" if classification else "Constant (mean)"
    baseline_rule = ("the most frequent test class" if classification
                     else "the mean test score (a correlation with a constant is undefined: n/a)")
    header = ["Run", "Status", f"Best test {name} (step)", baseline_name, f"Final test {name}",
              *(f"Test {metric_title(m)} (best)" for m in other_metrics), "Steps", "Forward passes",
              "Backward passes", "Wall time", "Time/step", memory_header, "Trainable params", "Loss std (last 10%)",
              *(["One-class evals"] if classification else [])]
    rows = [_comparison_row(run, metric, other_metrics, mixed_memory=len(memory_kinds) > 1, with_share=classification)
            for run in runs]
    notes = [
        f"Best = the evaluation with the highest `{runs[0].select_metric}`; final = the last evaluation.",
        f"{baseline_name}: the test {name} of predicting {baseline_rule} everywhere.",
        "Peak memory: GPU allocated = the peak of torch's CUDA allocator during training (GPU runs); process RSS = "
        "the peak resident memory of the whole process, Python and libraries included, sampled during training "
        "(CPU runs). MB and GB are 10^6 and 10^9 bytes.",
        "Loss std: the standard deviation of the training loss over the last 10% of logged steps.",
    ]
    if classification:
        notes.append("One-class evals: evaluations at which the model predicted the same class for every test "
                     "example, out of all evaluations.")
    return "\n".join(["## Comparison", "", markdown_table(header, rows), "", *(f"- {note}" for note in notes)])


def _comparison_row(run: RunRecord, metric: str, other_metrics: Sequence[str], *, mixed_memory: bool,
                    with_share: bool) -> list[str]:
    best = run.best
    memory, kind = peak_memory(run)
    parameters = run.summary.parameters if run.summary else None
    steps, planned = run.steps, run.planned_steps
    row = [
        run.label, format_status(run),
        f"{format_metric(best.get(f'test/{metric}'), metric)} ({best.get('step', 'n/a')})",
        format_metric(run.baseline, metric),
        format_metric(run.final.get(f"test/{metric}"), metric),
        *(format_metric(best.get(f"test/{m}"), m) for m in other_metrics),
        format_int(steps) + (f" of {format_int(planned)}" if planned not in (None, steps) else ""),
        format_int(run.forward_passes), format_int(run.backward_passes),
        format_seconds(run.summary.time.wall_seconds if run.summary else None), format_seconds(seconds_per_step(run)),
        format_bytes(memory) + (f" ({kind})" if mixed_memory and memory is not None else ""),
        f"{format_count(parameters.trainable)} ({parameters.trainable_percent:.2f}%)" if parameters else "n/a",
        format_loss(loss_spread(run)),
    ]
    if with_share:
        row.append(f"{len(run.one_class_steps)} of {len(run.evals)}")
    return row


def seeds_section(runs: Sequence[RunRecord]) -> str | None:
    """Mean ± standard deviation over seeds of the best test metric, as the MeZO paper reports k-shot results."""
    groups = seed_groups(runs)
    if not groups:
        return None
    metric = runs[0].main_metric
    # a group is named as its first run would be among the first runs of all groups
    labels = label_by_difference([group[0] for group in groups], setting)
    rows = []
    for group, label in zip(groups, labels, strict=True):
        seeds = ", ".join(str(run.flat_config.get("seed")) for run in group)
        best_steps = ", ".join(str(run.best.get("step", "?")) for run in group)
        rows.append([label, seeds, str(len(group)),
                     format_mean_std([run.best.get(f"test/{metric}") for run in group], metric), best_steps,
                     format_mean_std([run.start.get(f"test/{metric}") for run in group], metric),
                     format_metric(group[0].baseline, metric)])
    title = metric_title(metric)
    header = ["Method", "Seeds", "Runs", f"Best test {title}: mean ± std", "Best steps",
              f"Test {title} at step 0: mean ± std", "Majority class"]
    note = ("Runs whose configs differ only in the seed (which also draws the hold-out and any k-shot sample); "
            "std is the population standard deviation over seeds, as LM-BFF and MeZO report it. Best steps: the "
            "step each seed's validation chose (step 0 means training did not improve on the starting model). "
            "Step 0: the starting model (e.g. a linear-probe head), before any training step.")
    return "\n".join(["## Over seeds", "", markdown_table(header, rows), "", f"- {note}"])

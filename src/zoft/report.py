"""The comparison report: Markdown tables, PNG plots and generated findings, from run folders alone.

It reads only what `zoft train` leaves behind (config.yaml, metrics.jsonl, summary.json), so it works on
runs made yesterday, on another machine or by a sweep; nothing here loads a model or re-evaluates one.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

import zoft
from zoft.errors import ZoftError
from zoft.method_names import label_of
from zoft.runs import git_commit, read_jsonl

Record = dict[str, Any]

REQUIRED_FILES = ("config.yaml", "metrics.jsonl")
PERCENT_METRICS = {"accuracy", "f1"}
LOSS_WINDOW = 10  # logged steps averaged for "loss at start / end", as in the training loop's divergence check
STABILITY_SHARE = 0.1  # the tail of the run whose loss spread the stability column reports
OUTLIER_FACTOR = 5.0  # |projected grad| above this many times its median counts as an outlier
MEZO_TABLE_ROWS = 8
MAX_DYNAMICS_ROWS = 40
PLOT_DPI = 120
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # 7 against 8 colours: a (colour, marker) pair repeats after 56 runs
LINESTYLES = ("-", "--", ":", "-.")
ONE_CLASS_MARK = "†"


# -- reading run folders ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One run folder as read from disk. `summary` is empty when the process died before writing it."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    train: list[Record]
    evals: list[Record]
    label: str

    @property
    def task(self) -> str:
        return self.summary.get("task") or self.config["data"]["task"]

    @property
    def method(self) -> str:
        return self.config["method"]["method"]

    @property
    def is_mezo(self) -> bool:
        return self.method == "mezo"

    @property
    def status(self) -> str:
        return self.summary.get("status", "no summary.json")

    @property
    def select_metric(self) -> str:
        """The validation metric that chose the best checkpoint, e.g. 'validation/accuracy'."""
        if "select_metric" in self.summary:
            return self.summary["select_metric"]
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
        best = self.summary.get("best", {})
        if best.get("step") is not None:
            return best
        scored = [r for r in self.evals if not _missing(r.get(self.select_metric))]
        return max(scored, key=lambda r: r[self.select_metric], default={})

    @property
    def final(self) -> Record:
        return self.evals[-1] if self.evals else {}

    @property
    def start(self) -> Record:
        """The evaluation before the first step (empty if the run did not evaluate at step 0)."""
        return self.evals[0] if self.evals and self.evals[0].get("step") == 0 else {}

    @property
    def steps(self) -> int | None:
        return self.summary.get("steps", _last(self.train, "step"))

    def passes(self, kind: str) -> int | None:
        return self.summary.get("passes", {}).get(kind, _last(self.train, f"{kind}_passes"))

    @property
    def baseline(self) -> float | None:
        return self.summary.get("majority_baseline", {}).get(self.main_metric)

    @property
    def one_class_steps(self) -> list[int]:
        return [r["step"] for r in self.evals if r.get("test/majority_share") == 1.0]

    @property
    def beats_majority(self) -> bool | None:
        best, baseline = self.best.get(f"test/{self.main_metric}"), self.baseline
        return None if _missing(best) or _missing(baseline) else best > baseline


def load_run(path: str | Path) -> Run:
    """Read one run folder; a ZoftError names the folder and the file it lacks."""
    path = Path(path)
    if not path.is_dir():
        raise ZoftError(f"{path} is not a run folder: no such folder")
    for name in REQUIRED_FILES:
        if not (path / name).is_file():
            raise ZoftError(f"{path} is not a run folder: it has no {name}")
    records = read_jsonl(path / "metrics.jsonl")
    summary_path = path / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    return Run(path=path, config=config, summary=summary,
               train=[r for r in records if r.get("kind") == "train"],
               evals=[r for r in records if r.get("kind") == "eval"],
               label=method_name(config.get("method", {})))


def method_name(method: dict[str, Any]) -> str:
    """A readable name: LoRA, Full FT, MeZO (LoRA), MeZO (all), MeZO (<regex>)."""
    return label_of(str(method.get("method", "?")), method.get("params"))


def label_runs(runs: Sequence[Run]) -> list[Run]:
    """Make labels unique: runs sharing a method get the config keys that tell them apart (else the folder)."""
    labelled = [replace(run, label=_distinct_label(run, runs)) for run in runs]
    labels = [run.label for run in labelled]
    return [replace(run, label=f"{run.label} #{labels[:i].count(run.label) + 1}") if labels.count(run.label) > 1
            else run for i, run in enumerate(labelled)]


def _distinct_label(run: Run, runs: Sequence[Run]) -> str:
    twins = [other for other in runs if other.label == run.label]
    if len(twins) == 1:
        return run.label
    differing = _differing(twins, lambda twin: _flat_config(twin.config))
    if not 0 < len(differing) <= 3:
        return f"{run.label} {run.path.name}"
    position = next(i for i, twin in enumerate(twins) if twin is run)
    return f"{run.label} " + ", ".join(f"{key}={_short_value(values[position])}" for key, values in differing.items())


def _flat_config(config: dict[str, Any]) -> dict[str, Any]:
    # leaf keys are unique across sections (config.py promises it), so they name options as the CLI does
    return {key: value for section in config.values() if isinstance(section, dict) for key, value in section.items()}


def _differing(runs: Sequence[Run], values: Callable[[Run], dict[str, Any]]) -> dict[str, list[Any]]:
    """{key: one value per run ("n/a" where a run lacks the key)} for the keys whose known values differ."""
    per_run = [values(run) for run in runs]
    keys = dict.fromkeys(key for mapping in per_run for key in mapping)
    differing = {}
    for key in keys:
        known = [mapping[key] for mapping in per_run if key in mapping]
        if any(value != known[0] for value in known):
            differing[key] = [mapping.get(key, "n/a") for mapping in per_run]
    return differing


def _check_same_task(runs: Sequence[Run]) -> None:
    first = runs[0]
    for run in runs[1:]:
        if run.task != first.task:
            raise ZoftError(f"cannot compare runs of different tasks: {first.path} is {first.task}, "
                            f"{run.path} is {run.task}")


# -- numbers for people ----------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def _last(records: Sequence[Record], key: str) -> Any:
    return next((r[key] for r in reversed(records) if key in r), None)


def format_metric(value: float | None, metric: str) -> str:
    if _missing(value):
        return "n/a"
    return f"{100 * value:.2f}%" if metric in PERCENT_METRICS else f"{value:.4f}"


def format_gap(gap: float, metric: str) -> str:
    return f"{100 * gap:.2f} points" if metric in PERCENT_METRICS else f"{gap:.4f}"


def format_bytes(count: float | None) -> str:
    if _missing(count):
        return "n/a"
    return f"{count / 1e9:.2f} GB" if count >= 1e9 else f"{count / 1e6:.0f} MB"


def format_seconds(seconds: float | None) -> str:
    if _missing(seconds):
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
    if _missing(count):
        return "n/a"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            scaled = count / size
            return f"{scaled:.1f}{unit}" if scaled >= 100 else f"{scaled:.2f}{unit}"
    return str(count)


def format_int(count: int | None) -> str:
    return "n/a" if _missing(count) else f"{count:,}"


def format_loss(value: float | None) -> str:
    return "n/a" if _missing(value) else f"{value:.4f}"


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _short_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and "/" in value:
        return Path(value).name
    return str(value)


def _list_steps(steps: Sequence[int]) -> str:
    shown = [str(s) for s in steps] if len(steps) <= 6 else [*map(str, steps[:3]), "…", str(steps[-1])]
    return ("step " if len(steps) == 1 else "steps ") + ", ".join(shown)


def _spread(count: int, wanted: int) -> list[int]:
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


# -- measurements derived from the records ---------------------------------------------------------------


def peak_memory(run: Run) -> tuple[int | None, str]:
    """(bytes, what was measured): the GPU allocator's peak where there is one, else the training-phase RSS."""
    memory = run.summary.get("memory", {})
    if memory.get("cuda_max_allocated_bytes") is not None:
        return memory["cuda_max_allocated_bytes"], "GPU allocated"
    return memory.get("train_peak_rss_bytes"), "process RSS"


def seconds_per_step(run: Run) -> float | None:
    recorded = run.summary.get("time", {}).get("seconds_per_step")
    if recorded is not None or not run.train:
        return recorded
    return _last(run.train, "train_seconds") / _last(run.train, "step")


def _finite(records: Iterable[Record], key: str) -> list[float]:
    return [r[key] for r in records if not _missing(r.get(key))]


def loss_spread(run: Run) -> float | None:
    """Standard deviation of the training loss over the last 10% of logged steps (at least two)."""
    tail = run.train[-max(2, math.ceil(STABILITY_SHARE * len(run.train))):]
    losses = _finite(tail, "loss")
    return statistics.stdev(losses) if len(losses) >= 2 else None


def mean_loss(records: Sequence[Record]) -> float | None:
    losses = _finite(records, "loss")
    return statistics.fmean(losses) if losses else None


def projected_grad_stats(run: Run) -> dict[str, float | None]:
    grads = np.array(_finite(run.train, "projected_grad"))
    if grads.size == 0:
        return {"mean": None, "std": None, "mean_abs": None, "outlier_share": None}
    magnitude = np.abs(grads)
    return {"mean": float(grads.mean()), "std": float(grads.std()), "mean_abs": float(magnitude.mean()),
            "outlier_share": float(np.mean(magnitude > OUTLIER_FACTOR * np.median(magnitude)))}


def eval_x(run: Run, record: Record, key: str) -> float | None:
    """A budget (forward_passes, train_seconds) at an evaluation; older runs logged it on the train record only."""
    if key in record:
        return record[key]
    if record["step"] == 0:
        return 0
    return next((r.get(key) for r in run.train if r["step"] == record["step"]), None)


def highest_perturbed_loss(run: Run) -> tuple[float | None, int | None]:
    """The largest of loss+ and loss− over the run and its step: the spikes a MeZO run is known for."""
    candidates = [(r[key], r["step"]) for r in run.train for key in ("loss_plus", "loss_minus")
                  if not _missing(r.get(key))]
    return max(candidates, default=(None, None))


# -- the Markdown sections -------------------------------------------------------------------------------


def header_section(runs: Sequence[Run], title: str) -> str:
    first = runs[0]
    data = first.summary.get("data", {})
    sizes = ", ".join(f"{split} {format_int(n)}" for split, n in data.get("sizes", {}).items()) or "n/a"
    models = dict.fromkeys(run.summary.get("model") or run.config["model"]["model"] for run in runs)
    commit = git_commit()
    lines = [
        f"# {title}", "",
        f"- **Task**: {first.task}; every number is scored on the **test** split (for GLUE tasks the GLUE dev set, "
        f"whose labels are public) unless marked validation; the best checkpoint is chosen by "
        f"`{first.select_metric}` (validation is carved from train).",
        f"- **Model**: {', '.join(f'`{m}`' for m in models)}",
        f"- **Data**: {data.get('source', 'n/a')}; split sizes: {sizes}",
        f"- **Report**: written by zoft {zoft.__version__}{f' at commit {_format_commit(commit)}' if commit else ''}"
        f" from {len(runs)} run folder{'s' if len(runs) > 1 else ''}.",
        "", "## Runs", "",
        markdown_table(["Run", "Folder", "Status", "Device", "Versions", "Made by commit"],
                       [_provenance_row(run) for run in runs], numbers=False),
        "", "Commands that produced them:", "", "```sh",
    ]
    by_command: dict[str, list[str]] = {}  # one compare command makes several runs: show it once
    for run in runs:
        command = run.summary.get("command")
        by_command.setdefault(shlex.join(command) if command else "# (not recorded: see config.yaml)", []).append(
            run.label)
    for command, labels in by_command.items():
        lines += [f"# {', '.join(labels)}", command]
    return "\n".join([*lines, "```"])


def _provenance_row(run: Run) -> list[str]:
    device = run.summary.get("device", {})
    threads = device.get("threads")
    where = f"{device.get('type')} ({device.get('name')}, {threads} thread{'' if threads == 1 else 's'})"
    versions = ", ".join(f"{name} {version}" for name, version in run.summary.get("versions", {}).items())
    return [run.label, f"`{run.path}`", _format_status(run), where if device else "n/a", versions or "n/a",
            _format_commit(run.summary.get("git_commit"))]


def _format_commit(commit: str | None) -> str:
    if not commit:
        return "n/a"
    clean = commit.removesuffix("-dirty")
    return f"`{clean[:12]}`" + (" + uncommitted changes" if clean != commit else "")


def _format_status(run: Run) -> str:
    stopped_by = run.summary.get("stopped_by")
    return run.status + (f" ({stopped_by})" if stopped_by not in (None, "steps") else "")


# The keys that make a comparison like for like: what every run should share unless the comparison is about
# it. The method's own settings (lr, eps, schedule, ...) are shown beside them but not flagged.
SETUP_KEYS = ("head", "template", "label_words", "pooling", "pair_encoding", "head_init", "train_lm_head", "lora_r",
              "lora_alpha", "target_modules", "batch_size", "grad_accumulation", "max_length", "dtype")
LORA_KEYS = ("lora_r", "lora_alpha", "target_modules", "train_lm_head")  # compared only between runs with LoRA


def setup_section(runs: Sequence[Run]) -> str:
    """Per run, what it trains and on what inputs, with every cell that differs between runs in bold."""
    columns = {"Head": _head_cell, "Pooling": _config_cell("pooling"), "Pair encoding": _config_cell("pair_encoding"),
               "Head init": _config_cell("head_init"), "k-shot": _config_cell("k_shot"),
               "Batch": _config_cell("batch_size"), "Steps": _config_cell("steps"), "lr": _config_cell("lr"),
               "ε": _eps_cell, "Trainable set": _trainable_cell}
    cells = {name: [cell(run) for run in runs] for name, cell in columns.items()}
    rows = [[run.label, *(_bold_if_differs(cells[name], i) for name in columns)] for i, run in enumerate(runs)]
    notes = ["Bold: the value differs between runs. Prompt heads score label words with the masked-LM head at the "
             "mask of the template below; classifier heads are a linear layer on the model's features."]
    templates = dict.fromkeys(_prompt_text(run) for run in runs if _flat_config(run.config).get("head") == "prompt")
    if templates:
        notes.append("Templates (label words in label order): " + "; ".join(templates) + ".")
    return "\n".join(["## Setup", "", markdown_table(["Run", *columns], rows, numbers=False), "",
                      *(f"- {note}" for note in notes)])


def _config_cell(key: str) -> Callable[[Run], str]:
    def cell(run: Run) -> str:
        value = _flat_config(run.config).get(key, "n/a")
        return "none" if value is None else _short_value(value)

    return cell


def _head_cell(run: Run) -> str:
    return str(_flat_config(run.config).get("head", "n/a"))


def _eps_cell(run: Run) -> str:
    return _short_value(_flat_config(run.config).get("eps")) if run.is_mezo else "n/a"


def _prompt_text(run: Run) -> str:
    config = _flat_config(run.config)
    return f"`{config.get('template')}` ({'/'.join(config.get('label_words') or [])})"


def _trainable_cell(run: Run) -> str:
    config = _flat_config(run.config)
    count = format_count(run.summary.get("parameters", {}).get("trainable"))
    if _trains_lora(config):
        targets = ",".join(config.get("target_modules") or []) or "default modules"
        what = f"LoRA r{config.get('lora_r')} ({targets})" + (" + LM head" if config.get("train_lm_head") else "")
    elif config.get("method") == "full" or config.get("params") == "all":
        what = "all weights"
    else:
        what = f"`{config.get('params')}`"
    return f"{what}, {count}"


def _trains_lora(config: dict[str, Any]) -> bool:
    return config.get("method") == "lora" or (config.get("method") == "mezo" and config.get("params") == "lora")


def _bold_if_differs(column: Sequence[str], index: int) -> str:
    known = [value for value in column if value != "n/a"]
    return f"**{column[index]}**" if column[index] != "n/a" and len(set(known)) > 1 else column[index]


def comparison_section(runs: Sequence[Run]) -> str:
    metric = runs[0].main_metric
    name = _metric_title(metric)
    other_metrics = [key.split("/", 1)[1] for key in runs[0].best
                     if key.startswith("test/") and key not in (f"test/{metric}", "test/majority_share")]
    memory_kinds = {peak_memory(run)[1] for run in runs}
    memory_header = f"Peak memory ({memory_kinds.pop()})" if len(memory_kinds) == 1 else "Peak memory"
    classification = any("test/majority_share" in r for run in runs for r in run.evals)
    baseline_name = "Majority class" if classification else "Constant (mean)"
    baseline_rule = ("the most frequent test class" if classification
                     else "the mean test score (a correlation with a constant is undefined: n/a)")
    header = ["Run", "Status", f"Best test {name} (step)", baseline_name, f"Final test {name}",
              *(f"Test {_metric_title(m)} (best)" for m in other_metrics), "Steps", "Forward passes",
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


# Config keys that change how fast a run goes, never what it computes (cache_z: the same run bit for bit,
# tests/methods/test_zeroth_order_method.py), so runs that differ only in them are seeds of one setting.
SPEED_ONLY_KEYS = frozenset({"cache_z"})


def _setting(run: Run) -> dict[str, Any]:
    """The run's config without its seed and speed-only keys: what seeds of one setting share."""
    return {key: value for key, value in _flat_config(run.config).items()
            if key != "seed" and key not in SPEED_ONLY_KEYS}


def seed_groups(runs: Sequence[Run]) -> list[list[Run]]:
    """Runs whose configs are the same but for the seed (which also draws their data, e.g. k-shot samples)
    and speed-only keys, in groups of two or more."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        key = json.dumps(_setting(run), sort_keys=True, default=str)
        groups.setdefault(key, []).append(run)
    return [group for group in groups.values() if len(group) > 1]


def seeds_section(runs: Sequence[Run]) -> str | None:
    """Mean ± standard deviation over seeds of the best test metric, as the MeZO paper reports k-shot results."""
    groups = seed_groups(runs)
    if not groups:
        return None
    metric = runs[0].main_metric
    rows = []
    for group in groups:
        seeds = ", ".join(str(_flat_config(run.config).get("seed")) for run in group)
        best_steps = ", ".join(str(run.best.get("step", "?")) for run in group)
        rows.append([_seed_group_label(group, groups), seeds, str(len(group)),
                     _mean_std([run.best.get(f"test/{metric}") for run in group], metric), best_steps,
                     _mean_std([run.start.get(f"test/{metric}") for run in group], metric),
                     format_metric(group[0].baseline, metric)])
    title = _metric_title(metric)
    header = ["Method", "Seeds", "Runs", f"Best test {title}: mean ± std", "Best steps",
              f"Test {title} at step 0: mean ± std", "Majority class"]
    note = ("Runs whose configs differ only in the seed (which also draws the hold-out and any k-shot sample); "
            "std is the population standard deviation over seeds, as LM-BFF and MeZO report it. Best steps: the "
            "step each seed's validation chose (step 0 means training did not improve on the starting model). "
            "Step 0: the starting model (e.g. a linear-probe head), before any training step.")
    return "\n".join(["## Over seeds", "", markdown_table(header, rows), "", f"- {note}"])


def _mean_std(values: Sequence[float | None], metric: str) -> str:
    """'mean ± std' over the values that are known, with how many when some are not."""
    known = [v for v in values if not _missing(v)]
    if not known:
        return "n/a"
    text = f"{format_metric(float(np.mean(known)), metric)} ± {format_metric(float(np.std(known)), metric)}"
    return text if len(known) == len(values) else f"{text} ({len(known)} of {len(values)})"


def _seed_group_label(group: list[Run], groups: list[list[Run]]) -> str:
    """The method's name, plus the config keys that tell the group from others of the same method."""
    name = method_name(group[0].config.get("method", {}))
    twins = [other[0] for other in groups if method_name(other[0].config.get("method", {})) == name]
    if len(twins) == 1:
        return name
    differing = _differing(twins, _setting)
    position = next(i for i, twin in enumerate(twins) if twin is group[0])
    return f"{name} " + ", ".join(f"{key}={_short_value(values[position])}" for key, values in differing.items())


def _metric_title(metric: str) -> str:
    return {"f1": "F1"}.get(metric, metric)


def _comparison_row(run: Run, metric: str, other_metrics: Sequence[str], *, mixed_memory: bool,
                    with_share: bool) -> list[str]:
    best = run.best
    memory, kind = peak_memory(run)
    trainable = run.summary.get("parameters", {})
    steps, planned = run.steps, run.summary.get("planned_steps")
    row = [
        run.label, _format_status(run),
        f"{format_metric(best.get(f'test/{metric}'), metric)} ({best.get('step', 'n/a')})",
        format_metric(run.baseline, metric),
        format_metric(run.final.get(f"test/{metric}"), metric),
        *(format_metric(best.get(f"test/{m}"), m) for m in other_metrics),
        format_int(steps) + (f" of {format_int(planned)}" if planned not in (None, steps) else ""),
        format_int(run.passes("forward")), format_int(run.passes("backward")),
        format_seconds(run.summary.get("time", {}).get("wall_seconds")), format_seconds(seconds_per_step(run)),
        format_bytes(memory) + (f" ({kind})" if mixed_memory and memory is not None else ""),
        f"{format_count(trainable.get('trainable'))} ({trainable['trainable_percent']:.2f}%)" if trainable else "n/a",
        format_loss(loss_spread(run)),
    ]
    if with_share:
        row.append(f"{len(run.one_class_steps)} of {len(run.evals)}")
    return row


def dynamics_section(runs: Sequence[Run]) -> str:
    metric = runs[0].main_metric
    parts = ["## Training dynamics", "", f"### Test / validation {_metric_title(metric)} at each evaluation", "",
             _evaluations_table(runs, metric), "", "### Loss", "",
             markdown_table(["Run", f"Loss at start (first {LOSS_WINDOW} logged steps)",
                             f"Loss at end (last {LOSS_WINDOW})", "Logged steps"],
                            [[run.label, format_loss(mean_loss(run.train[:LOSS_WINDOW])),
                              format_loss(mean_loss(run.train[-LOSS_WINDOW:])), format_int(len(run.train))]
                             for run in runs])]
    mezo_runs = [run for run in runs if run.is_mezo and run.train]
    if mezo_runs:
        parts += ["", "### MeZO: loss at +εz and −εz", ""]
        for run in mezo_runs:
            parts += [f"{run.label}:", "", _mezo_loss_table(run), ""]
        parts += [_projected_grad_table(mezo_runs), "",
                  f"- The projected gradient g = (loss+ − loss−) / 2ε is the step's directional derivative along the "
                  f"random direction z. Outliers: steps with |g| above {OUTLIER_FACTOR:g}× the run's median |g|."]
    return "\n".join(parts)


def _evaluations_table(runs: Sequence[Run], metric: str) -> str:
    steps = sorted({r["step"] for run in runs for r in run.evals})
    shown = [steps[i] for i in _spread(len(steps), MAX_DYNAMICS_ROWS)]
    by_step = [{r["step"]: r for r in run.evals} for run in runs]
    rows = [[str(step), *(_evaluation_cell(records.get(step), metric) for records in by_step)] for step in shown]
    notes = [f"Cells: test / validation. {ONE_CLASS_MARK}: the model predicted one class for every test example."]
    if len(shown) < len(steps):
        notes.append(f"{len(shown)} of {len(steps)} evaluation steps shown, spread over the run; metrics.jsonl "
                     "holds all.")
    return "\n".join([markdown_table(["Step", *(run.label for run in runs)], rows), "",
                      *(f"- {note}" for note in notes)])


def _evaluation_cell(record: Record | None, metric: str) -> str:
    if record is None:
        return ""
    cell = f"{format_metric(record.get(f'test/{metric}'), metric)} / " \
           f"{format_metric(record.get(f'validation/{metric}'), metric)}"
    return cell + (f" {ONE_CLASS_MARK}" if record.get("test/majority_share") == 1.0 else "")


def _mezo_loss_table(run: Run) -> str:
    chosen = [run.train[i] for i in _spread(len(run.train), MEZO_TABLE_ROWS)]
    rows = [[str(r["step"]), format_loss(r.get("loss_plus")), format_loss(r.get("loss_minus")),
             format_loss(r.get("projected_grad"))] for r in chosen]
    return markdown_table(["Step", "loss+", "loss−", "projected grad"], rows)


def _projected_grad_table(runs: Sequence[Run]) -> str:
    rows = []
    for run in runs:
        stats = projected_grad_stats(run)
        peak, peak_step = highest_perturbed_loss(run)
        rows.append([run.label, format_loss(stats["mean"]), format_loss(stats["std"]), format_loss(stats["mean_abs"]),
                     "n/a" if stats["outlier_share"] is None else f"{100 * stats['outlier_share']:.1f}%",
                     "n/a" if peak is None else f"{format_loss(peak)} (step {peak_step})"])
    return markdown_table(["Run", "mean g", "std g", "mean abs(g)", "outlier steps", "highest loss± (step)"], rows)


def plots_section(names: dict[str, str]) -> str:
    captions = {
        "metrics": "Test metric against steps, training time and forward passes",
        "loss": "Training loss (smoothed; raw trace faint; MeZO's loss+ / loss− band shaded)",
        "cost": "Peak memory and time per step",
    }
    return "\n\n".join(["## Plots", *(f"![{captions[key]}]({name})" for key, name in names.items())])


def findings_section(runs: Sequence[Run]) -> str:
    metric = runs[0].main_metric
    results = [*_accuracy_findings(runs, metric), *_cost_findings(runs), *_budget_findings(runs)]
    warnings = [*_baseline_warnings(runs, metric), *_one_class_warnings(runs), *_status_warnings(runs),
                *_data_warnings(runs), *_setup_warnings(runs), *_device_warnings(runs), *_recorded_warnings(runs)]
    lines = ["## Findings", "", *(f"- {line}" for line in results)]
    if warnings:
        lines += ["", "**Warnings**", "", *(f"- {line}" for line in warnings)]
    return "\n".join(lines)


def _accuracy_findings(runs: Sequence[Run], metric: str) -> list[str]:
    scored = sorted((run for run in runs if not _missing(run.best.get(f"test/{metric}"))),
                    key=lambda run: run.best[f"test/{metric}"], reverse=True)
    if not scored:
        return [f"No run has a test {metric} yet."]
    winner, best = scored[0], scored[0].best[f"test/{metric}"]
    at = ("step 0, before any training step" if winner.best["step"] == 0 else f"step {winner.best['step']}")
    line = f"Best test {_metric_title(metric)}: {winner.label}, {format_metric(best, metric)} ({at})"
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


def _cost_findings(runs: Sequence[Run]) -> list[str]:
    kinds = sorted({peak_memory(run)[1] for run in runs})
    if len(kinds) == 1:
        memory = _ratio_finding(runs, f"Peak memory ({kinds[0]})", "lowest", lambda run: peak_memory(run)[0],
                                format_bytes)
    else:
        memory = f"Peak memory: not compared, the runs measured different things ({', '.join(kinds)})."
    time = _ratio_finding(runs, "Time per step", "fastest", seconds_per_step, format_seconds)
    return [line for line in (memory, time) if line]


def _ratio_finding(runs: Sequence[Run], what: str, best_word: str, measure: Callable[[Run], float | None],
                   show: Callable[[float], str]) -> str | None:
    measured = sorted(((measure(run), run) for run in runs if not _missing(measure(run))), key=lambda pair: pair[0])
    if len(measured) < 2 or measured[0][0] <= 0:
        return None
    (low, lowest), others = measured[0], measured[1:]
    ratios = "; ".join(f"{run.label} {show(value)} ({value / low:.2f}×)" for value, run in others)
    return f"{what}: {best_word} {lowest.label}, {show(low)}; {ratios}."


def _budget_findings(runs: Sequence[Run]) -> list[str]:
    passes = "; ".join(f"{run.label} {format_int(run.passes('forward'))} forward + "
                       f"{format_int(run.passes('backward'))} backward (best after "
                       f"{format_int(_forwards_to_best(run))} forward)" for run in runs)
    findings = [f"Passes used: {passes}."]
    if len({run.steps for run in runs}) > 1:
        findings.append(f"Budgets differ: {_by_run(runs, (f'{format_int(run.steps)} steps' for run in runs))}; "
                        "compare equal steps in the evaluation table below.")
    return findings


def _forwards_to_best(run: Run) -> int | None:
    record = next((r for r in run.evals if r["step"] == run.best.get("step")), None)
    return None if record is None else eval_x(run, record, "forward_passes")


def _by_run(runs: Sequence[Run], texts: Iterable[str]) -> str:
    return ", ".join(f"{run.label} {text}" for run, text in zip(runs, texts, strict=True))


def _baseline_warnings(runs: Sequence[Run], metric: str) -> list[str]:
    return [f"{run.label} did not beat the majority class ({format_metric(run.baseline, metric)}): its best test "
            f"{_metric_title(metric)} is {format_metric(run.best.get(f'test/{metric}'), metric)}."
            for run in runs if run.beats_majority is False]


def _one_class_warnings(runs: Sequence[Run]) -> list[str]:
    return [f"{run.label} predicted one class for every test example at {len(steps)} of {len(run.evals)} "
            f"evaluations ({_list_steps(steps)})."
            for run in runs if (steps := run.one_class_steps)]


def _status_warnings(runs: Sequence[Run]) -> list[str]:
    warnings = []
    for run in runs:
        if not run.summary:
            warnings.append(f"{run.label} left no summary.json (killed before the end?): figures come from "
                            f"metrics.jsonl up to step {format_int(run.steps)}.")
        elif run.status != "completed":
            warnings.append(f"{run.label} {run.status} at step {format_int(run.steps)} of "
                            f"{format_int(run.summary.get('planned_steps'))}.")
    return warnings


def _data_warnings(runs: Sequence[Run]) -> list[str]:
    def data_of(run: Run) -> dict[str, Any]:
        sizes = run.summary.get("data", {}).get("sizes", {})
        return {**{f"{split} size": n for split, n in sizes.items()}, **run.config.get("data", {})}

    return _difference_warning(runs, data_of, "Not comparable: the runs differ in their data")


def _setup_warnings(runs: Sequence[Run]) -> list[str]:
    """The like-for-like keys (SETUP_KEYS) whose values differ: LoRA's own between the runs that use LoRA."""
    lora_runs = [run for run in runs if _trains_lora(_flat_config(run.config))]

    def setup_of(run: Run) -> dict[str, Any]:
        config = _flat_config(run.config)
        shared = [key for key in SETUP_KEYS if key not in LORA_KEYS or run in lora_runs]
        return {key: config[key] for key in shared if key in config}

    return _difference_warning(runs, setup_of, "Not like for like: the runs differ beyond the method in their setup")


def _device_warnings(runs: Sequence[Run]) -> list[str]:
    def device_of(run: Run) -> dict[str, Any]:
        device = run.summary.get("device", {})
        return {"device": f"{device['type']} ({device['name']})", "threads": device["threads"]} if device else {}

    return _difference_warning(runs, device_of, "Time and memory not comparable: the runs ran on different machines")


def _difference_warning(runs: Sequence[Run], values: Callable[[Run], dict[str, Any]], lead: str) -> list[str]:
    differing = _differing(runs, values)
    details = "; ".join(f"{key} ({_by_run(runs, map(_short_value, column))})" for key, column in differing.items())
    return [f"{lead}: {details}."] if differing else []


def _recorded_warnings(runs: Sequence[Run]) -> list[str]:
    """The runs' own warnings, one line per message with its steps; one-class ones are already reported above."""
    lines = []
    for run in runs:
        grouped: dict[str, list[int]] = {}
        for warning in run.summary.get("warnings", []):
            match = re.fullmatch(r"step (\d+): (.*)", warning, flags=re.DOTALL)
            message = match.group(2) if match else warning
            if message.startswith("the model predicts one class"):
                continue
            grouped.setdefault(message, []).extend([int(match.group(1))] if match else [])
        lines += [f"{run.label}: {message}" + (f" ({_list_steps(steps)})." if steps else "")
                  for message, steps in grouped.items()]
    return lines


# -- plots -----------------------------------------------------------------------------------------------


def plot_style(index: int) -> dict[str, Any]:
    """Colour, marker and line style of the index-th run: each round of the colours gets the next line style,
    so that runs stay apart in plots whose lines carry no markers (the loss plot)."""
    return {"color": COLORS[index % len(COLORS)], "marker": MARKERS[index % len(MARKERS)],
            "linestyle": LINESTYLES[index // len(COLORS) % len(LINESTYLES)]}


def _axis_unit(largest: float, units: Sequence[tuple[str, float]], at_least: float = 1) -> tuple[str, float]:
    """The largest of `units` (given large to small) in which `largest` reads as at least `at_least`."""
    return next(((name, size) for name, size in units if largest >= at_least * size), units[-1])


def _curve(run: Run, x_key: str, y_key: str) -> list[tuple[float, float, bool]]:
    """(x, y, one class predicted) at each evaluation that has both values."""
    points = [(eval_x(run, r, x_key), r.get(y_key), r.get("test/majority_share") == 1.0) for r in run.evals]
    return [(x, y, one_class) for x, y, one_class in points if x is not None and not _missing(y)]


def plot_metric_curves(runs: Sequence[Run], path: Path) -> None:
    metric = runs[0].main_metric
    scale = 100 if metric in PERCENT_METRICS else 1
    longest = max((eval_x(run, r, "train_seconds") or 0 for run in runs for r in run.evals), default=0)
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
        for baseline in sorted({run.baseline for run in runs if not _missing(run.baseline)}):
            ax.axhline(baseline * scale, color="0.35", linestyle="--", linewidth=1.2,
                       label=f"majority class ({format_metric(baseline, metric)})")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test {_metric_title(metric)}" + (" (%)" if scale == 100 else ""))
    figure.suptitle(f"{runs[0].task}: test {_metric_title(metric)} by budget")
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


def plot_loss(runs: Sequence[Run], path: Path) -> None:
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
        status = "" if run.status == "completed" else f" [{run.status}]"
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


def plot_costs(runs: Sequence[Run], path: Path) -> None:
    figure = Figure(figsize=(11, 4.5), layout="constrained")
    memory_ax, time_ax = figure.subplots(1, 2)
    memory = [peak_memory(run)[0] for run in runs]
    kinds = " / ".join(sorted({peak_memory(run)[1] for run in runs}))
    _bars(memory_ax, runs, memory, format_bytes, f"peak memory ({kinds})", [("GB", 1e9), ("MB", 1e6)])
    _bars(time_ax, runs, [seconds_per_step(run) for run in runs], format_seconds, "time per training step",
          [("s", 1), ("ms", 1e-3)])
    figure.suptitle(f"{runs[0].task}: cost per method")
    figure.savefig(path, dpi=PLOT_DPI, bbox_inches="tight")  # long run labels stay inside


def _bars(ax: Any, runs: Sequence[Run], values: list[float | None], show: Callable[[float | None], str],
          quantity: str, units: Sequence[tuple[str, float]]) -> None:
    unit, size = _axis_unit(max((v for v in values if not _missing(v)), default=0), units)
    heights = [0 if _missing(v) else v / size for v in values]
    bars = ax.bar(range(len(runs)), heights, color=[plot_style(i)["color"] for i in range(len(runs))])
    ax.bar_label(bars, [show(v) for v in values], padding=2)
    ax.set_ylabel(f"{quantity} ({unit})")
    ax.margins(y=0.15)
    labels = [run.label for run in runs]
    crowded = sum(map(len, labels)) > 50  # labels side by side would overlap on a 5-inch panel
    ax.set_xticks(range(len(runs)), labels, rotation=25 if crowded else 0, ha="right" if crowded else "center")
    ax.grid(axis="y", alpha=0.3)


# -- the report ------------------------------------------------------------------------------------------

PLOTS = {"metrics": plot_metric_curves, "loss": plot_loss, "cost": plot_costs}


def write_report(run_dirs: Sequence[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Write report.md and its PNG plots into the folder `out`; returns the path of report.md."""
    if not run_dirs:
        raise ZoftError("a report needs at least one run folder")
    runs = label_runs([load_run(path) for path in run_dirs])
    _check_same_task(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = {key: f"{key}.png" for key in PLOTS}
    for key, plot in PLOTS.items():
        plot(runs, out / names[key])
    methods = " vs ".join(run.label for run in runs) if len(runs) <= 4 else f"{len(runs)} runs"
    title = title or f"{runs[0].task.upper()}: {methods}"
    sections = [header_section(runs, title), findings_section(runs), setup_section(runs), comparison_section(runs),
                seeds_section(runs),
                dynamics_section(runs), plots_section(names)]
    report = out / "report.md"
    report.write_text("\n\n".join(section for section in sections if section) + "\n")
    return report

"""Synthetic run folders, written as `zoft train` writes them (config.yaml, metrics.jsonl, summary.json), for
report tests that need no training: a dozen records each, numbers chosen so that every section has content.

The shapes follow real runs of the tiny BERT on 64 MRPC examples (tests/report/test_end_to_end.py trains one):
6 steps, an evaluation at steps 0, 3 and 6, a train record at every step; MRPC's test split has 408 examples,
279 of them the majority class.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import yaml

from zoft.runs import DataInfo, Device, ParameterCount, Passes, Status, Summary, Timing

MAJORITY = 279 / 408  # MRPC's test split


def config_of(task: str, method: str, *, seed: int, lr: float | None, cache_z: bool, log_every: int,
              max_forward_passes: int | None) -> dict[str, Any]:
    """A resolved config as config.yaml holds it: every section, the keys the report reads among them."""
    mezo = method == "mezo"
    return {
        "data": {"task": task, "data_dir": "glue", "k_shot": None, "train_limit": 64, "validation_fraction": 0.02,
                 "max_length": 64},
        "model": {"model": "tiny-bert", "dtype": "float32", "lora_r": 8, "lora_alpha": 16.0, "target_modules": None,
                  "head": "classifier", "template": None, "label_words": None, "pooling": "cls",
                  "pair_encoding": "joint", "head_init": "random", "train_lm_head": False},
        "method": {"method": method, "params": "lora" if mezo else None,
                   "lr": lr if lr is not None else (1e-4 if mezo else 1e-3), "schedule": "constant", "eps": 1e-3,
                   "grad_accumulation": 1, "cache_z": cache_z},
        "train": {"steps": 6, "max_forward_passes": max_forward_passes, "max_minutes": None, "batch_size": 8,
                  "eval_every": 3, "log_every": log_every, "seed": seed,
                  "select_metric": "pearson" if task == "stsb" else "accuracy"},
    }


def _scores(task: str, step: int, wobble: float) -> dict[str, float]:
    if task == "stsb":
        value = 0.1 + 0.05 * step + wobble
        return {f"{split}/{metric}": value - (0.01 if split == "test" else 0) for split in ("validation", "test")
                for metric in ("pearson", "spearman")}
        # regression has no majority share
    one_class = step == 0  # the untrained head predicts the majority class everywhere
    accuracy = MAJORITY if one_class else 0.62 + 0.01 * step + wobble
    return {"validation/accuracy": 0.6 + 0.02 * step + wobble, "validation/f1": 0.7 + wobble,
            "validation/majority_share": 1.0 if one_class else 0.8, "test/accuracy": accuracy,
            "test/f1": 0.75 + 0.01 * step + wobble, "test/majority_share": 1.0 if one_class else 0.85}


def records_of(task: str, method: str, *, seed: int, lr: float, steps: int, log_every: int,
               diverge_at: int | None) -> list[dict[str, Any]]:
    """metrics.jsonl: an evaluation at steps 0, 3, 6, a train record every `log_every` steps."""
    mezo = method == "mezo"
    forwards = 2 if mezo else 1
    # seeds and learning rates move the scores a little; MeZO stays below the majority class (a flagged run)
    wobble = 0.003 * (seed % 7) + 0.002 * math.log10(lr) - (0.03 if mezo else 0)
    records = [{"kind": "eval", "step": 0, "forward_passes": 0, "train_seconds": 0.0, "eval_seconds": 0.1,
                **_scores(task, 0, wobble)}]
    for step in range(1, steps + 1):
        loss = math.nan if step == diverge_at else 0.69 - 0.01 * step + wobble
        train = {"kind": "train", "step": step, "loss": loss, "lr": lr, "examples_seen": 8 * step, "epoch": step / 8,
                 "forward_passes": forwards * step, "backward_passes": 0 if mezo else step, "step_seconds": 0.02,
                 "train_seconds": 0.02 * step}
        if mezo:
            train.update(loss_plus=loss + 0.002, loss_minus=loss - 0.002, projected_grad=2.0 if step % 2 else -1.0)
        if step % log_every == 0 or step == diverge_at:
            records.append(train)
        if step == diverge_at:
            break
        if step % 3 == 0:
            records.append({"kind": "eval", "step": step, "forward_passes": forwards * step,
                            "train_seconds": 0.02 * step, "eval_seconds": 0.1, **_scores(task, step, wobble)})
    return records


def build_summary(task: str, method: str, records: list[dict[str, Any]], *, seed: int, folder: Path,
               diverge_at: int | None, stopped_by: str) -> Summary:
    evals = [r for r in records if r["kind"] == "eval"]
    select = "validation/pearson" if task == "stsb" else "validation/accuracy"
    chosen = max(evals, key=lambda r: r[select])  # the first maximum, as the loop keeps it
    main = select.split("/")[1]
    baseline = ({"split": "test", "mean": 2.7, "mse": 2.2, "pearson": math.nan, "spearman": math.nan}
                if task == "stsb" else {"split": "test", "accuracy": MAJORITY, "f1": 0.8122, "label": 1,
                                        "share": MAJORITY})
    steps = diverge_at or 6
    mezo = method == "mezo"
    warnings = [f"step {r['step']}: the model predicts one class for every test example (the majority class is "
                f"68.38% of the test split)" for r in evals if r.get("test/majority_share") == 1.0]
    if diverge_at:
        warnings.append(f"step {diverge_at}: the loss is nan, diverged from 0.6813 at the start; training stopped")
    split = {key: value for key, value in chosen.items() if "/" in key}
    return Summary(
        status=Status.DIVERGED if diverge_at else Status.COMPLETED, task=task, model="tiny-bert", method=method,
        params="lora" if mezo else None, steps=steps, planned_steps=6, stopped_by=stopped_by, select_key=select,
        best={"step": chosen["step"], **split},
        final={"step": evals[-1]["step"], **{key: value for key, value in evals[-1].items() if "/" in key}},
        majority_baseline=baseline,
        beats_majority=None if math.isnan(baseline[main]) else split[f"test/{main}"] > baseline[main],
        parameters=ParameterCount(trainable=2_114, total=1_000_000, trainable_percent=0.2114),
        passes=Passes(forward=(2 if mezo else 1) * steps, backward=0 if mezo else steps), examples_seen=8 * steps,
        time=Timing(wall_seconds=3.0, train_seconds=0.02 * steps, eval_seconds=0.3, seconds_per_step=0.02),
        memory={"device": "cpu", "train_peak_rss_bytes": 566_943_744, "process_peak_rss_bytes": 600_000_000},
        data=DataInfo(source="glue folder glue/MRPC", sizes={"train": 63, "validation": 1, "test": 408}),
        warnings=warnings, device=Device(type="cpu", name="x86_64", threads=1),
        versions={"python": "3.11.7", "zoft": "0.1.0"}, git_commit="0123456789abcdef-dirty",
        command=["zoft", "train", "--out", str(folder), "--method", method, "--seed", str(seed)],
        started_at="2026-12-01T00:00:00+00:00",
    )


def write_run(folder: Path, *, method: str = "lora", task: str = "mrpc", seed: int = 13, lr: float | None = None,
              cache_z: bool = False, log_every: int = 1, diverge_at: int | None = None, summary: bool = True,
              max_forward_passes: int | None = None, stopped_by: str = "steps", format_0: bool = False) -> Path:
    """A run folder like `zoft train` leaves it. summary=False: killed before its summary.json; format_0: a
    summary.json without the format key and with stopped_by in prose, as zoft wrote it before."""
    config = config_of(task, method, seed=seed, lr=lr, cache_z=cache_z, log_every=log_every,
                       max_forward_passes=max_forward_passes)
    records = records_of(task, method, seed=seed, lr=config["method"]["lr"], steps=6, log_every=log_every,
                         diverge_at=diverge_at)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary:
        document = build_summary(task, method, records, seed=seed, folder=folder, diverge_at=diverge_at,
                              stopped_by=stopped_by).to_json()
        if format_0:
            del document["format"]
            if stopped_by == "max_forward_passes":
                document["stopped_by"] = f"budget of {max_forward_passes} forward passes"
        (folder / "summary.json").write_text(json.dumps(document, indent=2))
    return folder


# -- reading a report and its runs in tests ------------------------------------------------------------


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def eval_records(run: Path) -> list[dict]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r for r in records if r["kind"] == "eval"]


def section(report: str, title: str) -> str:
    """The text of one '## title' section."""
    return report.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[dict[str, str]]:
    """The first Markdown table in `text`, as one {header: cell} per row."""
    lines = text[text.index("\n|") + 1:].split("\n\n", 1)[0].splitlines()
    header, *rows = ([cell.strip() for cell in line.strip("|").split(" | ")] for line in lines)
    return [dict(zip(header, row, strict=True)) for row in rows[1:]]


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("model", "checkpoint", "predictions"))
    return to

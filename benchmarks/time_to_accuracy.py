"""Time to accuracy: how long a run takes to first reach given test accuracies, read from its metrics.jsonl.

    python benchmarks/time_to_accuracy.py table RUN_FOLDER...         # existing run folders: no torch, a second
    flock /tmp/zoft-cpu.lock python benchmarks/time_to_accuracy.py run ARM... --out DIR   # train, then the table

The arms (issue 13 item 5), each the project's own settings (the README's main job and docs/results.md) with
a short budget of forward passes: a budget stops a run without changing its lr schedule, so its evaluations
are the ones a full-length run would make up to there.

- sst2-prompt-lora: `--preset sst2-bert-tiny-mlm-lora` (prompt LoRA, lr 1e-3, 1,000 planned steps, an
  evaluation every 100), SST-2 k = 512, seed 13; budget 600 forwards (600 steps, about a minute here).
- sst2-prompt-mezo-lora: `--preset sst2-bert-tiny-mlm-mezo-lora` (prompt MeZO (LoRA), lr 1e-3, eps 1e-2,
  constant lr, an evaluation every 250), same data; budget 7,000 forwards (3,500 steps, about 2½ minutes).
- mrpc-minilm-lora: `zoft train --task mrpc --model minilm --method lora` (the defaults: lr 5e-4, 1,000
  planned steps, an evaluation every 100); budget 400 forwards (400 steps, about 4½ minutes).

`run` trains each arm named into DIR/ARM (a finished one is kept) with `zoft train` in a subprocess, then
prints the table for them. Thresholds: SST-2 60%, 65%, 70%; MRPC 75%, 80% (`--thresholds` replaces them for
every run of a table). The time of a threshold is the loop's elapsed time at the first evaluation whose
test accuracy reaches it: training seconds so far plus the seconds of every evaluation up to and including
that one (model loading and tokenising are not in it); "not reached" names the last step evaluated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SST2 = ("--task", "sst2", "--model", "bert-tiny-mlm", "--k-shot", "512", "--seed", "13")
ARMS: dict[str, tuple[str, ...]] = {
    "sst2-prompt-lora": (*SST2, "--preset", "sst2-bert-tiny-mlm-lora", "--max-forward-passes", "600"),
    "sst2-prompt-mezo-lora": (*SST2, "--preset", "sst2-bert-tiny-mlm-mezo-lora", "--max-forward-passes", "7000"),
    "mrpc-minilm-lora": ("--task", "mrpc", "--model", "minilm", "--method", "lora", "--max-forward-passes", "400"),
}
THRESHOLDS = {"sst2": (0.60, 0.65, 0.70), "mrpc": (0.75, 0.80)}


@dataclass
class Reached:
    threshold: float
    step: int | None  # None: not reached
    train_seconds: float
    elapsed_seconds: float  # training plus the evaluations so far
    accuracy: float  # the test accuracy of that evaluation (of the last one when not reached)


def time_to_accuracy(metrics: Path, thresholds: tuple[float, ...]) -> list[Reached]:
    """For each threshold, the first evaluation whose test accuracy reaches it (or the last evaluation)."""
    evals = [record for record in map(json.loads, metrics.read_text().splitlines()) if record["kind"] == "eval"]
    if not evals:
        raise SystemExit(f"{metrics}: no evaluation recorded")
    reached: list[Reached] = []
    for threshold in thresholds:
        eval_seconds = 0.0
        for record in evals:
            eval_seconds += record["eval_seconds"]
            accuracy = record["test/accuracy"]
            if accuracy >= threshold:
                reached.append(Reached(threshold, record["step"], record["train_seconds"],
                                       record["train_seconds"] + eval_seconds, accuracy))
                break
        else:
            last = evals[-1]
            reached.append(Reached(threshold, None, last["train_seconds"], last["train_seconds"] + eval_seconds,
                                   last["test/accuracy"]))
    return reached


def print_table(folders: list[Path], thresholds: tuple[float, ...] | None) -> None:
    print(f"{'run':<26}{'test acc ≥':>11}{'step':>7}{'train s':>9}{'elapsed s':>11}  majority class; commit, machine")
    for folder in folders:
        summary = json.loads((folder / "summary.json").read_text())
        task = summary["task"]
        device = summary["device"]
        # The majority class's share of the test split: an accuracy means something only above it.
        where = (f"majority {summary['majority_baseline']['accuracy']:.2%}; {(summary.get('git_commit') or '?')[:7]}, "
                 f"{device['type']} {device.get('threads', '')} threads")
        for row in time_to_accuracy(folder / "metrics.jsonl", thresholds or THRESHOLDS.get(task, (0.5,))):
            if row.step is None:
                step = f"not reached by step {summary['steps']} (best test {best_test(folder):.2%})"
                print(f"{folder.name:<26}{row.threshold:>11.0%}  {step}; {row.elapsed_seconds:.1f} s  {where}")
            else:
                print(f"{folder.name:<26}{row.threshold:>11.0%}{row.step:>7}{row.train_seconds:>9.1f}"
                      f"{row.elapsed_seconds:>11.1f}  {where}")


def best_test(folder: Path) -> float:
    records = map(json.loads, (folder / "metrics.jsonl").read_text().splitlines())
    return max(record["test/accuracy"] for record in records if record["kind"] == "eval")


def train(arm: str, out: Path, data_dir: str) -> Path:
    """`zoft train` for one arm into OUT/ARM; a folder that holds the finished run is kept as it is."""
    folder = out / arm
    if (folder / "summary.json").is_file():
        return folder
    command = [sys.executable, "-m", "zoft", "train", *ARMS[arm], "--data-dir", data_dir, "--quiet",
               "--out", str(folder), "--overwrite"]
    subprocess.run(command, check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("table", help="the table of existing run folders")
    table.add_argument("folders", nargs="+", type=Path)
    run = commands.add_parser("run", help="train the arms named (all by default) into --out, then the table")
    run.add_argument("arms", nargs="*", default=list(ARMS), help=f"of {', '.join(ARMS)}")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--data-dir", default=os.environ.get("GLUE_DIR", str(REPO.parent / "shared/glue_data")))
    for sub in (table, run):
        sub.add_argument("--thresholds", type=lambda text: tuple(float(t) for t in text.split(",")),
                         help="comma-separated test accuracies, e.g. 0.6,0.7 (default: per task)")
    args = parser.parse_args()
    if args.command == "run" and set(args.arms) - set(ARMS):
        parser.error(f"unknown arm(s) {', '.join(sorted(set(args.arms) - set(ARMS)))}; known: {', '.join(ARMS)}")
    folders = args.folders if args.command == "table" else [train(arm, args.out, args.data_dir) for arm in args.arms]
    print_table(folders, args.thresholds)


if __name__ == "__main__":
    main()

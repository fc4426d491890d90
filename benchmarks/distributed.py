"""Data-parallel zoft on this machine: 2 Gloo ranks of 1 thread each against 1 process of 1 thread.

    flock /tmp/zoft-cpu.lock .venv/bin/python benchmarks/distributed.py [--model minilm] [--steps 20]
                                                                        [--out benchmarks/results/distributed.json]

For MeZO (LoRA) in each zo_parallel mode and for LoRA by backprop (DDP), `zoft train` runs the same config on
MRPC (batch 16, the same global batch in both: the 2 ranks take 8 rows each) once as 1 process and once with
`--nproc 2` (torchrun, OMP_NUM_THREADS=1 in every process). Seconds per step are the summary's training seconds
over its steps (evaluation not counted); bytes per step are what a rank puts into the step's collectives
(summary.distributed.step_exchange_bytes: MeZO's scalars, DDP's gradient buckets and the loss). Speed-up = the
1-process seconds per step over the 2-process ones, scaling efficiency = speed-up / 2. direction-per-rank
does twice the directions per step of the 1-process run (n-SPSA across ranks), so its speed-up is in
directions per second: 2 x the 1-process seconds per step over its own. Writes the JSON and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

GLUE = os.environ.get("GLUE_DIR", str(Path(__file__).resolve().parents[1] / "../shared/glue_data"))
VARIANTS: dict[str, list[str]] = {
    "mezo-lora shared-direction": ["--method", "mezo-lora", "--zo-parallel", "shared-direction"],
    "mezo-lora direction-per-rank": ["--method", "mezo-lora", "--zo-parallel", "direction-per-rank"],
    "lora (DDP)": ["--method", "lora"],
}


def run(args: argparse.Namespace, variant: list[str], nproc: int, out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "zoft", "train", "--model", args.model, "--task", "mrpc", "--data-dir", GLUE,
               "--train-limit", "512", "--validation-fraction", "0.05", "--test-limit", "32", "--batch-size", "16",
               "--steps", str(args.steps), "--eval-every", str(10 * args.steps), "--checkpoint-every", "0",
               "--replica-check-every", "0", "--group-by-length", "false", "--quiet", "--out", str(out), *variant]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    finished = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    if finished.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{finished.stderr}")
    summary = json.loads((out / "summary.json").read_text())
    return {"seconds_per_step": summary["time"]["seconds_per_step"],
            "threads": summary["device"]["threads"],
            "step_exchange_bytes": (summary.get("distributed") or {}).get("step_exchange_bytes", 0),
            "forward_passes_per_step": summary["passes"]["forward"] / summary["steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/distributed.json")
    args = parser.parse_args()
    results: dict[str, Any] = {"model": args.model, "steps": args.steps, "batch": 16, "variants": {}}
    with tempfile.TemporaryDirectory() as scratch:
        for name, variant in VARIANTS.items():
            one = run(args, variant, 1, Path(scratch) / f"{len(results['variants'])}-one")
            two = run(args, variant, 2, Path(scratch) / f"{len(results['variants'])}-two")
            work = 2 if "direction-per-rank" in name else 1  # directions per step relative to one process
            speedup = work * one["seconds_per_step"] / two["seconds_per_step"]
            results["variants"][name] = {"one_process": one, "two_ranks": two, "speedup": speedup,
                                         "scaling_efficiency": speedup / 2}
            print(f"{name}: {json.dumps(results['variants'][name])}", file=sys.stderr, flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"{args.model}, MRPC, batch 16, {args.steps} steps; 1 process x 1 thread vs 2 Gloo ranks x 1 thread\n")
    print("| variant | s/step, 1 process | s/step, 2 ranks | bytes/step a rank sends | speed-up | efficiency |")
    print("|---|---|---|---|---|---|")
    for name, row in results["variants"].items():
        one, two = row["one_process"], row["two_ranks"]
        print(f"| {name} | {one['seconds_per_step']:.4f} | {two['seconds_per_step']:.4f} "
              f"| {two['step_exchange_bytes']:,} | {row['speedup']:.2f} | {row['scaling_efficiency']:.0%} |")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()

"""One row of the MeZO paper's Table 18: RoBERTa-large, SST-2, k = 16 per class, prompt-based, MeZO (full).

    python benchmarks/mezo_table18.py --data-dir ../shared/glue_data [--steps 10000] [--seeds 13,21,42,87,100]

Runs `zoft train --preset paper-kshot-mezo-full` once per seed in a fresh process: the paper's settings
(medium_models/mezo.sh of princeton-nlp/MeZO), the SST-2 template "{s1} It was {mask}." with terrible/great,
batch 64, lr 1e-6, eps 1e-3, no weight decay, constant learning rate, MeZO on all parameters, max length 128.
The seed draws the k-shot train and validation examples as the paper's data script does and drives training;
the test set is the GLUE SST-2 dev set (872 examples), the paper's test set too. The checkpoint chosen on
validation (never step 0, as in the paper's code) is the one scored. The paper trains 100K steps (hours per
seed on one GPU); the default here is a shorter check, and accuracy then lies between the zero-shot prompt
and the paper's number.

Prints each seed's test accuracy and the mean ± std over seeds (population std, as LM-BFF's
tools/gather_result.py reports it), next to the paper's numbers. Needs a CUDA GPU, roberta-large in the
Hugging Face cache or a reachable hub, and the GLUE SST-2 folder; it says so at once when one is missing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

PAPER_SEEDS = [13, 21, 42, 87, 100]
# Quoted, not measured: Malladi et al. 2023, Table 18 (RoBERTa-large, k = 16, SST-2 test accuracy, mean (std)
# over the five seeds), printed beside zoft's measured numbers for comparison.
PAPER = [("zero-shot prompt", "79.0"), ("MeZO, 100K steps", "90.5 (1.2)"), ("fine-tuning with Adam", "91.9 (1.8)")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="GLUE folder holding SST-2/ (default: $GLUE_DIR)")
    parser.add_argument("--seeds", type=_seeds, default=PAPER_SEEDS, help="comma-separated (default: the paper's)")
    parser.add_argument("--steps", type=int, default=10_000, help="MeZO steps per seed (the paper: 100000)")
    parser.add_argument("--eval-every", type=int, help="evaluate every this many steps (default: steps / 10)")
    parser.add_argument("--model", default="roberta-large")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--eps", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default="runs/mezo-table18", help="folder for one run folder per seed")
    parser.add_argument("--overwrite", action="store_true", help="replace runs already in --out")
    return parser.parse_args(argv)


def _seeds(text: str) -> list[int]:
    return [int(seed) for seed in text.split(",") if seed.strip()]


PRESET = "paper-kshot-mezo-full"


def train_overrides(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The config keys of one seed's run beside the preset (what `zoft train` receives as --key value)."""
    overrides = {
        "model": args.model, "task": "sst2", "seed": seed, "lr": args.lr, "eps": args.eps,
        "batch_size": args.batch_size, "steps": args.steps, "eval_every": args.eval_every or max(1, args.steps // 10),
        "checkpoint_every": 0, "device": "cuda",
    }
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    return overrides


def train_argv(args: argparse.Namespace, seed: int) -> list[str]:
    """`zoft` arguments of one seed's run."""
    options = [item for key, value in train_overrides(args, seed).items()
               for item in (f"--{key.replace('_', '-')}", str(value))]
    return ["train", "--out", str(run_folder(args, seed)), "--preset", PRESET, *options,
            *(["--overwrite"] if args.overwrite else [])]


def run_folder(args: argparse.Namespace, seed: int) -> Path:
    return Path(args.out) / f"seed{seed}"


def check_prerequisites(args: argparse.Namespace) -> None:
    """Fail in seconds, not after a model download: a GPU, the model, the data."""
    import torch

    from zoft import presets
    from zoft.config import build_config
    from zoft.data.splits import load_task_data
    from zoft.pretrained import resolve_model_path

    if not torch.cuda.is_available():
        sys.exit("mezo_table18: needs a CUDA GPU (RoBERTa-large, batch 64, thousands of steps); torch sees none")
    config = build_config(presets.find(PRESET, [])[0], train_overrides(args, args.seeds[0]))
    resolve_model_path(config.model.model)  # a ZoftError when neither the hub cache nor the hub has it
    load_task_data(config.data, seed=config.train.seed)  # a ZoftError when SST-2 is not there


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Train one seed in its own process (GPU memory starts empty each time); return its summary."""
    command = [sys.executable, "-m", "zoft", *train_argv(args, seed)]
    print("$ " + " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        sys.exit(f"mezo_table18: the run of seed {seed} failed; see {run_folder(args, seed)}")
    return json.loads((run_folder(args, seed) / "summary.json").read_text())


def print_results(args: argparse.Namespace, summaries: dict[int, dict[str, Any]]) -> None:
    accuracies = {seed: 100 * summary["best"]["test/accuracy"] for seed, summary in summaries.items()}
    print(f"\nRoBERTa-large, SST-2, k = 16, prompt, MeZO (all parameters), {args.steps} steps, batch "
          f"{args.batch_size}, lr {args.lr:g}, eps {args.eps:g}; test = GLUE dev, checkpoint chosen on validation")
    for seed, accuracy in accuracies.items():
        print(f"  seed {seed:>3}: {accuracy:.1f} (best step {summaries[seed]['best']['step']})")
    values = list(accuracies.values())
    spread = f" ({statistics.pstdev(values):.1f})" if len(values) > 1 else ""
    print(f"zoft: {statistics.mean(values):.1f}{spread} over {len(values)} seed(s)")
    print("paper, quoted (Malladi et al. 2023, Table 18): " + "; ".join(f"{name} {value}" for name, value in PAPER))


def main(argv: list[str] | None = None) -> None:
    from zoft.errors import ZoftError

    args = parse_args(argv)
    try:
        check_prerequisites(args)
    except ZoftError as error:
        sys.exit(f"mezo_table18: {error}")
    print_results(args, {seed: run_seed(args, seed) for seed in args.seeds})


if __name__ == "__main__":
    main()

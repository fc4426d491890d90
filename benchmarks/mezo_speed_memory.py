"""MeZO's cost next to inference and backprop, measured side by side in one run on one model and batch.

    .venv/bin/python benchmarks/mezo_speed_memory.py [--model minilm] [--batch-size 16] [--repeats 20]
                                                     [--random-init] [--device cuda] [--profile mezo-all]

Prints, with the targets of the MeZO issue:
  - MeZO step time ÷ (2 × inference forward time), for params lora and params all   (target ≤ 1.10)
  - MeZO peak memory ÷ inference peak memory, same batch                            (target ≤ 1.10)
  - MeZO step time ÷ LoRA backprop step time (for the record)
  - MeZO(LoRA) step time with z cached between the passes ÷ without (the cache_z choice)

Times are medians over interleaved repetitions in one process (the machine's noise hits every variant
alike). Peak memory is measured for each variant in a fresh process: the GPU allocator's peak on CUDA,
else the peak resident memory sampled during the measured steps (model loading excluded).
`--random-init` builds the model from the folder's config.json with random weights (time and memory do not
depend on the weight values), so that a model's shape can be measured where its weights are not at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from zoft.config import DataConfig, MethodConfig, ModelConfig
from zoft.data.batches import BatchStream, encode, to_device
from zoft.data.splits import load_task_data
from zoft.measure import MemoryReport, measure_memory, pick_device, synchronize
from zoft.methods import build_method
from zoft.models import load_model, prepare_trainable

VARIANTS = ("inference-lora", "mezo-lora", "inference-all", "mezo-all", "backprop-lora")
REPO = Path(__file__).resolve().parents[1]


def setup(variant: str, args: argparse.Namespace, device: torch.device):
    """Model and a one-step function for a variant, plus the fixed batch it runs on."""
    torch.manual_seed(0)
    kind, params = variant.split("-")
    model, tokenizer = load_benchmark_model(args)
    method = "lora" if kind == "backprop" else "mezo"
    model = prepare_trainable(model, ModelConfig(), method, params if method == "mezo" else None).to(device)
    batch = to_device(fixed_batch(args, tokenizer), device)
    if kind == "inference":
        return inference_step(model, batch), model
    config = MethodConfig(method=method, params=params if method == "mezo" else None, lr=1e-6 if method == "mezo"
                          else 1e-4, weight_decay=0.0, schedule="constant", warmup_ratio=0.0)
    trainer = build_method(model, config, total_steps=10**6, seed=0)
    return (lambda: trainer.step([batch])), trainer


def inference_step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One forward of `batch` without its labels (no loss), in eval mode under inference_mode: the floor that
    MeZO's two forwards are measured against."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model.eval()

    def infer() -> None:
        with torch.inference_mode():
            model(**inputs)

    return infer


def mezo_model_and_batch(params: str, args: argparse.Namespace,
                         device: torch.device) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The benchmark model made trainable for MeZO on `params` (lora or all), on `device`, and the fixed batch."""
    torch.manual_seed(0)
    model, tokenizer = load_benchmark_model(args)
    model = prepare_trainable(model, ModelConfig(), "mezo", params).to(device)
    return model, to_device(fixed_batch(args, tokenizer), device)


def fixed_batch(args: argparse.Namespace, tokenizer: object) -> dict[str, torch.Tensor]:
    """The one batch every variant steps on: the first of MRPC's training stream at seed 0, on the CPU."""
    data = load_task_data(DataConfig(task="mrpc", data_dir=args.data_dir), seed=0)
    return next(BatchStream(encode(data.splits["train"], tokenizer, 128), tokenizer, args.batch_size, 0))


def load_benchmark_model(args: argparse.Namespace) -> tuple[torch.nn.Module, object]:
    if not args.random_init:
        return load_model(ModelConfig(model=args.model), num_labels=2)
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(args.model, num_labels=2)
    return AutoModelForSequenceClassification.from_config(config), AutoTokenizer.from_pretrained(args.model)


def seconds_of_one_call(step: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    step()
    synchronize(device)
    return time.perf_counter() - start


def measure_times(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    steps = {variant: setup(variant, args, device)[0] for variant in VARIANTS}
    cached_step, cached = setup("mezo-lora", args, device)
    cached.optimizer.cache_z = True
    steps["mezo-lora-cached"] = cached_step
    samples = interleaved_samples(steps, args.repeats, device)
    return {name: statistics.median(values) for name, values in samples.items()}


def interleaved_samples(steps: dict[str, Callable[[], object]], repeats: int,
                        device: torch.device) -> dict[str, list[float]]:
    """Seconds of each step over `repeats` rounds, each round calling every step once, after one warm-up call;
    sample i of every step is from round i."""
    for step in steps.values():  # warm-up: allocator, kernels, first-call overheads
        step()
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(repeats):
        # The order reverses every round, so that no step always runs right after the same other one.
        for name in list(steps) if round_ % 2 == 0 else reversed(list(steps)):
            samples[name].append(seconds_of_one_call(steps[name], device))
    return samples


def paired_ratio(ours: list[float], peers: list[float]) -> tuple[float, float, float]:
    """Median, lower and upper quartile over the rounds of ours[i] ÷ peers[i], two times measured back to back:
    their ratio cancels the shared machine's slower drifts (other processes), which a ratio of medians keeps."""
    ratios = [mine / theirs for mine, theirs in zip(ours, peers, strict=True)]
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    low, _, high = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), low, high


def print_profile(variant: str, args: argparse.Namespace, device: torch.device,
                  build: Callable[..., tuple[Callable[[], object], object]] = setup) -> None:
    """torch.profiler's busiest operators over `--repeats` steps of one variant (after one warm-up step); `build`
    as for measure_peak_memory."""
    from torch.profiler import ProfilerActivity, profile

    step, _ = build(variant, args, device)
    step()
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if device.type == "cuda" else [])]
    with profile(activities=activities) as profiler:
        for _ in range(args.repeats):
            step()
    synchronize(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"{variant}: {args.repeats} steps")
    print(profiler.key_averages().table(sort_by=sort_by, row_limit=15))


def measure_peak_memory(variant: str, args: argparse.Namespace, device: torch.device,
                        build: Callable[..., tuple[Callable[[], object], object]] = setup) -> int:
    """Peak memory over `--repeats` steps of a variant after a first one; `build` is `setup` or another
    benchmark's maker of (step, state) with the same signature."""
    step, _ = build(variant, args, device)
    step()
    with measure_memory(device) as report:
        for _ in range(args.repeats):
            step()
    return peak_bytes(report, device)


def peak_bytes(report: MemoryReport, device: torch.device) -> int:
    """The peak compared: the GPU allocator's on CUDA, else the resident memory sampled over the phase."""
    return report.cuda_max_allocated_bytes if device.type == "cuda" else report.train_peak_rss_bytes


def peak_memory_in_fresh_process(variant: str, args: argparse.Namespace, script: str = __file__) -> int:
    """`script --memory-of variant` in a process of its own (so that no earlier variant's peak counts)."""
    command = [sys.executable, script, "--memory-of", variant, "--model", args.model, "--batch-size",
               str(args.batch_size), "--repeats", str(args.repeats), "--data-dir", args.data_dir,
               "--device", args.device, *(["--random-init"] if args.random_init else [])]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return int(json.loads(output.strip().splitlines()[-1])["peak_bytes"])


def report(times: dict[str, float], memory: dict[str, int], device: torch.device, args: argparse.Namespace) -> dict:
    ratios = {
        "mezo_lora_step / 2 inference": times["mezo-lora"] / (2 * times["inference-lora"]),
        "mezo_all_step / 2 inference": times["mezo-all"] / (2 * times["inference-all"]),
        "mezo_lora_peak / inference_peak": memory["mezo-lora"] / memory["inference-lora"],
        "mezo_all_peak / inference_peak": memory["mezo-all"] / memory["inference-all"],
        "mezo_lora_step / lora_backprop_step": times["mezo-lora"] / times["backprop-lora"],
        "mezo_lora_step cached z / regenerated z": times["mezo-lora-cached"] / times["mezo-lora"],
    }
    memory_kind = "GPU allocator peak" if device.type == "cuda" else "training-phase peak RSS"
    weights = " (random weights)" if args.random_init else ""
    print(f"model {args.model}{weights}, batch {args.batch_size}, device {device}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats} interleaved repetitions")
    print(f"{'variant':<22}{'seconds':>10}{'peak MB':>12}   ({memory_kind})")
    for name, seconds in times.items():
        peak = memory.get(name)
        print(f"{name:<22}{seconds:>10.4f}{peak / 2**20 if peak else float('nan'):>12.1f}")
    print()
    for name, value in ratios.items():
        target = "  (target ≤ 1.10)" if name.startswith(("mezo_lora_step / 2", "mezo_all_step / 2", "mezo_lora_peak",
                                                          "mezo_all_peak")) else ""
        print(f"{name:<42}{value:>8.3f}{target}")
    return {"device": str(device), "times_seconds": times, "peak_bytes": memory, "ratios": ratios}


def add_shared_arguments(parser: argparse.ArgumentParser, repeats: int) -> None:
    """The model, batch, device and data options this benchmark and benchmarks/hf_trainer_memory.py share."""
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--random-init", action="store_true", help="random weights from the model's config.json")
    parser.add_argument("--data-dir", default=os.environ.get("GLUE_DIR", str(REPO.parent / "shared/glue_data")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_arguments(parser, repeats=20)
    parser.add_argument("--json", help="also write the measurements to this file")
    parser.add_argument("--profile", choices=VARIANTS, help="only print torch.profiler's table for this variant")
    parser.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = pick_device(args.device)
    if args.profile:
        print_profile(args.profile, args, device)
        return
    if args.memory_of:
        print(json.dumps({"peak_bytes": measure_peak_memory(args.memory_of, args, device)}))
        return
    memory = {variant: peak_memory_in_fresh_process(variant, args) for variant in VARIANTS}
    results = report(measure_times(args, device), memory, device, args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

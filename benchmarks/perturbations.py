"""MeZO(all)'s step with each perturbation distribution against the floor of two inference forwards, in one run.

    PYTHONPATH=src flock /tmp/zoft-cpu.lock .venv/bin/python benchmarks/perturbations.py [--model minilm]
                                                                 [--batch-size 16] [--repeats 10]
                                                                 [--profile lowrank-all]

Variants, on one model and MRPC batch (benchmarks/mezo_speed_memory.py's), MeZO on all weights, lr 1e-6,
eps 1e-3, no weight decay, constant rate, z regenerated (no cache_z):
  - inference-all: one inference_mode forward (the floor is twice its time);
  - gaussian-all: MeZO's N(0, I) z (the default);
  - lowrank-all: LOZO's U V^T / sqrt(r) per matrix, at the config's default rank;
  - sparse-all: the random block-sparse z, at the config's default density.
Prints each step's seconds (median of interleaved repetitions) and peak memory (a fresh process each, as
mezo_speed_memory.py measures it), the ratios step ÷ two forwards and peak ÷ inference peak (target ≤ 1.10),
and what rebuilding the optimiser's parameter slices and buckets costs a step (what caching them would save).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import mezo_speed_memory as reference
import torch
import transformers

from zoft.config import MethodConfig
from zoft.measure import pick_device
from zoft.methods import build_method
from zoft.optim.zeroth_order import _buckets

DISTRIBUTIONS = ("gaussian", "lowrank", "sparse")
VARIANTS = ("inference-all", *(f"{kind}-all" for kind in DISTRIBUTIONS))


def setup(variant: str, args: argparse.Namespace, device: torch.device):
    """A one-step function per variant (the signature of mezo_speed_memory.setup)."""
    kind, params = variant.split("-")
    if kind == "inference":
        return reference.setup(variant, args, device)
    model, batch = reference.mezo_model_and_batch(params, args, device)
    config = MethodConfig(method="mezo", params=params, lr=1e-6, weight_decay=0.0, schedule="constant",
                          warmup_ratio=0.0, perturbation=kind)
    trainer = build_method(model, config, total_steps=10**6, seed=0)
    return (lambda: trainer.step([batch])), trainer


def slice_rebuild_seconds(trainer: object, repeats: int = 50) -> float:
    """Seconds a step spends cutting the trainable parameters into slices and packing them into buckets
    (the optimiser does it at every step; a cache would save this much)."""
    optimizer = trainer.optimizer
    start = time.perf_counter()
    for _ in range(repeats):
        _buckets(optimizer._trainable_slices(), optimizer.max_chunk_numel)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    reference.add_shared_arguments(parser, repeats=10)
    parser.add_argument("--profile", choices=VARIANTS, help="only print torch.profiler's table for this variant")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = pick_device(args.device)
    if args.profile:
        reference.print_profile(args.profile, args, device, build=setup)
        return
    if args.memory_of:
        print(json.dumps({"peak_bytes": reference.measure_peak_memory(args.memory_of, args, device, build=setup)}))
        return
    peaks = {variant: reference.peak_memory_in_fresh_process(variant, args, script=__file__) for variant in VARIANTS}
    built = {variant: setup(variant, args, device) for variant in VARIANTS}
    samples = reference.interleaved_samples({name: step for name, (step, _) in built.items()}, args.repeats, device)
    times = {name: statistics.median(values) for name, values in samples.items()}
    defaults = MethodConfig()
    kind = "GPU allocator peak" if device.type == "cuda" else "peak RSS over the steps"
    print(f"model {args.model}, batch {args.batch_size}, device {device}, threads {torch.get_num_threads()}; "
          f"time: median of {args.repeats} interleaved steps; memory: fresh process, {kind}; "
          f"lowrank rank {defaults.perturbation_rank}, sparse density {defaults.perturbation_density}")
    floor = 2 * times["inference-all"]
    print(f"{'variant':<15}{'s/step':>9}{'peak MB':>10}{'÷ 2 fwd':>9}{'÷ inf peak':>12}")
    for variant in VARIANTS:
        ratios = "" if variant.startswith("inference") else (
            f"{times[variant] / floor:>9.3f}{peaks[variant] / peaks['inference-all']:>12.3f}")
        print(f"{variant:<15}{times[variant]:>9.4f}{peaks[variant] / 2**20:>10.1f}{ratios}")
    rebuild = slice_rebuild_seconds(built["gaussian-all"][1])
    print(f"\nrebuilding slices and buckets: {rebuild * 1e3:.2f} ms a step, {rebuild / times['gaussian-all']:.2%} of "
          "the gaussian step   (target for each ratio above: ≤ 1.10)")


if __name__ == "__main__":
    main()

"""A model of data-parallel MeZO against DDP (LoRA and full) on many GPUs: bytes a rank sends per step and the
time those exchanges take, for RoBERTa-large and a 13B decoder. No torch: arithmetic on stated assumptions.

    python benchmarks/scaling_model.py [--bandwidth-gbit 100] [--latency-us 10]

Bytes per step a rank puts into collectives, as zoft counts them (summary.distributed.step_exchange_bytes; the
values for the tiny runs of tests/test_distributed.py are 32 for shared-direction, 24 for direction-per-rank):
- MeZO shared-direction: 2 all_reduces of (loss x rows, rows) in float64 per direction: 32 bytes (n = 1);
- MeZO direction-per-rank: 1 all_gather of (seed, loss+, loss-) in float64 per direction: 24 bytes;
- DDP: the trainable parameters' float32 gradients (LoRA r 8 on query and value, or all weights) and the loss.
(The per-step agreement on stopping, 8 bytes, is left out of all of them alike.)

Time: an all_reduce of B bytes on N ranks takes the better of a ring, 2 (N-1) latency + 2 (N-1)/N B / bandwidth,
and a tree, 2 ceil(log2 N) latency + 2 B / bandwidth; an all_gather of b bytes a rank, (N-1) latency +
(N-1) b / bandwidth (ring). These are the textbook alpha-beta costs (Thakur, Rabenseifner and Gropp 2005),
without overlap with compute: DDP overlaps its buckets with the backward pass, so its column is an upper bound.
"""

from __future__ import annotations

import argparse
import math

# name: (all parameters, LoRA r=8 parameters on query and value)
MODELS = {
    # RoBERTa-large: 24 layers, hidden 1024, vocabulary 50265, 514 positions; LoRA 24 x 2 x 8 x (1024 + 1024)
    "RoBERTa-large": (24 * (4 * 1024 * 1024 + 4 * 1024 + 2 * 1024 * 4096 + 4096 + 1024 + 4 * 1024)
                      + (50265 + 514 + 1) * 1024 + 2 * 1024, 24 * 2 * 8 * (1024 + 1024)),
    # a LLaMA-style 13B: 40 layers, hidden 5120, MLP 13824, vocabulary 32000 (untied); LoRA 40 x 2 x 8 x 2 x 5120
    "13B decoder": (40 * (4 * 5120 * 5120 + 3 * 5120 * 13824 + 2 * 5120) + 2 * 32000 * 5120 + 5120,
                    40 * 2 * 8 * (5120 + 5120)),
}
WORLDS = (8, 64, 1024)


def all_reduce_seconds(nbytes: float, ranks: int, latency: float, bandwidth: float) -> float:
    ring = 2 * (ranks - 1) * latency + 2 * (ranks - 1) / ranks * nbytes / bandwidth
    tree = 2 * math.ceil(math.log2(ranks)) * latency + 2 * nbytes / bandwidth
    return min(ring, tree)


def all_gather_seconds(nbytes_per_rank: float, ranks: int, latency: float, bandwidth: float) -> float:
    return (ranks - 1) * latency + (ranks - 1) * nbytes_per_rank / bandwidth


def human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if nbytes < 1000 or unit == "GB":
            return f"{nbytes:,.0f} {unit}" if unit == "B" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1000
    raise AssertionError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bandwidth-gbit", type=float, default=100.0, help="per-GPU network bandwidth, Gbit/s")
    parser.add_argument("--latency-us", type=float, default=10.0, help="latency of one message hop, microseconds")
    args = parser.parse_args()
    bandwidth, latency = args.bandwidth_gbit * 1e9 / 8, args.latency_us * 1e-6
    print(f"per-GPU bandwidth {args.bandwidth_gbit:g} Gbit/s, latency {args.latency_us:g} us a hop; "
          "bytes a rank sends per step; exchange time per step (no overlap)\n")
    print("| model | GPUs | MeZO shared-direction | MeZO direction-per-rank | DDP LoRA r8 (q,v) | DDP full (fp32) |")
    print("|---|---|---|---|---|---|")
    for name, (total, lora) in MODELS.items():
        for ranks in WORLDS:
            shared = 2 * all_reduce_seconds(16, ranks, latency, bandwidth)
            per_rank = all_gather_seconds(24, ranks, latency, bandwidth)
            ddp_lora = all_reduce_seconds(4 * lora, ranks, latency, bandwidth)
            ddp_full = all_reduce_seconds(4 * total, ranks, latency, bandwidth)
            print(f"| {name} ({total / 1e6:,.0f}M; LoRA {lora / 1e6:.2f}M) | {ranks} "
                  f"| 32 B, {shared * 1e6:,.0f} us | 24 B, {per_rank * 1e6:,.0f} us "
                  f"| {human(4 * lora)}, {ddp_lora * 1e3:,.2f} ms | {human(4 * total)}, {ddp_full * 1e3:,.0f} ms |")


if __name__ == "__main__":
    main()

"""Seconds per step and peak memory of zoft's methods on large model shapes with random weights (issue 13, GPU).

    python benchmarks/gpu_shapes.py --out DIR [--tiny] [--repeats 5]     # benchmarks/gpu.sh runs it on the H200

No weights reach the lent GPU machine (it has no network, and a transfer is capped far below a 1B model), so
both models are built from their configs with random weights: time and memory do not depend on the weight
values. Shapes: RoBERTa-large (24 layers, hidden 1024, 355M) and a 1B-class decoder (Llama-3.2-1B's shape:
16 layers, hidden 2048, 8 KV heads, vocab 128256), each with a 2-class sequence-classification head, on
random token ids of length 128 at batch 4 and 16. Variants, each built by zoft (`prepare_trainable`,
`build_method`): inference (one forward under inference_mode), LoRA backprop (AdamW step), MeZO (LoRA), MeZO
(all); each in fp32 and under bf16 autocast (weights stay fp32). Per cell: the median of `--repeats` steps
after two warm-up steps, and the allocator's peak over those steps (torch.cuda.max_memory_allocated, reset
after the model is built; on the CPU, with --tiny, no peak is measured).

The floor: the forward's matmul FLOPs (2 × tokens × the linear layers' weights, plus the attention's
4 × layers × batch × length² × hidden) divided by the matmul rate measured here (a square matmul, fp32 with
the default TF32 setting, and bf16), so inference ≥ F / rate, MeZO ≥ 2F / rate, backprop ≥ 3F / rate.
`--tiny` shrinks both models to a few layers of width 64 so the CPU path can be tested in seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from mezo_speed_memory import inference_step
from transformers import AutoModelForSequenceClassification, LlamaConfig, PretrainedConfig, RobertaConfig

from zoft.config import MethodConfig, ModelConfig
from zoft.measure import synchronize
from zoft.methods import build_method
from zoft.models import prepare_trainable

VARIANTS = ("inference", "lora", "mezo-lora", "mezo-all")
# forward-equivalents of matmul work per step: backprop's backward costs about two forwards
FORWARDS = {"inference": 1, "lora": 3, "mezo-lora": 2, "mezo-all": 2}
LENGTH = 128


def model_configs(tiny: bool) -> dict[str, PretrainedConfig]:
    """The two shapes (or their tiny stand-ins for a CPU test), with a 2-class head."""
    if tiny:
        return {
            "roberta-large-shape": RobertaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                 intermediate_size=128, vocab_size=1000, num_labels=2),
            "decoder-1b-shape": LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, intermediate_size=128, vocab_size=1000,
                                            num_labels=2, pad_token_id=0),
        }
    return {
        # roberta-large's config.json
        "roberta-large-shape": RobertaConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                             intermediate_size=4096, vocab_size=50265, max_position_embeddings=514,
                                             type_vocab_size=1, num_labels=2),
        # meta-llama/Llama-3.2-1B's config.json (tied embeddings)
        "decoder-1b-shape": LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                                        num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                                        max_position_embeddings=131072, tie_word_embeddings=True, num_labels=2,
                                        pad_token_id=0),
    }


def forward_flops(model: torch.nn.Module, config: PretrainedConfig, batch: int) -> float:
    """Matmul FLOPs of one forward: every linear layer's weights against every token, plus attention's
    scores and weighted sum (the classification head reads one position: negligible)."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attention = 4 * config.num_hidden_layers * batch * LENGTH**2 * config.hidden_size
    return 2.0 * batch * LENGTH * linear + attention


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """FLOP/s of a square matmul on this device (median of 10 after 3 warm-ups)."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    times = []
    for i in range(13):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(times)


def build_step(config: PretrainedConfig, variant: str, batch: dict[str, torch.Tensor],
               device: torch.device) -> tuple[Callable[[], object], torch.nn.Module]:
    """One step of a variant on a fresh randomly initialised model, and that model."""
    torch.manual_seed(0)
    with device:  # random init straight on the device: a 1B model initialised on the CPU takes minutes
        model = AutoModelForSequenceClassification.from_config(config)
    method = "lora" if variant in ("inference", "lora") else "mezo"
    params = {"mezo-lora": "lora", "mezo-all": "all"}.get(variant)
    model = prepare_trainable(model, ModelConfig(), method, params).to(device)
    if variant == "inference":
        return inference_step(model, batch), model
    lr = 1e-6 if variant == "mezo-all" else 1e-4
    trainer = build_method(model, MethodConfig(method=method, params=params, lr=lr, weight_decay=0.0,
                                               schedule="constant", warmup_ratio=0.0), total_steps=10**6, seed=0)
    return (lambda: trainer.step([batch])), model


def measure(step: Callable[[], object], device: torch.device, precision: str, repeats: int) -> tuple[float, int]:
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())
    with autocast:
        for _ in range(2):
            step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, to test the script on a CPU")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", default="4,16")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    rates = {precision: matmul_rate(device, dtype, 256 if args.tiny else 8192)
             for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    rows = []
    for name, config in model_configs(args.tiny).items():
        for batch_size in map(int, args.batch_sizes.split(",")):
            generator = torch.Generator().manual_seed(0)
            batch = {"input_ids": torch.randint(1, config.vocab_size, (batch_size, LENGTH), generator=generator),
                     "attention_mask": torch.ones(batch_size, LENGTH, dtype=torch.long),
                     "labels": torch.randint(0, 2, (batch_size,), generator=generator)}
            batch = {key: value.to(device) for key, value in batch.items()}
            for variant in VARIANTS:
                step, model = build_step(config, variant, batch, device)
                flops = forward_flops(model, config, batch_size) * FORWARDS[variant]
                for precision in ("fp32", "bf16"):
                    seconds, peak = measure(step, device, precision, args.repeats)
                    rows.append({"model": name, "batch": batch_size, "variant": variant, "precision": precision,
                                 "seconds_per_step": seconds, "peak_allocated_bytes": peak,
                                 "floor_seconds": flops / rates[precision]})
                    print(json.dumps(rows[-1]), flush=True)
                del step, model
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    write(args.out, device, rates, rows)


def write(out: Path, device: torch.device, rates: dict[str, float], rows: list[dict]) -> None:
    """results.json (everything) and results.md (the table, with MeZO ÷ two forwards and step ÷ floor)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    (out / "results.json").write_text(json.dumps({"device": name, "torch": torch.__version__,
                                                  "matmul_flops_per_second": rates, "rows": rows}, indent=2) + "\n")
    inference = {(r["model"], r["batch"], r["precision"]): r["seconds_per_step"] for r in rows
                 if r["variant"] == "inference"}
    lines = [f"device {name}, torch {torch.__version__}; matmul rate fp32 {rates['fp32'] / 1e12:.1f} TFLOP/s, "
             f"bf16 {rates['bf16'] / 1e12:.1f} TFLOP/s; random weights, length {LENGTH}", "",
             "| model | batch | variant | precision | s/step | peak GB | ÷ 2 forwards | ÷ floor |",
             "|---|---:|---|---|---:|---:|---:|---:|"]
    for r in rows:
        forwards = inference[(r["model"], r["batch"], r["precision"])]
        two = f"{r['seconds_per_step'] / (2 * forwards):.2f}" if r["variant"].startswith("mezo") else ""
        lines.append(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['precision']} | "
                     f"{r['seconds_per_step']:.4f} | {r['peak_allocated_bytes'] / 1e9:.2f} | {two} | "
                     f"{r['seconds_per_step'] / r['floor_seconds']:.1f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Peak memory of a Hugging Face Trainer MeZO step (zoft.hf.ZerothOrderTrainer) next to zoft's own MeZO step,
the Trainer's backprop LoRA step (AdamW) and inference, on one model and batch.

    .venv/bin/python benchmarks/hf_trainer_memory.py [--model minilm] [--batch-size 16] [--repeats 10]
                                                     [--random-init] [--device cuda]

Every variant trains LoRA (zoft's defaults: r 8 on query and value, the head trained beside it) on the same
MRPC batch, in a fresh process, and its peak is taken over `--repeats` steps after a first one (allocator,
optimiser state and first-call set-up excluded, as in benchmarks/mezo_speed_memory.py, whose inference and
zoft MeZO variants this reuses): the GPU allocator's peak on CUDA, else the peak resident memory sampled
during those steps. The Trainer variants run trainer.train() on the batch repeated, its window opened by a
callback at the end of the first step. Prints a table: each peak, and its ratio to inference.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path

import mezo_speed_memory as reference
import torch
import transformers
from transformers import Trainer, TrainerCallback, TrainingArguments

from zoft.config import ModelConfig
from zoft.hf import ZerothOrderTrainer
from zoft.measure import measure_memory, pick_device
from zoft.models import prepare_trainable

VARIANTS = {
    "inference-lora": "inference (no grad), LoRA model",
    "mezo-lora": "zoft's MeZO step (zoft train)",
    "trainer-mezo-lora": "Trainer MeZO step (ZerothOrderTrainer)",
    "trainer-backprop-lora": "Trainer backprop LoRA step (AdamW)",
}
REPO = Path(__file__).resolve().parents[1]


class AfterTheFirstStep(TrainerCallback):
    """Measures peak memory from the end of the Trainer's first step to the end of training."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.window = contextlib.ExitStack()
        self.report = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.report = self.window.enter_context(measure_memory(self.device))

    def on_train_end(self, args, state, control, **kwargs):
        self.window.close()


def trainer_peak(variant: str, args: argparse.Namespace, device: torch.device) -> int:
    torch.manual_seed(0)
    model, tokenizer = reference.load_benchmark_model(args)
    mezo = variant == "trainer-mezo-lora"
    model = prepare_trainable(model, ModelConfig(), "mezo" if mezo else "lora", "lora" if mezo else None)
    measured = AfterTheFirstStep(device)
    with tempfile.TemporaryDirectory() as folder:
        training = TrainingArguments(
            folder, max_steps=args.repeats + 1, per_device_train_batch_size=1, learning_rate=1e-6 if mezo else 1e-4,
            lr_scheduler_type="constant", train_sampling_strategy="sequential", remove_unused_columns=False,
            save_strategy="no", logging_steps=args.repeats + 1, disable_tqdm=True, use_cpu=device.type == "cpu",
            dataloader_pin_memory=False,
        )
        kind, extra = (ZerothOrderTrainer, {"eps": 1e-3}) if mezo else (Trainer, {})
        trainer = kind(model=model, args=training, train_dataset=[reference.fixed_batch(args, tokenizer)] *
                       (args.repeats + 1), data_collator=lambda features: features[0], callbacks=[measured], **extra)
        trainer.train()
    return reference.peak_bytes(measured.report, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    reference.add_shared_arguments(parser, repeats=10)
    parser.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    device = pick_device(args.device)
    if args.memory_of:
        measure = trainer_peak if args.memory_of.startswith("trainer-") else reference.measure_peak_memory
        print(json.dumps({"peak_bytes": measure(args.memory_of, args, device)}))
        return
    peaks = {variant: reference.peak_memory_in_fresh_process(variant, args, script=__file__) for variant in VARIANTS}
    kind = "GPU allocator peak" if device.type == "cuda" else "peak RSS over the steps"
    weights = " (random weights)" if args.random_init else ""
    print(f"model {args.model}{weights}, LoRA, batch {args.batch_size}, device {device}, {args.repeats} steps "
          f"after a first one, each variant in a fresh process")
    print(f"{'variant':<42}{'peak MB':>10}{'÷ inference':>13}   ({kind})")
    for variant, label in VARIANTS.items():
        print(f"{label:<42}{peaks[variant] / 2**20:>10.1f}{peaks[variant] / peaks['inference-lora']:>13.3f}")


if __name__ == "__main__":
    main()

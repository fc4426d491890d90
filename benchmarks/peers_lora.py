"""zoft's backprop step (LoRA and full fine-tuning) next to the Hugging Face Trainer's with PEFT, side by side.

    flock /tmp/zoft-cpu.lock .venv/bin/python benchmarks/peers_lora.py [--model minilm] [--batch-size 16]
                                                                       [--rounds 5] [--chunk 4] [--repeats 10]

Both sides train the same model on the same MRPC batch (the first of zoft's stream at seed 0, so length
grouping does not enter) with zoft's resolved defaults: LoRA r 8, alpha 16, dropout 0.1 on PEFT's default
target modules with the head trained beside it (the Trainer side calls `get_peft_model` itself with that
LoraConfig), AdamW (weight decay 0.01, not on biases and LayerNorm), linear schedule with 6% warm-up,
gradient clipping at 1.0, lr 5e-4 (LoRA) / 5e-5 (full), no evaluation, no checkpoints.

Seconds per optimiser step: medians over interleaved rounds in one process; in each round every variant runs
`--chunk` steps after one untimed step (zoft: `method.step([batch])`; Trainer: one `trainer.train()` of
chunk + 1 steps, timed between consecutive `on_step_end` callbacks, so its data loading, clipping,
optimiser, scheduler and callbacks count, and its per-call set-up does not), the order of the variants
reversing every round; the ratio is the median over the rounds of zoft's round median ÷ the Trainer's (their
quartiles beside it), which cancels the shared machine's drifts. Peak memory: each variant in a
fresh process over `--repeats` steps after a first one, as in benchmarks/hf_trainer_memory.py. Prints the
table and the ratios zoft ÷ Trainer (target ≤ 1.00).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import tempfile
import time

import mezo_speed_memory as reference
import torch
import transformers
from hf_trainer_memory import AfterTheFirstStep
from peft import LoraConfig, TaskType, get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments

from zoft.config import MethodConfig, ModelConfig
from zoft.data.batches import to_device
from zoft.measure import pick_device
from zoft.methods import build_method
from zoft.models import prepare_trainable

VARIANTS = ("zoft-lora", "trainer-lora", "zoft-full", "trainer-full")
LR = {"lora": 5e-4, "full": 5e-5}
TOTAL_STEPS = 1000  # the schedule's length on both sides (zoft's default steps for LoRA)


def zoft_setup(variant: str, args: argparse.Namespace, device: torch.device):
    """zoft's step on the fixed batch, and the method (the signature of mezo_speed_memory.setup)."""
    torch.manual_seed(0)
    method = variant.split("-")[1]
    model, tokenizer = reference.load_benchmark_model(args)
    model = prepare_trainable(model, ModelConfig(), method, None).to(device)
    batch = to_device(reference.fixed_batch(args, tokenizer), device)
    config = MethodConfig(method=method, lr=LR[method], weight_decay=0.01, schedule="linear", warmup_ratio=0.06,
                          max_grad_norm=1.0)
    trainer = build_method(model, config, total_steps=TOTAL_STEPS, seed=0)
    return (lambda: trainer.step([batch])), trainer


class StepTimes(TrainerCallback):
    """Seconds between consecutive step ends, from the end of the first step of each train() call."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.last: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = None

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self.last is not None:
            self.seconds.append(now - self.last)
        self.last = now


def build_trainer(variant: str, args: argparse.Namespace, device: torch.device, steps: int,
                  callback: TrainerCallback) -> Trainer:
    """The Trainer a user would write: PEFT's get_peft_model for LoRA, every weight for full."""
    torch.manual_seed(0)
    method = variant.split("-")[1]
    model, tokenizer = reference.load_benchmark_model(args)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1))
    folder = tempfile.mkdtemp(prefix="peers-lora-")
    training = TrainingArguments(
        folder, max_steps=steps, per_device_train_batch_size=1, learning_rate=LR[method], weight_decay=0.01,
        lr_scheduler_type="linear", warmup_steps=0.06, max_grad_norm=1.0, optim="adamw_torch",
        train_sampling_strategy="sequential", remove_unused_columns=False, save_strategy="no", eval_strategy="no",
        logging_steps=10**6, disable_tqdm=True, use_cpu=device.type == "cpu", dataloader_pin_memory=False,
        report_to="none",
    )
    batch = reference.fixed_batch(args, tokenizer)
    return Trainer(model=model, args=training, train_dataset=[batch] * steps,
                   data_collator=lambda features: features[0], callbacks=[callback])


def trainer_peak(variant: str, args: argparse.Namespace, device: torch.device) -> int:
    measured = AfterTheFirstStep(device)
    build_trainer(variant, args, device, args.repeats + 1, measured).train()
    return reference.peak_bytes(measured.report, device)


def measure_times(args: argparse.Namespace, device: torch.device) -> dict[str, list[float]]:
    """Per variant, the median seconds per step of each round's chunk (item i from round i)."""
    zoft_steps = {variant: zoft_setup(variant, args, device)[0] for variant in VARIANTS if variant.startswith("zoft")}
    timers = {variant: StepTimes() for variant in VARIANTS if variant.startswith("trainer")}
    trainers = {variant: build_trainer(variant, args, device, args.chunk + 1, timer)
                for variant, timer in timers.items()}
    rounds: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_ in range(args.rounds):
        # The order reverses every round, so that no variant always runs right after the same other one.
        for variant in VARIANTS if round_ % 2 == 0 else reversed(VARIANTS):
            if variant in trainers:
                timers[variant].seconds.clear()
                with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its train metrics
                    trainers[variant].train()
                seconds = timers[variant].seconds
            else:
                zoft_steps[variant]()  # the untimed first step, as the Trainer's
                seconds = [reference.seconds_of_one_call(zoft_steps[variant], device) for _ in range(args.chunk)]
            rounds[variant].append(statistics.median(seconds))
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    reference.add_shared_arguments(parser, repeats=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chunk", type=int, default=4, help="timed steps per variant and round")
    parser.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    device = pick_device(args.device)
    if args.memory_of:
        peak = (trainer_peak(args.memory_of, args, device) if args.memory_of.startswith("trainer") else
                reference.measure_peak_memory(args.memory_of, args, device, build=zoft_setup))
        print(json.dumps({"peak_bytes": peak}))
        return
    peaks = {variant: reference.peak_memory_in_fresh_process(variant, args, script=__file__) for variant in VARIANTS}
    rounds = measure_times(args, device)
    times = {variant: statistics.median(values) for variant, values in rounds.items()}
    kind = "GPU allocator peak" if device.type == "cuda" else "peak RSS over the steps"
    print(f"model {args.model}, batch {args.batch_size}, device {device}, threads {torch.get_num_threads()}; "
          f"time: median over {args.rounds} interleaved rounds of each round's median of {args.chunk} steps; "
          f"memory: fresh process, {kind}")
    print(f"{'variant':<14}{'s/step':>9}{'peak MB':>10}")
    for variant in VARIANTS:
        print(f"{variant:<14}{times[variant]:>9.4f}{peaks[variant] / 2**20:>10.1f}")
    print()
    for method in ("lora", "full"):
        zoft, hf = f"zoft-{method}", f"trainer-{method}"
        median, low, high = reference.paired_ratio(rounds[zoft], rounds[hf])
        print(f"{method:<5} zoft ÷ Trainer: time {median:.3f} (quartiles {low:.3f}–{high:.3f}; ratio of medians "
              f"{times[zoft] / times[hf]:.3f}), peak {peaks[zoft] / peaks[hf]:.3f}   (target ≤ 1.00)")


if __name__ == "__main__":
    main()

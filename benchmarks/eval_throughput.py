"""zoft's evaluation next to a plain `torch.inference_mode` loop: examples per second on the GLUE dev sets.

    flock /tmp/zoft-cpu.lock .venv/bin/python benchmarks/eval_throughput.py [--rounds 5] [--cases mrpc-minilm,...]

Cases: MiniLM (`minilm`, the model's classification head) on MRPC dev (408 examples) and the prompt head on
the offline masked LM (`bert-tiny-mlm`, SST-2's template and label words) on SST-2 dev (872 examples). Each
model is built the way `zoft train --method lora` builds it (zoft.train.Trainer's setup_data and
setup_model with the resolved config: LoRA adapters on, eval batch 64), so both sides score the very
model a run evaluates.

- zoft: `evaluate_split` called as `Trainer.evaluate` calls it (the forward counter paused), so its
  length sort, collation, un-sorting, metrics and majority share count.
- plain: the same length-sorted batches, collated once before timing (they cost the plain side nothing),
  then `model.eval()` and, under `torch.inference_mode`, one forward per batch, the logits gathered.

Each repetition is one pass over the split; the two sides alternate (which goes first swaps every round)
after one untimed pass each (zoft collates a split once, on its first evaluation, and keeps the batches).
Both sides' logits are checked to agree. Prints median and best examples/s of each side and the median over
the rounds of zoft ÷ plain (target ≥ 1.00).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from zoft.config import build_config
from zoft.console import Console
from zoft.data.batches import Batch, EncodedSplit, eval_batches, to_device
from zoft.evaluate import evaluate_split
from zoft.measure import pick_device, synchronize
from zoft.train import Trainer

REPO = Path(__file__).resolve().parents[1]
# task, model: the two heads the issue names (a model's own classifier; the prompt head on a masked LM)
CASES = {"mrpc-minilm": ("mrpc", "minilm"), "sst2-bert-tiny-mlm": ("sst2", "bert-tiny-mlm")}
EVAL_BATCH = build_config().train.eval_batch_size  # zoft's default, which both sides use
TRAIN_LIMIT = 64  # the training split only has to exist: evaluation reads the dev set (the test split)


def build(case: str, args: argparse.Namespace) -> Trainer:
    """A zoft Trainer with its data and model set up (no run folder: nothing trains or is written)."""
    task, model = CASES[case]
    config = build_config(overrides={"task": task, "model": model, "method": "lora", "data_dir": args.data_dir,
                                     "train_limit": TRAIN_LIMIT, "device": args.device})
    trainer = Trainer(config, run=None, console=Console())  # type: ignore[arg-type]  # setup() alone uses run
    torch.manual_seed(config.train.seed)
    trainer.device = pick_device(config.train.device)
    trainer.setup_data()
    trainer.setup_model()
    return trainer


def zoft_pass(trainer: Trainer) -> Callable[[], torch.Tensor]:
    """One evaluation of the test split as Trainer.evaluate makes it; returns the logits in split order."""
    def run() -> torch.Tensor:
        with trainer.forwards.paused():
            return evaluate_split(trainer.model, trainer.encoded["test"], trainer.tokenizer, trainer.task,
                                  trainer.config.train.eval_batch_size, trainer.device).logits
    return run


def sorted_order(encoded: EncodedSplit) -> list[int]:
    """The example order evaluate_split uses (by token count), so both sides see the same batches."""
    return sorted(range(len(encoded)), key=lambda i: len(encoded.features[i]["input_ids"]))


def plain_pass(trainer: Trainer) -> Callable[[], torch.Tensor]:
    """The plain loop a user would write over pre-built length-sorted batches; returns the logits in split order."""
    encoded = trainer.encoded["test"]
    order = sorted_order(encoded)
    batches: list[Batch] = []
    for batch in eval_batches(EncodedSplit([encoded.features[i] for i in order]), trainer.tokenizer,
                              trainer.config.train.eval_batch_size):
        batch.pop("labels")
        batches.append(to_device(batch, trainer.device))
    model = trainer.model
    restore = torch.empty(len(order), dtype=torch.long)
    restore[torch.tensor(order)] = torch.arange(len(order))

    def run() -> torch.Tensor:
        model.eval()
        with torch.inference_mode():
            logits = torch.cat([model(**batch).logits.float().cpu() for batch in batches])
        return logits[restore]
    return run


def seconds(run: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, torch.Tensor]:
    synchronize(device)
    start = time.perf_counter()
    logits = run()
    synchronize(device)
    return time.perf_counter() - start, logits


def measure(case: str, args: argparse.Namespace) -> dict[str, float]:
    trainer = build(case, args)
    passes = {"zoft": zoft_pass(trainer), "plain": plain_pass(trainer)}
    logits = {side: run() for side, run in passes.items()}  # untimed: first-call overheads
    # Same model, same batches: the logits must agree (to float tolerance: the batch shapes are the same).
    if not torch.allclose(logits["zoft"], logits["plain"], atol=1e-5, rtol=1e-4):
        raise SystemExit(f"{case}: zoft's and the plain loop's logits differ")
    samples: dict[str, list[float]] = {side: [] for side in passes}
    for round_ in range(args.rounds):
        sides = list(passes) if round_ % 2 == 0 else list(reversed(passes))
        for side in sides:
            samples[side].append(seconds(passes[side], trainer.device)[0])
    examples = len(trainer.encoded["test"])
    # The two passes of a round run back to back, so their ratio cancels the machine's slower drifts
    # (other processes on a shared CPU); its median over the rounds is the headline figure.
    paired = [plain / zoft for zoft, plain in zip(samples["zoft"], samples["plain"], strict=True)]
    return {"examples": examples, "ratio": statistics.median(paired),
            **{side: examples / statistics.median(values) for side, values in samples.items()},
            **{f"{side}_best": examples / min(values) for side, values in samples.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="timed passes per side and case")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=os.environ.get("GLUE_DIR", str(REPO.parent / "shared/glue_data")))
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    # PEFT calls a transformers API that transformers deprecated (as in pyproject's pytest filters): noise here
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    results = {case: measure(case, args) for case in cases}
    print(f"device {args.device}, threads {torch.get_num_threads()}, eval batch {EVAL_BATCH}, LoRA on; "
          f"{args.rounds} interleaved passes over the dev set per side: median (best) examples/s, and the median "
          f"of the rounds' zoft ÷ plain")
    print(f"{'case':<20}{'examples':>9}{'zoft ex/s':>18}{'plain ex/s':>18}{'zoft ÷ plain':>14}")
    for case, result in results.items():
        zoft = f"{result['zoft']:.1f} ({result['zoft_best']:.1f})"
        plain = f"{result['plain']:.1f} ({result['plain_best']:.1f})"
        print(f"{case:<20}{result['examples']:>9}{zoft:>18}{plain:>18}{result['ratio']:>14.3f}   (target ≥ 1.00)")


if __name__ == "__main__":
    main()

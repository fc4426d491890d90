"""The one training loop: step (backprop or zeroth-order) → log → evaluate → checkpoint.

Methods differ only in their `step`; everything measured here is measured the same way for all of them.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from zoft import distributed, trajectory
from zoft.config import RunConfig
from zoft.console import Console, format_baseline
from zoft.data.batches import BatchStream, encode, eval_batches, to_device
from zoft.data.splits import TaskData, load_task_data
from zoft.distributed import DataParallel
from zoft.evaluate import evaluate_split
from zoft.measure import LOSS_WINDOW, ForwardCounter, Stopwatch, measure_memory, pick_device
from zoft.methods import TrainingMethod, build_method, trajectory_refusal
from zoft.metrics import majority_baseline
from zoft.models import count_parameters, input_format, load_task_model, prepare_trainable
from zoft.pretrained import has_masked_lm_head
from zoft.probe import init_head_by_probe
from zoft.runs import (
    DataInfo,
    Device,
    ParameterCount,
    Passes,
    RunFolder,
    Status,
    StoppedBy,
    Summary,
    Timing,
    describe_stop,
    environment,
)
from zoft.sinks import ConsoleSink, MetricSink, RunFolderSink


@dataclass
class LoopState:
    """What the loop has done so far; saved in checkpoints so that a resumed run continues the count."""

    step: int = 0
    forward_passes: int = 0
    backward_passes: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    best_step: int | None = None
    best_value: float | None = None
    last_eval: dict[str, Any] = field(default_factory=dict)
    best_eval: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    first_losses: list[float] = field(default_factory=list)
    recent_losses: list[float] = field(default_factory=list)

    def track_loss(self, loss: float, window: int = LOSS_WINDOW) -> None:
        if len(self.first_losses) < window:
            self.first_losses.append(loss)
        self.recent_losses = [*self.recent_losses[-(window - 1):], loss]

    def loss_exploded(self, factor: float) -> bool:
        """The mean loss of the last steps is `factor` times that of the first steps (and the windows differ);
        never with factor 0."""
        if factor == 0 or self.step < 2 * LOSS_WINDOW:
            return False
        start = sum(self.first_losses) / len(self.first_losses)
        return sum(self.recent_losses) / len(self.recent_losses) > factor * start


class Interrupted(Exception):
    """Training stopped by the user or a scheduler (Ctrl-C, SIGTERM, SIGHUP) after a whole step; the run folder
    holds a checkpoint to resume from. `signum` is the signal that asked for the stop."""

    def __init__(self, folder: Path, signum: int = signal.SIGINT) -> None:
        super().__init__(f"interrupted; {folder} holds a checkpoint")
        self.folder = folder
        self.signum = signum


class StoppedAtOnce(KeyboardInterrupt):
    """A second stop signal: training ends where it is, and the last periodic checkpoint stays the one to resume
    from. A KeyboardInterrupt, so that it unwinds like a second Ctrl-C always has; `signum` says which signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


# Ctrl-C, and what schedulers and terminals send: SLURM, Kubernetes and `timeout` send SIGTERM, a closed
# terminal or ssh session SIGHUP. Each is handled alike; the exit code says which it was (128 + its number).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopRequest(threading.Event):
    """Set by the first stop signal; `signum` is that signal."""

    signum: int = signal.SIGINT


@contextmanager
def stop_signals_handled(handler: Callable[[int, object], None]) -> Iterator[None]:
    """`handler` for Ctrl-C, SIGTERM and SIGHUP while inside, the previous handlers back after; in the main thread
    only (Python delivers signals to no other, and refuses handlers set from one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, earlier in previous.items():
            signal.signal(signum, earlier)


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Ctrl-C, SIGTERM or SIGHUP asks the loop to stop after the current step, so the checkpoint it saves is
    consistent.

    A step cut in half (parameters perturbed, an optimiser update half applied) must never be saved;
    a second signal stops at once, and the last periodic checkpoint stays the one to resume from.
    """
    stop = StopRequest()

    def request_stop(signum: int, frame: object) -> None:
        if stop.is_set():
            raise StoppedAtOnce(signum)
        stop.signum = signum
        stop.set()
        again = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\nzoft: {signal.Signals(signum).name} received: stopping after this step ({again} again to stop "
              "at once)", file=sys.stderr, flush=True)

    with stop_signals_handled(request_stop):
        yield stop


# A spent budget as a number the ranks agree on by their maximum (the later in the tuple wins).
BUDGETS: tuple[StoppedBy | None, ...] = (None, "max_minutes", "max_forward_passes")


def planned_steps(config: RunConfig, train_size: int) -> int:
    if config.train.steps is not None:
        return config.train.steps
    examples_per_step = config.train.batch_size * config.method.grad_accumulation
    return max(1, math.ceil(config.train.epochs * train_size / examples_per_step))


class Trainer:
    """Runs the loop for a config into a run folder: `Trainer(...)` only records what it is given, `setup()`
    loads data, model and method (minutes for a large model), `loop()` trains."""

    def __init__(self, config: RunConfig, run: RunFolder, console: Console,
                 sinks: Sequence[MetricSink] = (), parallel: DataParallel | None = None) -> None:
        self.config, self.run, self.console = config, run, console
        self.extra_sinks = list(sinks)
        # On several processes: this rank's group (zoft.distributed), through which the method exchanges and
        # the ranks agree on when to stop; None for one process.
        self.parallel = parallel
        self.step_exchange_bytes: int | None = None
        self.state = LoopState()
        self.stopped_by: StoppedBy = "steps"

    def setup(self) -> None:
        """Data, then the model (a linear-probe head is fitted on the encoded data), then the method (its
        schedule needs the planned steps, which need the training split's size)."""
        set_seed(self.config.train.seed)
        self.device = self.parallel.device if self.parallel else pick_device(self.config.train.device)
        # Read now, not when the run ends: the source tree may change under a long run.
        self.environment = environment(self.device)
        self.setup_data()
        self.setup_model()
        self.setup_method()
        self.sinks: list[MetricSink] = [RunFolderSink(self.run),
                                        ConsoleSink(self.console, self.select_key, self.run.path), *self.extra_sinks]
        if self.mezo_without_prompt():
            self.warn("MeZO with a randomly initialised classifier head on a masked LM: without a prompt MeZO stays "
                      "near chance (the MeZO paper's Table 5: SST-2 51.9 instead of 89.6); head=prompt, the default "
                      "for masked LMs, scores label words with the pretrained masked-LM head")

    def setup_data(self) -> None:
        config = self.config
        self.data: TaskData = load_task_data(config.data, seed=config.train.seed)
        self.task = self.data.task
        self.select_key = f"validation/{config.train.select_metric or self.task.main_metric}"
        self.eval_splits = [name for name in self.data.splits if name != "train"]
        self.baseline = majority_baseline(self.task, self.data.splits["test"].labels)
        self.total_steps = planned_steps(config, len(self.data.splits["train"].labels))

    def setup_model(self) -> None:
        """The model with its head, the examples encoded for it, and what is trainable (LoRA or a subset)."""
        config = self.config
        model, self.tokenizer = load_task_model(config.model, self.task)
        model.to(self.device)
        self.encoded = {
            name: encode(examples, self.tokenizer, config.data.max_length, **input_format(config.model, self.task))
            for name, examples in self.data.splits.items()
        }
        self.head_init = self.init_head(model) if config.model.head_init == "linear-probe" else None
        self.model = prepare_trainable(model, config.model, config.method.method, config.method.params)
        self.model.to(self.device)
        self.forwards = ForwardCounter(self.model)

    def setup_method(self) -> None:
        config = self.config
        self.stream = BatchStream(self.encoded["train"], self.tokenizer, config.train.batch_size, config.train.seed,
                                  group_by_length=config.train.group_by_length)
        # Only runs whose steps a trajectory holds log one; `self.trajectory` is set once the run folder is ready.
        self.trajectory: Path | None = None
        self.logs_trajectory = trajectory_refusal(config.method) is None
        log_update = self.log_update if self.logs_trajectory else None
        self.method: TrainingMethod = build_method(self.model, config.method, self.total_steps, config.train.seed,
                                                   draw_batches=self.draw_batches, log_update=log_update,
                                                   parallel=self.parallel)

    def mezo_without_prompt(self) -> bool:
        model = self.config.model
        return (self.config.method.method == "mezo" and model.head == "classifier" and model.head_init == "random"
                and has_masked_lm_head(model.model))

    def init_head(self, model: torch.nn.Module) -> dict[str, float]:
        result = init_head_by_probe(model, self.encoded["train"], self.encoded["validation"], self.tokenizer,
                                    self.config.train.eval_batch_size, self.device)
        self.console.print(f"head fitted on frozen features (linear probe): L2 {result['l2']:g}, validation score "
                           f"{result['validation_score']:.4f}")
        return result

    def describe(self) -> list[str]:
        trainable, total = count_parameters(self.model)
        sizes = ", ".join(f"{name} {len(split.labels)}" for name, split in self.data.splits.items())
        method = self.config.method
        return [
            f"task {self.task.name} ({self.data.source}): {sizes}",
            f"model {self.config.model.model} on {self.device}; method {method.method}"
            + (f" (params {method.params})" if method.params else "")
            + f"; trainable {trainable:,} of {total:,} parameters ({100 * trainable / total:.2f}%)",
            f"{self.total_steps} steps of {self.config.train.batch_size * method.grad_accumulation} examples, "
            f"lr {method.lr:g} ({method.schedule}); baseline on test: {format_baseline(self.baseline)}",
            f"head {self.describe_head()}",
        ]

    def describe_head(self) -> str:
        model = self.config.model
        if model.head == "prompt":
            return f"prompt: '{model.template}' with label words {', '.join(model.label_words or [])}"
        if model.pooling == "model":
            return "the model's classification head"
        pairs = ", pairs encoded separately" if model.pair_encoding == "separate" and self.task.is_pair else ""
        return f"linear on {model.pooling}-pooled features{pairs}, initialised by {model.head_init}"

    # -- checkpoints -------------------------------------------------------------------------------------

    def _trainable_tensors(self) -> dict[str, torch.Tensor]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def save_checkpoint(self) -> None:
        state = {
            "loop": asdict(self.state), "method": self.method.state_dict(), "stream": self.stream.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "distributed": self.parallel.checkpoint_state() if self.parallel else None,
        }
        self.run.save_checkpoint(self._trainable_tensors(), state)

    def restore_checkpoint(self) -> None:
        tensors, state = self.run.load_checkpoint()
        distributed.check_resumed(state.get("distributed"), self.parallel)
        with torch.no_grad():
            for name, parameter in self._trainable_tensors().items():
                parameter.copy_(tensors[name])
        self.method.load_state_dict(state["method"])
        self.stream.load_state_dict(state["stream"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.state = LoopState(**state["loop"])
        if self.run.truncate_metrics(self.state.step):
            self.warn("metrics.jsonl: dropped a partial last line (a run killed mid-write); continuing from the "
                      f"checkpoint at step {self.state.step}")
        self.resume_trajectory()

    # -- the seed trajectory (MeZO's SPSA: see zoft.trajectory) -----------------------------------------------

    def begin_trajectory(self) -> None:
        """A fresh run: its starting point and an empty trajectory."""
        if self.logs_trajectory:
            self.run.save_start(self._trainable_tensors())
            self.run.create_trajectory(str(self.device))
            self.trajectory = self.run.trajectory_path

    def resume_trajectory(self) -> None:
        """A resumed run: the trajectory cut back to the checkpoint's step, then continued. A run folder from
        before trajectories, or one whose trajectory ends before its checkpoint, logs none (with a warning)."""
        path = self.run.trajectory_path
        if not self.logs_trajectory or not path.is_file():
            return
        kept = self.run.truncate_trajectory(self.state.step)
        if kept < self.state.step:
            self.warn(f"{path.name} ends at step {kept}, before the checkpoint's step {self.state.step}: it is not "
                      f"continued (zoft replay rebuilds steps up to {kept})")
            return
        self.trajectory = path

    def log_update(self, record: trajectory.StepRecord) -> None:
        if self.trajectory is not None:
            self.run.append_trajectory(record)

    # -- evaluation --------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, Any]:
        stopwatch = Stopwatch()
        with self.forwards.paused(), stopwatch.timing(self.device):
            results = {
                split: evaluate_split(self.model, self.encoded[split], self.tokenizer, self.task,
                                      self.config.train.eval_batch_size, self.device)
                for split in self.eval_splits
            }
        self.state.eval_seconds += stopwatch.seconds
        record = {"kind": "eval", "step": self.state.step, "forward_passes": self.state.forward_passes,
                  "train_seconds": self.state.train_seconds, "eval_seconds": stopwatch.seconds}
        for split, result in results.items():
            record.update({f"{split}/{metric}": value for metric, value in result.metrics.items()})
        self._note_collapse(record)
        self.state.last_eval = record
        if self._improves(record[self.select_key]):
            self.state.best_step, self.state.best_value = self.state.step, record[self.select_key]
            self.state.best_eval = record
            self.run.save_model(self.model, self.tokenizer)
            self.run.save_predictions({split: result.rows() for split, result in results.items()})
        return record

    def _improves(self, value: float) -> bool:
        if self.state.step == 0 and not self.config.train.select_step_zero:
            return False
        return not math.isnan(value) and (self.state.best_value is None or value > self.state.best_value)

    def _note_collapse(self, record: dict[str, Any]) -> None:
        if record.get("test/majority_share") == 1.0:
            self.warn(f"step {self.state.step}: the model predicts one class for every test example "
                      f"(the majority class is {self.baseline['share']:.2%} of the test split)")

    def warn(self, message: str) -> None:
        self.state.warnings.append(message)
        self.console.warn(message)

    # -- the loop ----------------------------------------------------------------------------------------

    def draw_batches(self, count: int | None) -> list[dict[str, torch.Tensor]]:
        """`count` more micro-batches from the training stream, or with None the whole training split in order.

        Methods call it inside their step for a large batch now and then (MeZO-SVRG's snapshots), so its
        forwards and time count as the step's; stream batches count in examples_seen, the whole split does not.
        """
        batches = (eval_batches(self.encoded["train"], self.tokenizer, self.config.train.batch_size) if count is None
                   else (next(self.stream) for _ in range(count)))
        return [to_device(batch, self.device) for batch in batches]

    def train_step(self) -> dict[str, Any]:
        stopwatch = Stopwatch()
        forwards_before = self.forwards.count
        micro_batches = self.draw_batches(self.config.method.grad_accumulation)
        exchanged_before = self.parallel.bytes_sent if self.parallel else 0
        with stopwatch.timing(self.device):
            stats = self.method.step(micro_batches)
        if self.parallel:
            self.step_exchange_bytes = stats["exchanged_bytes"] = self.parallel.bytes_sent - exchanged_before
        self.state.step += 1
        self.state.train_seconds += stopwatch.seconds
        self.state.forward_passes += self.forwards.count - forwards_before
        self.state.backward_passes += stats.pop("backward_passes")
        return {
            "kind": "train", "step": self.state.step, **stats, "examples_seen": self.stream.examples_seen,
            "epoch": self.stream.epoch, "forward_passes": self.state.forward_passes,
            "backward_passes": self.state.backward_passes, "step_seconds": stopwatch.seconds,
            "train_seconds": self.state.train_seconds,
        }

    def loop(self, stop: threading.Event) -> Status:
        """Run the remaining steps; returns how the run ended: completed, diverged or interrupted."""
        cfg = self.config.train
        if self.state.step == 0:
            self.log(self.evaluate())
        while self.state.step < self.total_steps:
            if self.stop_requested(stop):
                return Status.INTERRUPTED
            record = self.train_step()
            self.state.track_loss(record["loss"])
            if not math.isfinite(record["loss"]) or self.state.loss_exploded(cfg.divergence_factor):
                self.log(record)
                self.warn(f"step {self.state.step}: the loss is {record['loss']:.4g}, diverged from "
                          f"{self.state.first_losses[0]:.4g} at the start; training stopped")
                return Status.DIVERGED
            if self.state.step % cfg.log_every == 0:
                self.log(record)
            self.console.step(record)
            spent = self.spent_budget()
            if self.state.step % cfg.eval_every == 0 or self.state.step == self.total_steps or spent:
                self.log(self.evaluate())
            if self.parallel and self.parallel.due(self.state.step):
                self.check_replicas()
            if cfg.checkpoint_every and self.state.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if spent:
                stop_text = describe_stop(spent, cfg.max_minutes, cfg.max_forward_passes)
                self.console.print(f"step {self.state.step}: the {stop_text} is spent")
                self.stopped_by = spent
                break
        return Status.COMPLETED

    def stop_requested(self, stop: threading.Event) -> bool:
        """A stop signal has come; on several processes, to any rank (each gets its own copy of the signal at its
        own moment, and all must stop after the same step)."""
        return bool(self.parallel.agree(stop.is_set())) if self.parallel else stop.is_set()

    def spent_budget(self) -> StoppedBy | None:
        """Which budget, if any, the run has used up: training minutes or forward passes; on several processes,
        that of any rank (their clocks differ)."""
        cfg = self.config.train
        spent: StoppedBy | None = None
        if cfg.max_minutes is not None and self.state.train_seconds >= 60 * cfg.max_minutes:
            spent = "max_minutes"
        elif cfg.max_forward_passes is not None and self.state.forward_passes >= cfg.max_forward_passes:
            spent = "max_forward_passes"
        if self.parallel:
            spent = BUDGETS[self.parallel.agree(BUDGETS.index(spent))]
        return spent

    def check_replicas(self) -> None:
        assert self.parallel is not None
        self.parallel.check_replicas(self._trainable_tensors(), self.state.step)

    def log(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            sink.log(record)

    def summary(self, status: Status, memory: dict[str, Any], wall_seconds: float) -> Summary:
        trainable, total = count_parameters(self.model)
        steps = self.state.step
        main = self.task.main_metric
        best_test = self.state.best_eval.get(f"test/{main}")
        environment = self.environment
        return Summary(
            status=status, task=self.task.name, model=self.config.model.model, method=self.config.method.method,
            params=self.config.method.params, steps=steps, planned_steps=self.total_steps, stopped_by=self.stopped_by,
            select_key=self.select_key,
            best={"step": self.state.best_step, **_split_metrics(self.state.best_eval)},
            final={"step": self.state.last_eval.get("step"), **_split_metrics(self.state.last_eval)},
            majority_baseline={"split": "test", **self.baseline},
            beats_majority=None if best_test is None or math.isnan(self.baseline.get(main, math.nan))
            else best_test > self.baseline[main],
            parameters=ParameterCount(trainable=trainable, total=total, trainable_percent=100 * trainable / total),
            passes=Passes(forward=self.state.forward_passes, backward=self.state.backward_passes),
            examples_seen=self.stream.examples_seen,
            time=Timing(wall_seconds=wall_seconds, train_seconds=self.state.train_seconds,
                        eval_seconds=self.state.eval_seconds,
                        seconds_per_step=self.state.train_seconds / steps if steps else None),
            memory=memory,
            data=DataInfo(source=self.data.source,
                          sizes={name: len(split.labels) for name, split in self.data.splits.items()}),
            head_init=self.head_init, warnings=self.state.warnings, device=Device(**environment["device"]),
            versions=environment["versions"], git_commit=environment["git_commit"],
            distributed=self.parallel.describe(self.step_exchange_bytes) if self.parallel else None,
        )


def _split_metrics(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if "/" in key}


def _close_sinks(sinks: Sequence[MetricSink], summary: Summary) -> None:
    """Hand each sink the summary; the run folder's first, so summary.json is written whatever follows. After
    a crash (a full disk, say) writing the summary is only an attempt: its own failure, likely on the same
    disk, must not replace the error that crashed the run, which is the one the user needs to see."""
    for sink in sinks:
        if summary.status != Status.CRASHED:
            sink.close(summary)
            continue
        with contextlib.suppress(Exception):
            sink.close(summary)


def train(config: RunConfig, out: str | Path, *, overwrite: bool = False, resume: bool = False,
          console: Console | None = None, command: list[str] | None = None,
          sinks: Sequence[MetricSink] = ()) -> Summary:
    """Train according to `config` into the run folder `out`; returns the summary it wrote. The records go
    to the run folder and the console, and to `sinks` too (a TensorBoardSink, say).

    Under torchrun (WORLD_SIZE > 1) it trains data-parallel (zoft.distributed): rank 0 writes the run folder
    and prints, the other ranks write nothing and print only errors."""
    with distributed.join(config) as parallel:
        run = parallel.run_folder(out) if parallel else RunFolder(out)
        run.check(overwrite=overwrite, resume=resume)
        if parallel and not parallel.writes:
            console, sinks = Console(quiet=True), ()
        console = console or Console()
        trainer = Trainer(config, run, console, sinks, parallel)
        trainer.setup()
        if resume:
            trainer.restore_checkpoint()
        else:
            run.begin(config, overwrite=overwrite)
            trainer.begin_trajectory()
        if parallel:
            trainer.check_replicas()
        console.start(trainer.describe(), total=trainer.total_steps, done=trainer.state.step)
        started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        started = time.perf_counter() - trainer.state.train_seconds - trainer.state.eval_seconds
        status = Status.CRASHED
        try:
            with measure_memory(trainer.device) as memory, stop_requests() as stop:
                ended = trainer.loop(stop)
            if parallel:
                trainer.check_replicas()
            trainer.save_checkpoint()
            status = ended  # only once the last checkpoint is on disk: a failed save (a full disk) is a crash
        finally:
            summary = trainer.summary(status, memory.to_dict(), time.perf_counter() - started)
            summary.command, summary.started_at = command, started_at
            _close_sinks(trainer.sinks, summary)
        if status == Status.INTERRUPTED:
            raise Interrupted(run.path, stop.signum)
        return summary

"""Several runs, one after another: how compare and sweep build each run's config, and what they do with a run
folder that already holds something.

One way to layer a config (defaults → preset → the user's keys → a grid point or budget → the method) and one
rule for an existing folder (keep a finished run of the same config, resume a stopped one, refuse one of another
config unless --overwrite), so that `zoft compare` and `zoft sweep` behave alike when run again.

The runs train in this process, one after another, or each in a child `python -m zoft train` process
(:class:`Processes`): several at once (sweep --jobs), each pinned to a GPU or given its share of the CPU cores,
each on several processes of its own (--nproc, through torchrun). A child's console goes to the log file in its
run folder; a child that fails is reported and the others go on; a stop signal reaches every child, which
checkpoints as `zoft train` does, so the same command run again continues.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from zoft import presets
from zoft.config import RunConfig, build_config, load_yaml, to_yaml
from zoft.console import Console
from zoft.measure import pick_device
from zoft.method_names import lookup
from zoft.runs import FolderState, RunFolder, Status, Summary
from zoft.train import Interrupted, StopRequest, stop_signals_handled

Train = Callable[..., Summary]  # zoft.train.train(config, out, *, overwrite, resume)


def layered_config(method: str, overrides: dict[str, Any], preset: Path | None = None,
                   extra: dict[str, Any] | None = None) -> RunConfig:
    """A method's config: the defaults, then `preset` (else the packaged one for the task, model, head and
    method, else none), then the user's `overrides`, then `extra` (a grid point, a budget), then the method."""
    keys = lookup(method).keys()
    if preset is None:
        chosen = build_config(overrides={**overrides, **keys})
        preset = presets.packaged(chosen.data.task, chosen.model.model, chosen.model.head, method)
    preset_keys = load_yaml(preset) if preset else {}
    return build_config(overrides={**preset_keys, **overrides, **(extra or {}), **keys})


@dataclass(frozen=True)
class PlannedRun:
    name: str  # what the status line calls it: the method (compare) or the grid point (sweep)
    config: RunConfig
    folder: RunFolder


TRAIN_CONFIG = "train-config.yaml"  # in a run folder: the config its child `zoft train --config` starts from
TRAIN_LOG = "train.log"  # in a run folder: its child's console, appended to at each start
POLL_SECONDS = 0.2  # how often the children are looked at: their runs take seconds at the least


@dataclass(frozen=True)
class PendingRun:
    """A run that is to train: its folder was new, stopped (to resume) or stale (to replace)."""

    where: str  # how the console names it: "sweep: 2/4 lr=1e-3"
    run: PlannedRun
    state: FolderState

    def starting(self, detail: str = "") -> str:
        return (f"{self.where} → {self.run.folder.path}" + (" (resuming)" if self.state == "stopped" else "")
                + detail)


@dataclass(frozen=True)
class Processes:
    """Each run trained by a child `python -m zoft train` rather than in this process: `jobs` of them at once,
    each on `nproc` processes (torchrun) when given; `options` go to every child (e.g. --tensorboard)."""

    jobs: int = 1
    nproc: int | None = None
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Failed:
    """A run whose child process failed: the others went on, the command exits non-zero at the end."""

    run: PlannedRun
    code: int
    log: Path


def train_each(runs: Sequence[PlannedRun], train: Train, *, overwrite: bool, console: Console, command: str,
               processes: Processes | None = None) -> list[Failed]:
    """Train each run into its folder: in this process one after another (compare never runs two at once:
    timings would interfere), or in child processes (`processes`); returns the runs whose child failed.

    Every folder is checked before the first run starts, so a folder holding another config stops the command
    before any work is done rather than after hours of it."""
    states = [run.folder.state(run.config, overwrite=overwrite) for run in runs]
    pending = []
    for index, (run, state) in enumerate(zip(runs, states, strict=True), 1):
        where = f"{command}: {index}/{len(runs)} {run.name}"
        if state == "finished":
            console.print(f"{where}: {run.folder.path} already holds this run; keeping it")
        else:
            pending.append(PendingRun(where, run, state))
    if processes is not None:
        return train_in_processes(pending, processes, console, command)
    for item in pending:
        console.print(item.starting())
        train(item.run.config, item.run.folder.path, overwrite=item.state == "stale", resume=item.state == "stopped")
    return []


# -- runs in child processes --------------------------------------------------------------------------------------


def visible_gpus() -> tuple[str, ...]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (its own list when set, so that a child
    pinned to the i-th gets the i-th of those, not the machine's i-th)."""
    if not torch.cuda.is_available():
        return ()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return tuple(entry.strip() for entry in listed.split(",") if entry.strip())
    return tuple(str(index) for index in range(torch.cuda.device_count()))


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which a scheduler such as SLURM sets)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class Placement:
    """Where the children go: runs at once on GPUs are pinned to one each in turn (CUDA_VISIBLE_DEVICES; more runs
    than GPUs share them), runs on the CPU split its cores (OMP_NUM_THREADS, which sets torch's threads), so
    that runs at once do not oversubscribe the machine."""

    gpus: tuple[str, ...]  # empty: no pinning (one run at a time, which --nproc spreads over every GPU)
    threads: int  # each CPU process's share of the cores

    @classmethod
    def here(cls, processes: Processes) -> Placement:
        share = processes.jobs * (processes.nproc or 1)
        return cls(visible_gpus() if processes.jobs > 1 else (), max(1, usable_cores() // share))

    def environment(self, config: RunConfig, slot: int) -> dict[str, str]:
        """The child's variables for a run of `config` started in `slot` (0 to jobs - 1, the first free one: the
        runs in progress stay spread over the GPUs however long each takes)."""
        device = pick_device(config.train.device)
        if device.type == "cuda" and device.index is None and self.gpus:  # cuda:N: the user's own choice
            return {"CUDA_VISIBLE_DEVICES": self.gpus[slot % len(self.gpus)]}
        return {"OMP_NUM_THREADS": str(self.threads)} if device.type == "cpu" else {}

    def describe(self, processes: Processes) -> str:
        each = f" of {processes.nproc} processes" if processes.nproc else ""
        cpu = f"{self.threads} thread{'s' if self.threads > 1 else ''} a process ({usable_cores()} cores)"
        cuda = (f"pinned to one of {len(self.gpus)} GPU(s) in turn (CUDA_VISIBLE_DEVICES)" if self.gpus
                else "every GPU this process sees")
        return (f"{processes.jobs} run(s) at once, each a `zoft train`{each} with its console in <run folder>/"
                f"{TRAIN_LOG}; runs on the CPU: {cpu}; runs on CUDA: {cuda}")


def child_argv(item: PendingRun, processes: Processes) -> list[str]:
    """The `zoft train` command of `item`: a stopped run resumes from its folder; another starts from its config,
    written into the folder (train records it as config.yaml, which reads back equal: the next run of the
    command keeps or resumes it)."""
    folder = item.run.folder.path
    argv = [sys.executable, "-m", "zoft", "train", "--out", str(folder), *processes.options]
    if processes.nproc:
        argv += ["--nproc", str(processes.nproc)]
    if item.state == "stopped":
        return [*argv, "--resume"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TRAIN_CONFIG).write_text(to_yaml(item.run.config))
    return [*argv, "--config", str(folder / TRAIN_CONFIG), *(["--overwrite"] if item.state == "stale" else [])]


class Child:
    """One run's `zoft train` process, its console appended to the run folder's log."""

    def __init__(self, item: PendingRun, argv: list[str], environment: dict[str, str]) -> None:
        self.item = item
        self.log = item.run.folder.path / TRAIN_LOG
        item.run.folder.path.mkdir(parents=True, exist_ok=True)
        with self.log.open("a") as log:
            started = datetime.now(timezone.utc).isoformat(timespec="seconds")
            log.write(f"# {started}: {' '.join(f'{k}={v}' for k, v in environment.items())} {' '.join(argv)}\n")
            # a session of its own: a terminal's Ctrl-C reaches the child once, forwarded by this command, not
            # twice (a second signal would stop it at once, without its last checkpoint)
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            env={**os.environ, **environment})

    def signal(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def outcome(self, stop: StopRequest) -> Status | None:
        """How the run ended (completed, diverged, interrupted by a stop), or None: the child failed."""
        code, folder = self.process.returncode, self.item.run.folder
        status = folder.read_summary().status if folder.summary_path.is_file() else None
        if code == 0 or (code == 1 and status == Status.DIVERGED):  # zoft train exits 1 on a diverged run
            return status
        if stop.is_set() and (code < 0 or code >= 128):  # stopped by the signal forwarded, or killed before its loop
            return Status.INTERRUPTED
        return None

    def last_line(self) -> str:
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""


@contextmanager
def forwarded_stops(running: dict[int, Child], console: Console, command: str) -> Iterator[StopRequest]:
    """Ctrl-C, SIGTERM or SIGHUP to this command goes to every child, each time: each stops as `zoft train` does
    (after its step, with a checkpoint; at once on a second signal), and no other run starts."""
    stop = StopRequest()

    def forward(signum: int, frame: object) -> None:
        if not stop.is_set():
            console.print(f"{command}: {signal.Signals(signum).name} received: passed to the {len(running)} run(s) "
                          "in progress, which stop after their step with a checkpoint; no other run starts")
        stop.signum = signum
        stop.set()
        for child in running.values():
            child.signal(signum)

    with stop_signals_handled(forward):
        yield stop


def train_in_processes(pending: list[PendingRun], processes: Processes, console: Console,
                       command: str) -> list[Failed]:
    """Train `pending` in child processes, `processes.jobs` at a time; returns the runs whose child failed. After a
    stop signal, waits for the children to checkpoint and raises Interrupted: the same command continues."""
    if not pending:
        return []
    placement = Placement.here(processes)
    console.print(f"{command}: {placement.describe(processes)}")
    queue, running, failed = deque(pending), {}, []
    ended = 0
    try:
        with forwarded_stops(running, console, command) as stop:
            while running or (queue and not stop.is_set()):
                while queue and not stop.is_set() and len(running) < processes.jobs:
                    slot = min(set(range(processes.jobs)) - set(running))
                    running[slot] = start_child(queue.popleft(), slot, placement, processes, console)
                    if stop.is_set():  # the signal came while it started: it missed the forwarding
                        running[slot].signal(stop.signum)
                time.sleep(POLL_SECONDS)
                for slot in [slot for slot, child in running.items() if child.process.poll() is not None]:
                    child = running.pop(slot)
                    ended += 1
                    failure = report_end(child, stop, console, f"{ended} of {len(pending)} ended")
                    failed += [failure] if failure else []
    finally:  # an error of this command's own: the children stop with a checkpoint rather than run on unseen
        for child in running.values():
            child.signal(signal.SIGTERM)
        for child in running.values():
            child.process.wait()
    if stop.is_set():
        raise Interrupted(pending[0].run.folder.path.parent, stop.signum)
    return failed


def start_child(item: PendingRun, slot: int, placement: Placement, processes: Processes, console: Console) -> Child:
    environment = placement.environment(item.run.config, slot)
    pinned = environment.get("CUDA_VISIBLE_DEVICES")
    where = f"GPU {pinned}" if pinned is not None else f"{placement.threads} thread(s)" if environment else "its device"
    child = Child(item, child_argv(item, processes), environment)
    console.print(item.starting(f" [{where}; log {child.log}]"))
    return child


def report_end(child: Child, stop: StopRequest, console: Console, progress: str) -> Failed | None:
    """The console's line for a child that ended, and its failure (said on stderr even by a quiet command)."""
    status, where = child.outcome(stop), child.item.where
    if status is not None:
        console.print(f"{where}: {status} ({progress})")
        return None
    print(f"zoft: error: {where} failed (exit status {child.process.returncode}; its log: {child.log}): "
          f"{child.last_line()}", file=sys.stderr, flush=True)
    return Failed(child.item.run, child.process.returncode, child.log)


def failure_message(failed: list[Failed], total: int, command: str) -> str:
    """The command's last word when runs failed: which, and where their logs are."""
    names = "; ".join(f"{failure.run.name} (log: {failure.log})" for failure in failed)
    return f"zoft: error: {command}: {len(failed)} of {total} run(s) failed: {names}"

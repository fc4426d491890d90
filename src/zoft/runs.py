"""The run folder: everything a run leaves behind, written so that a crash loses nothing already written.

    config.yaml       the fully resolved config (enough to rerun)
    metrics.jsonl     one line per logged step and per evaluation
    summary.json      final and best metrics, baseline, parameters, time, memory, versions
    model/            the best checkpoint (by validation): a PEFT adapter or a full model, with tokenizer
    predictions/      test and validation predictions of that checkpoint
    checkpoint/       the latest resumable training state
    tensorboard/      with --tensorboard: the same records as TensorBoard events
    start.safetensors MeZO (SPSA): the trainable tensors at step 0, the starting point of the trajectory
    trajectory.bin    MeZO (SPSA): each step's seeds, projected gradients and lr (zoft replay rebuilds from them)
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import peft
import torch
import transformers
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from zoft import __version__, trajectory
from zoft.config import RunConfig, from_dict, to_yaml
from zoft.errors import ZoftError, first_line

RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "summary.json", "model", "predictions", "checkpoint", "tensorboard",
               "start.safetensors", "trajectory.bin")
# start.safetensors' metadata key for the tensors' order: the parameter order, which the optimiser's slices
# and buckets follow (safetensors itself keeps no order).
START_ORDER_KEY = "zoft_parameter_order"
SUMMARY_FORMAT = 1  # summary.json's version; a document without "format" is format 0 (written before it existed)


class Status(str, Enum):
    """How a run ended. A str-Enum (the project supports Python 3.10, which has no StrEnum): it is written to
    summary.json as its value and compares equal to it."""

    COMPLETED = "completed"
    DIVERGED = "diverged"
    INTERRUPTED = "interrupted"
    CRASHED = "crashed"

    def __str__(self) -> str:  # f-strings show "completed", not "Status.COMPLETED"
        return self.value


FINISHED = frozenset({Status.COMPLETED, Status.DIVERGED})  # nothing left to run: a compare or sweep keeps it

FolderState = Literal["new", "finished", "stopped", "stale"]  # see RunFolder.state
StoppedBy = Literal["steps", "max_minutes", "max_forward_passes"]  # the config key whose limit ended the run


def describe_stop(stopped_by: StoppedBy, max_minutes: float | None, max_forward_passes: int | None) -> str:
    """The limit that ended a run, for people: 'time budget of 10 minutes', 'budget of 400 forward passes'."""
    if stopped_by == "max_minutes":
        return f"time budget of {max_minutes:g} minutes"
    if stopped_by == "max_forward_passes":
        return f"budget of {max_forward_passes} forward passes"
    return "planned steps"


def _stopped_by(value: str | None) -> StoppedBy:
    """Format 0 wrote the budget as prose ('time budget of 10 minutes', 'budget of 400 forward passes')."""
    if value is None or value == "steps":
        return "steps"
    if value == "max_minutes" or value.startswith("time budget of "):
        return "max_minutes"
    if value == "max_forward_passes" or value.endswith(" forward passes"):
        return "max_forward_passes"
    raise ZoftError(f"summary.json: unknown stopped_by '{value}'")


@dataclass
class Timing:
    wall_seconds: float | None = None
    train_seconds: float | None = None  # training steps only
    eval_seconds: float | None = None
    seconds_per_step: float | None = None  # train_seconds / steps; None before the first step


@dataclass
class Passes:
    forward: int | None = None  # during training steps only, evaluation excluded
    backward: int | None = None


@dataclass
class ParameterCount:
    trainable: int
    total: int
    trainable_percent: float


@dataclass
class DataInfo:
    source: str | None = None
    sizes: dict[str, int] = field(default_factory=dict)  # examples per split


@dataclass
class Device:
    type: str
    name: str
    threads: int

    def describe(self) -> str:
        return f"{self.type} ({self.name}, {self.threads} thread{'' if self.threads == 1 else 's'})"


@dataclass
class Summary:
    """summary.json: how a run ended and what it measured. `from_json` is the one reader of the file (the
    only code that knows older or missing keys); a key a document lacks reads as None (or empty)."""

    status: Status
    task: str | None = None
    model: str | None = None
    method: str | None = None
    params: str | None = None
    steps: int | None = None
    planned_steps: int | None = None
    stopped_by: StoppedBy = "steps"
    select_key: str | None = None  # the validation metric that chose the best checkpoint: validation/accuracy
    best: dict[str, Any] = field(default_factory=dict)  # {"step": ..., "test/accuracy": ...}: the chosen eval
    final: dict[str, Any] = field(default_factory=dict)  # the last evaluation, same keys
    majority_baseline: dict[str, Any] = field(default_factory=dict)  # {"split": "test", metric: value, ...}
    beats_majority: bool | None = None
    parameters: ParameterCount | None = None
    passes: Passes = field(default_factory=Passes)
    examples_seen: int | None = None
    time: Timing = field(default_factory=Timing)
    memory: dict[str, Any] = field(default_factory=dict)  # measure.MemoryReport's keys: they differ by device
    data: DataInfo = field(default_factory=DataInfo)
    head_init: dict[str, Any] | None = None  # the linear probe's result, when the head was fitted by one
    warnings: list[str] = field(default_factory=list)
    device: Device | None = None
    versions: dict[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    command: list[str] | None = None
    started_at: str | None = None
    # several processes: world size, mode, bytes exchanged per step, replica checks (zoft.distributed); written
    # only then, so that a one-process summary keeps format 1's keys
    distributed: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        document = {"format": SUMMARY_FORMAT, **asdict(self)}
        document["status"] = Status(self.status).value
        document["select_metric"] = document.pop("select_key")
        # the keys in the order format 0 wrote them, so that old and new files read alike
        ordered = {key: document[key] for key in ("format", *_KEY_ORDER)}
        return ordered if self.distributed is None else {**ordered, "distributed": self.distributed}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Summary:
        version = doc.get("format", 0)
        if version > SUMMARY_FORMAT:
            raise ZoftError(f"summary.json of format {version}: written by a newer zoft than this one")
        parameters, device = doc.get("parameters"), doc.get("device")
        return cls(
            status=Status(doc["status"]), task=doc.get("task"), model=doc.get("model"), method=doc.get("method"),
            params=doc.get("params"), steps=doc.get("steps"), planned_steps=doc.get("planned_steps"),
            stopped_by=_stopped_by(doc.get("stopped_by")), select_key=doc.get("select_metric"),
            best=doc.get("best") or {}, final=doc.get("final") or {},
            majority_baseline=doc.get("majority_baseline") or {}, beats_majority=doc.get("beats_majority"),
            parameters=ParameterCount(**parameters) if parameters else None,
            passes=Passes(**doc.get("passes", {})), examples_seen=doc.get("examples_seen"),
            time=Timing(**doc.get("time", {})), memory=doc.get("memory") or {}, data=DataInfo(**doc.get("data", {})),
            head_init=doc.get("head_init"), warnings=doc.get("warnings") or [],
            device=Device(**device) if device else None, versions=doc.get("versions") or {},
            git_commit=doc.get("git_commit"), command=doc.get("command"), started_at=doc.get("started_at"),
            distributed=doc.get("distributed"),
        )


_KEY_ORDER = ("status", "task", "model", "method", "params", "steps", "planned_steps", "stopped_by", "select_metric",
              "best", "final", "majority_baseline", "beats_majority", "parameters", "passes", "examples_seen", "time",
              "memory", "data", "head_init", "warnings", "device", "versions", "git_commit", "command", "started_at")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file. A process killed mid-write leaves a partial last line, which is dropped (a
    resumed run rewrites the file from its checkpoint); a line that is not JSON anywhere else is a damaged file."""
    return read_jsonl_tail(path)[0]


def read_jsonl_tail(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """read_jsonl's records, and whether a partial last line was dropped (resume says so)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ZoftError(f"{path}: line {number} is not JSON") from None
            return records, True
    return records, False


# What a failed write raises: safetensors reports a full disk as a SafetensorError, not as an OSError.
WRITE_ERRORS: tuple[type[Exception], ...] = (OSError, SafetensorError)


@contextmanager
def _writing(path: Path, errors: tuple[type[Exception], ...] = WRITE_ERRORS) -> Iterator[None]:
    """A failed write (a full disk, a quota, a folder gone read-only) becomes one line naming the file and the
    space left, not a traceback from deep inside safetensors or torch. `errors`: what the writer raises for a
    failed write."""
    try:
        yield
    except ZoftError:
        raise  # already names its file
    except errors as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
        raise ZoftError(f"could not write {path}: {reason}{_free_space(path)}") from error


def _free_space(path: Path) -> str:
    folder = next((p for p in path.parents if p.is_dir()), Path("."))
    try:
        return f" ({shutil.disk_usage(folder).free / 1e6:.0f} MB free there)"
    except OSError:
        return ""


def _write_all(descriptor: int, data: bytes) -> None:
    done = 0
    while done < len(data):  # os.write may write less than it is given
        done += os.write(descriptor, data[done:])


def _fsync(path: Path) -> None:
    """Flush a file to disk, or make the renames in a folder durable (without that, a power loss can undo a
    rename after the old file is gone)."""
    if path.is_dir() and os.name != "posix":  # Windows cannot open a folder; NTFS journals renames itself
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(folder: Path) -> None:
    """Flush every file a library wrote into `folder` (safetensors, torch.save and save_pretrained do not)."""
    for path in sorted(folder.rglob("*"), reverse=True):  # files before the folders that hold them
        _fsync(path)
    _fsync(folder)


def _write_text_atomically(path: Path, text: str) -> None:
    """Write to a temporary name, flush it to disk, then rename: `path` holds the old text or the new, never a
    part of either, even after a full disk or a power loss."""
    tmp = path.with_name(path.name + ".tmp")
    with _writing(path):
        try:
            with tmp.open("w") as file:
                file.write(text)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # a failed write leaves no half-written .tmp taking the space
        _fsync(path.parent)


def _replace_dir(target: Path, fill: Callable[[Path], None]) -> None:
    """Fill a fresh folder, flush it to disk, then swap it in, so that `target` is never left half written: a
    failure while filling (a full disk) leaves the previous `target` as it was and removes the partial copy."""
    tmp = target.with_name(target.name + ".tmp")
    old = target.with_name(target.name + ".old")
    with _writing(target):
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            fill(tmp)
            _fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync(target.parent)
        shutil.rmtree(old, ignore_errors=True)


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def state(self, config: RunConfig, *, overwrite: bool) -> FolderState:
        """What a compare or sweep does with this folder for `config`: train into it (new), keep it (finished:
        the same config and a finished summary), resume it (stopped: the same config and a checkpoint) or
        replace it (stale: --overwrite, or the same config with neither). A run of another config is never
        replaced without --overwrite."""
        if not self.holds_run():
            return "new"
        if overwrite:
            return "stale"
        if self.read_config() != config:
            raise ZoftError(f"{self.path} holds a run with another config; pass --overwrite to replace it")
        if self.finished():
            return "finished"
        return "stopped" if (self.path / "checkpoint").is_dir() else "stale"

    def holds_run(self) -> bool:
        return (self.path / "config.yaml").exists() or self.metrics_path.exists()

    def check(self, *, overwrite: bool, resume: bool) -> None:
        """Refuse, before any work is done, to write over a run the user did not ask to replace."""
        if overwrite and resume:
            raise ZoftError("--overwrite and --resume exclude each other")
        if self.path.exists() and not self.path.is_dir():
            raise ZoftError(f"run folder {self.path} is a file")
        if resume and not (self.path / "checkpoint").is_dir():
            raise ZoftError(f"{self.path} holds no checkpoint to resume from")
        if self.holds_run() and not (overwrite or resume):
            raise ZoftError(
                f"{self.path} already holds a run; pass --overwrite to replace it or --resume to continue it"
            )

    def begin(self, config: RunConfig, *, overwrite: bool) -> None:
        """Start a fresh run: clear an old one (only what zoft writes) and record the config."""
        if overwrite:
            for entry in RUN_ENTRIES:
                target = self.path / entry
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        _write_text_atomically(self.path / "config.yaml", to_yaml(config))

    def read_config(self) -> RunConfig:
        path = self.path / "config.yaml"
        if not path.is_file():
            raise ZoftError(f"{self.path} has no config.yaml")
        return from_dict(yaml.safe_load(path.read_text()) or {})

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Add one line, flushed to disk. A write that fails part way (a full disk) is cut back off, so the file
        keeps every earlier line and no partial one; unbuffered, so no buffer retries the write at close."""
        data = (json.dumps(record) + "\n").encode()
        with _writing(self.metrics_path):
            descriptor = os.open(self.metrics_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                end = os.lseek(descriptor, 0, os.SEEK_END)
                try:
                    _write_all(descriptor, data)
                    os.fsync(descriptor)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(descriptor, end)
                    raise
            finally:
                os.close(descriptor)

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path) if self.metrics_path.exists() else []

    def truncate_metrics(self, last_step: int) -> bool:
        """Drop the lines written after the checkpoint a resumed run restarts from; True when the last line was
        partial (a run killed mid-write), for the caller to say so."""
        records, torn = read_jsonl_tail(self.metrics_path) if self.metrics_path.exists() else ([], False)
        kept = [json.dumps(r) + "\n" for r in records if r["step"] <= last_step]
        _write_text_atomically(self.metrics_path, "".join(kept))
        return torn

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def write_summary(self, summary: Summary) -> None:
        _write_text_atomically(self.summary_path, json.dumps(summary.to_json(), indent=2) + "\n")

    def read_summary(self) -> Summary:
        return Summary.from_json(json.loads(self.summary_path.read_text()))

    def finished(self) -> bool:
        """A summary says the run has nothing left to do (completed or diverged)."""
        return self.summary_path.is_file() and self.read_summary().status in FINISHED

    def save_model(self, model: torch.nn.Module, tokenizer: Any) -> None:
        def fill(folder: Path) -> None:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)

        _replace_dir(self.path / "model", fill)

    def save_predictions(self, predictions: dict[str, Iterable[dict[str, Any]]]) -> None:
        def fill(folder: Path) -> None:
            for split, rows in predictions.items():
                (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

        _replace_dir(self.path / "predictions", fill)

    def save_checkpoint(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        def fill(folder: Path) -> None:
            # each file named in an error as it will be called, not by its temporary folder
            with _writing(self.path / "checkpoint" / "trainable.safetensors"):
                save_file({name: t.detach().contiguous().cpu() for name, t in tensors.items()},
                          folder / "trainable.safetensors")
            # torch.save reports a full disk as a RuntimeError ("unexpected pos ..."), and nothing else it can
            # raise writing a dict of tensors and numbers is other than a failed write
            with _writing(self.path / "checkpoint" / "state.pt", errors=(*WRITE_ERRORS, RuntimeError)):
                torch.save(state, folder / "state.pt")

        _replace_dir(self.path / "checkpoint", fill)

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        folder = self.path / "checkpoint"
        return load_file(folder / "trainable.safetensors"), torch.load(folder / "state.pt", weights_only=True)


    @property
    def trajectory_path(self) -> Path:
        return self.path / "trajectory.bin"

    @property
    def start_path(self) -> Path:
        return self.path / "start.safetensors"

    def save_start(self, tensors: dict[str, torch.Tensor]) -> None:
        """The trainable tensors before the first step, in their parameter order."""
        tmp = self.start_path.with_name(self.start_path.name + ".tmp")
        with _writing(self.start_path):
            try:
                save_file({name: t.detach().contiguous().cpu() for name, t in tensors.items()}, tmp,
                          metadata={START_ORDER_KEY: json.dumps(list(tensors))})
                _fsync(tmp)
                os.replace(tmp, self.start_path)
            finally:
                tmp.unlink(missing_ok=True)
            _fsync(self.path)

    def create_trajectory(self, device: str) -> None:
        """An empty trajectory for a run whose z is drawn on `device`."""
        trajectory.create(self.trajectory_path, device=device)

    def truncate_trajectory(self, last_step: int) -> int:
        """The trajectory cut back to `last_step` (a resumed run's checkpoint); returns the last step kept."""
        return trajectory.truncate(self.trajectory_path, last_step)

    def append_trajectory(self, record: trajectory.StepRecord) -> None:
        """One step of the seed trajectory; a failed write (a full disk) is one line naming the file, and the
        partial record it may leave is dropped on resume like a torn metrics line."""
        with _writing(self.trajectory_path):
            trajectory.append(self.trajectory_path, record)

    def load_start(self) -> dict[str, torch.Tensor]:
        """start.safetensors, in the parameter order it was saved in."""
        if not self.start_path.is_file():
            raise ZoftError(f"{self.path} has no start.safetensors")
        with safe_open(self.start_path, framework="pt") as file:
            order = json.loads((file.metadata() or {}).get(START_ORDER_KEY, "null"))
            if order is None:
                raise ZoftError(f"{self.start_path}: no parameter order in its metadata")
            return {name: file.get_tensor(name) for name in order}


def git_commit() -> str | None:
    """The commit of the zoft source tree, with '-dirty' when it has uncommitted changes."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def environment(device: torch.device) -> dict[str, Any]:
    """Where a run ran: device, library versions, code version."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "device": {"type": device.type, "name": name, "threads": torch.get_num_threads()},
        "versions": {
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "zoft": __version__,
        },
        "git_commit": git_commit(),
    }

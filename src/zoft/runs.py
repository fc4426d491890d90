"""The run folder: everything a run leaves behind, written so that a crash loses nothing already written.

    config.yaml       the fully resolved config (enough to rerun)
    metrics.jsonl     one line per logged step and per evaluation
    summary.json      final and best metrics, baseline, parameters, time, memory, versions
    model/            the best checkpoint (by validation): a PEFT adapter or a full model, with tokenizer
    predictions/      test and validation predictions of that checkpoint
    checkpoint/       the latest resumable training state
    tensorboard/      with --tensorboard: the same records as TensorBoard events
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import peft
import torch
import transformers
import yaml
from safetensors.torch import load_file, save_file

from zoft import __version__
from zoft.config import RunConfig, from_dict, to_yaml
from zoft.errors import ZoftError

RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "summary.json", "model", "predictions", "checkpoint", "tensorboard")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file. A process killed mid-write leaves a partial last line, which is dropped (a
    resumed run rewrites the file from its checkpoint); a line that is not JSON anywhere else is a damaged file."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise ZoftError(f"{path}: line {number} is not JSON") from None
    return records


def _write_text_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _replace_dir(target: Path, fill: Callable[[Path], None]) -> None:
    """Fill a fresh folder, then swap it in, so that `target` is never left half written."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    old = target.with_name(target.name + ".old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

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
        with self.metrics_path.open("a") as file:
            file.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.metrics_path) if self.metrics_path.exists() else []

    def truncate_metrics(self, last_step: int) -> None:
        """Drop the lines written after the checkpoint a resumed run restarts from."""
        kept = [json.dumps(r) + "\n" for r in self.read_metrics() if r["step"] <= last_step]
        _write_text_atomically(self.metrics_path, "".join(kept))

    def write_summary(self, summary: dict[str, Any]) -> None:
        _write_text_atomically(self.path / "summary.json", json.dumps(summary, indent=2) + "\n")

    def read_summary(self) -> dict[str, Any]:
        return json.loads((self.path / "summary.json").read_text())

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
            save_file({name: t.detach().contiguous().cpu() for name, t in tensors.items()},
                      folder / "trainable.safetensors")
            torch.save(state, folder / "state.pt")

        _replace_dir(self.path / "checkpoint", fill)

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        folder = self.path / "checkpoint"
        return load_file(folder / "trainable.safetensors"), torch.load(folder / "state.pt", weights_only=True)


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

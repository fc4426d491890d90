"""Measurements of a run: forward passes, time, peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psutil
import torch
from torch import nn

from zoft.errors import ZoftError

# Steps averaged for the loss at the start and at the end of a run: the divergence check compares the mean of the
# last LOSS_WINDOW steps with that of the first, and the report shows the same windows of logged steps.
LOSS_WINDOW = 10


def pick_device(name: str) -> torch.device:
    """The device a config names; auto: a CUDA GPU, else Apple's MPS, else the CPU."""
    if name != "auto":
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ZoftError(f"config key 'device': '{name}' is not a device (auto, cpu, cuda, cuda:N, mps)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ZoftError(f"device '{name}' requested but torch sees no CUDA GPU")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class ForwardCounter:
    """Counts calls of a module's forward while enabled (training steps), not during evaluation."""

    def __init__(self, model: nn.Module) -> None:
        self.count = 0
        self.enabled = True
        self._handle = model.register_forward_pre_hook(self._on_forward)

    def _on_forward(self, module: nn.Module, args: Any) -> None:
        if self.enabled:
            self.count += 1

    @contextmanager
    def paused(self):
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def remove(self) -> None:
        self._handle.remove()


class PeakRSS:
    """Samples the resident memory of this process in a background thread while running.

    The kernel's own high-water mark (ru_maxrss) cannot be reset, so it covers model loading and
    tokenisation too; sampling gives the peak of the training phase alone.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.start = 0
        self.peak = 0
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        self.peak = max(self.peak, self._process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakRSS:
        self._sample()
        self.start = self.peak
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def process_peak_rss() -> int:
    """Peak resident memory of the whole process so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@dataclass
class MemoryReport:
    device: str
    train_peak_rss_bytes: int
    process_peak_rss_bytes: int
    rss_at_train_start_bytes: int = 0
    cuda_max_allocated_bytes: int | None = None
    cuda_max_reserved_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if value is not None}


def release_freed_memory() -> None:
    """Hand the memory that earlier phases freed (evaluation batches, a linear probe's forward passes) back
    to the operating system, so that the resident memory sampled next belongs to the phase measured: glibc
    keeps freed small blocks in its heap, where they would count as the next phase's."""
    gc.collect()
    # A libc other than glibc (musl) has no malloc_trim; its RSS then includes the retained blocks.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextmanager
def measure_memory(device: torch.device):
    """Peak memory of the enclosed phase; the report is filled when the block exits."""
    release_freed_memory()
    report = MemoryReport(device=str(device), train_peak_rss_bytes=0, process_peak_rss_bytes=0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss = PeakRSS()
    try:
        with rss:
            yield report
    finally:
        report.train_peak_rss_bytes = rss.peak
        report.rss_at_train_start_bytes = rss.start
        report.process_peak_rss_bytes = process_peak_rss()
        if device.type == "cuda":
            report.cuda_max_allocated_bytes = torch.cuda.max_memory_allocated(device)
            report.cuda_max_reserved_bytes = torch.cuda.max_memory_reserved(device)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Stopwatch:
    """Accumulates seconds over several timed sections."""

    seconds: float = 0.0

    @contextmanager
    def timing(self, device: torch.device):
        synchronize(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(device)
            self.seconds += time.perf_counter() - start

"""trajectory.bin: what a MeZO run did at each step, in a few bytes, so that its weights can be rebuilt.

A MeZO step is a pure function of the trainable tensors before it and of its seeds, projected gradients
and learning rate (weight decay, momentum and eps are the config's, the same at every step): see
``ZerothOrderSGD.replay``. The file holds those per step, appended as the run goes:

    header   b"ZOFTTRAJ", format (uint16), length of the JSON that follows (uint16), JSON {"device": ...}
    record   step (uint32), lr (float64), n (uint16), then n times: seed (uint64), projected gradient (float64)

little-endian throughout: 14 + 16 n bytes a step (30 with one perturbation). n is per record because
n-SPSA schedules (n_perturbations_final) change it over the run. Both floats are doubles because the
optimiser computes with the Python floats: a float32 would round them and the replay would drift.

This module knows bytes only (no torch, no run folder), so the run folder, the training loop and
``zoft replay`` share one reader and one writer.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from zoft.errors import ZoftError

MAGIC = b"ZOFTTRAJ"
FORMAT = 1
_PREAMBLE = struct.Struct("<8sHH")
_RECORD = struct.Struct("<IdH")
_PERTURBATION = struct.Struct("<Qd")


@dataclass(frozen=True)
class StepRecord:
    """One optimiser step of the run: its number (1 for the first), the learning rate it used, and per
    perturbation its seed and projected gradient."""

    step: int
    lr: float
    seeds: tuple[int, ...]
    projected_grads: tuple[float, ...]

    def encode(self) -> bytes:
        pairs = b"".join(_PERTURBATION.pack(seed, grad) for seed, grad in zip(self.seeds, self.projected_grads,
                                                                              strict=True))
        return _RECORD.pack(self.step, self.lr, len(self.seeds)) + pairs


def record_size(n_perturbations: int) -> int:
    """Bytes of one step's record with `n_perturbations` perturbations."""
    return _RECORD.size + n_perturbations * _PERTURBATION.size


@dataclass(frozen=True)
class Trajectory:
    """A read trajectory.bin: the device its z was drawn on, the complete records, and the bytes of a
    record cut short at the end (a process killed mid-write), which are not in `records`."""

    device: str
    records: list[StepRecord]
    torn_bytes: int
    header_size: int

    @property
    def last_step(self) -> int:
        return self.records[-1].step if self.records else 0


def create(path: Path, device: str) -> None:
    """A trajectory with no step yet, for a run whose z is drawn on `device` ("cpu", "cuda:0")."""
    header = json.dumps({"device": device}).encode()
    path.write_bytes(_PREAMBLE.pack(MAGIC, FORMAT, len(header)) + header)


def append(path: Path, record: StepRecord) -> None:
    """Add one step. The file is opened for each record, as metrics.jsonl is: nothing waits in a buffer
    when a checkpoint is written after it, so a checkpoint never runs ahead of its trajectory."""
    with path.open("ab") as file:
        file.write(record.encode())


def read(path: Path) -> Trajectory:
    """The records of `path`; a partial last record is left out (`torn_bytes`), a record whose step is not
    the one after the previous one is a damaged file."""
    data = path.read_bytes()
    if len(data) < _PREAMBLE.size:
        raise ZoftError(f"{path}: not a trajectory file (too short for its header)")
    magic, version, header_length = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise ZoftError(f"{path}: not a trajectory file")
    if version > FORMAT:
        raise ZoftError(f"{path}: trajectory format {version}, written by a newer zoft than this one")
    offset = _PREAMBLE.size + header_length
    try:
        header = json.loads(data[_PREAMBLE.size:offset])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ZoftError(f"{path}: the trajectory's header is damaged") from None
    records: list[StepRecord] = []
    while offset < len(data):
        record, end = _decode(data, offset)
        if record is None:
            break
        if record.step != len(records) + 1:
            raise ZoftError(f"{path}: record {len(records) + 1} is for step {record.step}: a damaged file")
        records.append(record)
        offset = end
    return Trajectory(device=header["device"], records=records, torn_bytes=len(data) - offset,
                      header_size=_PREAMBLE.size + header_length)


def _decode(data: bytes, offset: int) -> tuple[StepRecord | None, int]:
    if offset + _RECORD.size > len(data):
        return None, offset
    step, lr, count = _RECORD.unpack_from(data, offset)
    end = offset + record_size(count)
    if end > len(data):
        return None, offset
    pairs = [_PERTURBATION.unpack_from(data, offset + _RECORD.size + i * _PERTURBATION.size) for i in range(count)]
    return StepRecord(step, lr, tuple(seed for seed, _ in pairs), tuple(grad for _, grad in pairs)), end


def truncate(path: Path, last_step: int) -> int:
    """Keep the steps up to `last_step` (a resumed run restarts after its checkpoint's step), and drop a
    torn record; returns the last step kept, less than `last_step` when the file holds fewer steps."""
    trajectory = read(path)
    kept = trajectory.records[:last_step]
    end = trajectory.header_size + sum(record_size(len(record.seeds)) for record in kept)
    with path.open("r+b") as file:
        file.truncate(end)
    return kept[-1].step if kept else 0

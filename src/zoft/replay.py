"""`zoft replay`: a MeZO run's trainable tensors at any step, rebuilt from its starting point and its seed
trajectory, without a forward pass (no model is built: only the trainable tensors are loaded).

Each logged step is applied by ``ZerothOrderSGD.replay``, the passes of the real step less its forwards,
through an optimiser built by the training run's own function from the run's config (eps, momentum,
weight-decay groups by parameter name): on the device the run trained on, the result is the run's tensors
to the bit, momentum buffers and n-SPSA included.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from zoft import trajectory
from zoft.errors import ZoftError
from zoft.methods import trajectory_refusal
from zoft.methods.zeroth_order import build_zo_optimizer
from zoft.optim import ZerothOrderSGD, decay_param_groups
from zoft.runs import RunFolder


@dataclass(frozen=True)
class Replayed:
    """What `replay` wrote: the file, the step its tensors are at, and what the reader dropped."""

    path: Path
    step: int
    warnings: list[str]


def replay(run_path: str | Path, to_step: int | None = None, out: str | Path | None = None) -> Replayed:
    """Rebuild the trainable tensors of the MeZO run in `run_path` after step `to_step` (default: the last
    logged) and write them as safetensors to `out` (default: <run>/replay-<step>.safetensors)."""
    run = RunFolder(run_path)
    config = run.read_config()
    refusal = trajectory_refusal(config.method)
    if refusal is not None:
        raise ZoftError(f"{run.path} cannot be replayed: {refusal}")
    if not run.trajectory_path.is_file():
        raise ZoftError(f"{run.path} has no trajectory.bin (a run trained before zoft logged trajectories?)")
    logged = trajectory.read(run.trajectory_path)
    warnings = []
    if logged.torn_bytes:
        warnings.append(f"{run.trajectory_path}: its last {logged.torn_bytes} bytes are a record cut short (a "
                        f"write interrupted), dropped: the trajectory ends at step {logged.last_step}")
    step = logged.last_step if to_step is None else to_step
    if not 0 <= step <= logged.last_step:
        raise ZoftError(f"--to {step}: the trajectory of {run.path} holds steps 0 to {logged.last_step}")
    device = _device(logged.device)
    tensors = {name: tensor.to(device).requires_grad_(True) for name, tensor in run.load_start().items()}
    groups = decay_param_groups(tensors.items(), config.method.weight_decay)
    optimizer = build_zo_optimizer(groups, config.method, total_steps=max(logged.last_step, 1),
                                   seed=config.train.seed)
    if not isinstance(optimizer, ZerothOrderSGD):
        raise ZoftError(f"{run.path} cannot be replayed: its config builds {type(optimizer).__name__}")
    for record in logged.records[:step]:
        for group in optimizer.param_groups:
            group["lr"] = record.lr
        optimizer.replay(record.seeds, record.projected_grads)
    path = Path(out) if out is not None else run.path / f"replay-{step}.safetensors"
    tmp = path.with_name(path.name + ".tmp")
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}, tmp)
    os.replace(tmp, path)
    return Replayed(path=path, step=step, warnings=warnings)


def _device(name: str) -> torch.device:
    """The device the run drew its z on: another device's generator draws other numbers."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ZoftError(f"the run drew its random directions on {name}, and this machine has no CUDA device: "
                        "another device's generator draws other directions")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ZoftError(f"the run drew its random directions on {name}, and this machine has no MPS device")
    return device

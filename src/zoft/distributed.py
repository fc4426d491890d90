"""Data parallelism on torch.distributed (Gloo on CPUs, NCCL on GPUs), launched by torchrun or `zoft train --nproc`.

Every rank loads the same data, draws the same micro-batches (the data stream is seeded by the run's seed) and
keeps a whole replica of the model; each computes on its share of every micro-batch's rows. What the ranks
exchange depends on the method:

- MeZO exchanges scalars only, because an update is fixed by its seeds and projected gradients. Config key
  ``zo_parallel``: ``shared-direction`` perturbs every rank along the step's directions, and the closure sums
  (loss x rows, rows) over the ranks in float64 at each forward, so every rank sees the loss of the whole
  batch: the update of one process on the whole batch. ``direction-per-rank`` gives each rank its own
  directions of the step (direction i belongs to rank i mod world size; the seeds come from the one seed stream
  all ranks share), measured on the rank's rows; one all_gather of (seed, loss+, loss-) lets every rank apply
  the same world size x n_perturbations directions in the same order: n-SPSA across ranks.
- Backprop (LoRA, full) all-reduces the gradients through DistributedDataParallel.

Replicas stay bit-identical: every rank runs the same passes over the same tensors with the same numbers (in
direction-per-rank mode each rank also runs the +eps/-2eps passes of the others' directions, without their
forwards, because the parameters carry the rounding of every pass). A sha256 of the trainable tensors,
all_gathered at the start, every ``replica_check_every`` steps and at the end, proves it; a mismatch stops the
run. Decisions that end the loop (a stop signal, a spent budget) are agreed by all ranks, so none is left
waiting. Only rank 0 writes the run folder; the others read it (to resume) and write nothing. Evaluation is
replicated: every rank evaluates the whole splits (the same numbers, no exchange), rank 0 writes them.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import run as torchrun
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.nn.parallel import DistributedDataParallel

from zoft import trajectory
from zoft.config import RunConfig
from zoft.errors import ZoftError, first_line
from zoft.measure import pick_device
from zoft.runs import RunFolder, Summary

Batch = dict[str, torch.Tensor]
Closure = Callable[[], torch.Tensor]

SHARED_DIRECTION = "shared-direction"
DIRECTION_PER_RANK = "direction-per-rank"
DDP = "ddp"  # the mode of a backprop run
EVALUATION = "replicated: every rank evaluates the whole splits, rank 0 writes"


class RankFailure(ZoftError):
    """An exchange with the other ranks failed: one died, was killed, or did not answer within the timeout."""


class ReplicaMismatch(ZoftError):
    """The ranks' trainable tensors are no longer identical."""


def world_size() -> int:
    """The number of processes torchrun started for this run (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def refusal(config: RunConfig) -> str | None:
    """Why a run of `config` cannot be data-parallel, or None. Refused rather than run as something else."""
    method = config.method
    if method.method != "mezo":
        return None
    if method.zo_estimator != "spsa":
        return (f"config key 'zo_estimator': {method.zo_estimator} does not run on several processes (its snapshot "
                "steps are not exchanged as scalars); use spsa, or one process")
    if method.head_grad == "exact":
        return ("config key 'head_grad': exact trains the head by a gradient of each rank's own rows, which the ranks "
                "do not exchange; use head_grad=zo, or one process")
    return None


@contextmanager
def join(config: RunConfig) -> Iterator[DataParallel | None]:
    """The data-parallel group of this process for the length of a run, from torchrun's environment (RANK,
    WORLD_SIZE, MASTER_ADDR, MASTER_PORT, LOCAL_RANK); None for one process. A process group this starts is
    destroyed when the run ends, however it ends: left to the interpreter's exit, Gloo's worker threads outlive
    it and abort the process (SIGABRT, "terminate called without an active exception") after a run that
    completed. A group the caller started is the caller's to destroy."""
    if world_size() <= 1:
        yield None
        return
    problem = refusal(config)
    if problem is not None:
        raise ZoftError(problem)
    device = pick_device(config.train.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ZoftError(f"config key 'device': several processes run on cpu (Gloo) or cuda (NCCL), not {device.type}")
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=config.train.dist_timeout))
    mode = config.method.zo_parallel if config.method.method == "mezo" else DDP
    try:
        yield DataParallel(mode, device, config.train.replica_check_every, config.train.dist_timeout)
    finally:
        if started:
            dist.destroy_process_group()


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run `zoft argv` in `nproc` processes on this machine through torch.distributed.run, as
    `torchrun --standalone --nproc-per-node nproc -m zoft argv` does; returns the exit status."""
    try:
        torchrun.main(["--standalone", f"--nproc-per-node={nproc}", "-m", "zoft", *argv])
    except ChildFailedError as failed:  # torchrun has printed which rank failed and how
        codes = [failure.exitcode for failure in failed.failures.values() if failure.exitcode > 0]
        return codes[0] if codes else 1
    except SignalException as stopped:  # torchrun passed the signal on to every rank, which stopped as train does
        return 128 + stopped.sigval
    return 0


def without_nproc(argv: Sequence[str]) -> list[str]:
    """`argv` less its --nproc option: what each launched process runs."""
    kept: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
        elif item == "--nproc":
            skip = True
        elif not item.startswith("--nproc="):
            kept.append(item)
    return kept


class DataParallel:
    """This process's place in the group, and every exchange a run makes through it.

    Exchanges are counted as the bytes this rank puts into collectives (the payload: what a ring or tree moves
    on the wire is a small multiple of it); a failed one raises :class:`RankFailure` naming the ranks waited on.
    """

    def __init__(self, mode: str, device: torch.device, replica_check_every: int, timeout_seconds: float) -> None:
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.backend = str(dist.get_backend())
        self.mode = mode
        self.device = device
        self.replica_check_every = replica_check_every
        self.timeout_seconds = timeout_seconds
        self.bytes_sent = 0
        self.replica_checks = 0
        self.last_replica_check: int | None = None

    @property
    def writes(self) -> bool:
        return self.rank == 0

    # -- exchanges -------------------------------------------------------------------------------------------

    @contextmanager
    def _exchange(self, what: str, payload: torch.Tensor) -> Iterator[None]:
        self.bytes_sent += payload.numel() * payload.element_size()
        try:
            yield
        except RuntimeError as error:  # Gloo and NCCL report a lost or silent peer as a RuntimeError
            raise RankFailure(f"rank {self.rank} of {self.world_size}: {what} failed: {self._others()} closed its "
                              f"connection or did not answer within dist_timeout={self.timeout_seconds:g} s (it died, "
                              f"was killed, or stalls) ({first_line(error)}); continue from the last checkpoint with "
                              "the same number of processes") from None

    def _others(self) -> str:
        others = [rank for rank in range(self.world_size) if rank != self.rank]
        return f"rank {others[0]}" if len(others) == 1 else "one of ranks " + ", ".join(map(str, others))

    def _all_reduce(self, what: str, tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> None:
        with self._exchange(what, tensor):
            dist.all_reduce(tensor, op=op)

    def _all_gather(self, what: str, tensor: torch.Tensor) -> list[torch.Tensor]:
        gathered = [torch.empty_like(tensor) for _ in range(self.world_size)]
        with self._exchange(what, tensor):
            dist.all_gather(gathered, tensor)
        return gathered

    def agree(self, value: int) -> int:
        """The largest `value` of all ranks: a decision every rank takes alike (stop now, a budget spent)."""
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        self._all_reduce("agreeing on whether to stop", tensor, dist.ReduceOp.MAX)
        return int(tensor.item())

    def sum(self, value: float) -> float:
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        self._all_reduce("summing the step's loss", tensor)
        return float(tensor.item())

    # -- rows ------------------------------------------------------------------------------------------------

    def rows(self, batch: Batch) -> tuple[Batch, int]:
        """This rank's contiguous share of `batch`'s rows (as torch.tensor_split cuts them) and how many rows it
        counts for. A short batch can leave a share empty: it is then the whole batch, counted as 0 rows, so that
        a rank whose exchange needs a forward (DDP's backward, a direction's loss) still has one."""
        size = len(batch["labels"])
        share = torch.tensor_split(torch.arange(size), self.world_size)[self.rank]
        if not len(share):
            return batch, 0
        start, end = int(share[0]), int(share[-1]) + 1
        return {key: value[start:end] for key, value in batch.items()}, end - start

    # -- MeZO ------------------------------------------------------------------------------------------------

    def loss_closure(self, model: nn.Module, micro_batches: list[Batch]) -> Closure:
        """The closure of one MeZO step in this run's mode."""
        if self.mode == DIRECTION_PER_RANK:
            return self.own_direction_loss(model, micro_batches)
        return self.shared_loss(model, micro_batches)

    def shared_loss(self, model: nn.Module, micro_batches: list[Batch]) -> Closure:
        """shared-direction: the mean loss over all ranks' rows of the micro-batches, the same on every rank."""
        shares = [self.rows(batch) for batch in micro_batches]

        def closure() -> torch.Tensor:
            total = sum(float(model(**rows).loss.double()) * count for rows, count in shares if count)
            sums = torch.tensor([total, sum(count for _, count in shares)], dtype=torch.float64, device=self.device)
            self._all_reduce("the sum of the ranks' losses", sums)
            return sums[0] / sums[1]

        return closure

    def own_direction_loss(self, model: nn.Module, micro_batches: list[Batch]) -> Closure:
        """direction-per-rank: the loss on this rank's rows for its own directions (the closure is called twice per
        direction, in the order of the step's seeds); 0, without a forward, for the other ranks' directions, whose
        losses :meth:`exchange` brings. A rank whose shares are all empty measures on the whole micro-batches."""
        shares = [self.rows(batch) for batch in micro_batches]
        if not any(count for _, count in shares):
            shares = [(batch, len(batch["labels"])) for batch in micro_batches]
        rows = sum(count for _, count in shares)
        calls = itertools.count()

        def closure() -> torch.Tensor:
            if (next(calls) // 2) % self.world_size != self.rank:
                return torch.zeros(())
            return sum(model(**batch).loss * (count / rows) for batch, count in shares if count)

        return closure

    def exchange(self, seeds: list[int], measurements: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """direction-per-rank: every direction's (loss+, loss-) from the rank that measured it, in seed order, by one
        all_gather of (seed, loss+, loss-) triples in float64 (seeds are below 2**53, exact as doubles)."""
        width = -(-len(seeds) // self.world_size)  # all_gather takes equal shapes: shorter ranks pad with NaN
        mine = torch.full((width, 3), float("nan"), dtype=torch.float64)
        for row, index in enumerate(range(self.rank, len(seeds), self.world_size)):
            mine[row] = torch.tensor([seeds[index], *measurements[index]], dtype=torch.float64)
        gathered = [rows.cpu() for rows in self._all_gather("gathering the ranks' projected gradients",
                                                             mine.to(self.device))]
        shared = []
        for index, seed in enumerate(seeds):
            owner = index % self.world_size
            their_seed, plus, minus = gathered[owner][index // self.world_size].tolist()
            if their_seed != seed:
                raise ReplicaMismatch(f"rank {owner} measured seed {int(their_seed)} where rank {self.rank} drew "
                                      f"{seed}: the ranks' seed streams differ (another config or checkpoint?)")
            shared.append((plus, minus))
        return shared

    # -- backprop --------------------------------------------------------------------------------------------

    def wrap(self, model: nn.Module) -> DistributedDataParallel:
        """`model` under DDP, its gradient all-reduces counted."""
        wrapped = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        wrapped.register_comm_hook(None, self._counted_all_reduce)
        return wrapped

    def _counted_all_reduce(self, state, bucket):  # type: ignore[no-untyped-def]
        # DDP's own averaging all-reduce, counted: the bytes a step exchanges are those of its gradient buckets.
        # No annotations: DDP checks a hook's `bucket` and return annotations against dist.GradBucket and Future
        # objects, and this module's postponed annotations are strings, which it refuses.
        self.bytes_sent += bucket.buffer().numel() * bucket.buffer().element_size()
        return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]

    def backprop_shares(self, micro_batches: list[Batch]) -> list[tuple[Batch, float]]:
        """Each micro-batch's rows of this rank with the weight of their mean loss: the rows' share of the step's
        rows times the world size, because DDP averages the ranks' gradients."""
        total = sum(len(batch["labels"]) for batch in micro_batches)
        return [(rows, count / total * self.world_size) for rows, count in map(self.rows, micro_batches)]

    @staticmethod
    def no_sync(model: nn.Module, last: bool) -> Any:
        """DDP's no_sync for every micro-batch but the last: the accumulated gradients are all-reduced once."""
        return nullcontext() if last or not isinstance(model, DistributedDataParallel) else model.no_sync()

    # -- replicas --------------------------------------------------------------------------------------------

    def check_replicas(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        """Raise ReplicaMismatch unless every rank's `tensors` hash alike (sha256 of names and bytes, in order)."""
        digest = hashlib.sha256()
        for name, tensor in tensors.items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        mine = torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8).to(self.device)
        hashes = [bytes(h.cpu().tolist()).hex() for h in self._all_gather("comparing the replicas' hashes", mine)]
        differing = [rank for rank, value in enumerate(hashes) if value != hashes[0]]
        if differing:
            raise ReplicaMismatch(f"step {step}: the trainable tensors of rank{'s' if len(differing) > 1 else ''} "
                                  f"{', '.join(map(str, differing))} differ from rank 0's (sha256 "
                                  f"{', '.join(f'rank {r} {hashes[r][:12]}' for r in [0, *differing])}): the "
                                  "replicas drifted apart; the run stops")
        self.replica_checks += 1
        self.last_replica_check = step

    def due(self, step: int) -> bool:
        return bool(self.replica_check_every) and step % self.replica_check_every == 0

    # -- the run folder --------------------------------------------------------------------------------------

    def run_folder(self, path: str | Path) -> RunFolder:
        return RunFolder(path) if self.writes else ReplicaRunFolder(path)

    def describe(self, step_exchange_bytes: int | None) -> dict[str, Any]:
        """What summary.json records of the group."""
        return {"world_size": self.world_size, "backend": self.backend, "mode": self.mode,
                "step_exchange_bytes": step_exchange_bytes, "total_exchanged_bytes": self.bytes_sent,
                "replica_checks": self.replica_checks, "last_replica_check": self.last_replica_check,
                "evaluation": EVALUATION, "writer": "rank 0"}

    def checkpoint_state(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "mode": self.mode}


def check_resumed(saved: dict[str, Any] | None, parallel: DataParallel | None) -> None:
    """A run resumes with the world size and mode it trained with: another cuts the batch or the directions
    otherwise, and its steps would not continue the run's."""
    saved = saved or {"world_size": 1, "mode": None}
    now = parallel.checkpoint_state() if parallel else {"world_size": 1, "mode": None}
    if saved["world_size"] != now["world_size"] or (now["world_size"] > 1 and saved["mode"] != now["mode"]):
        raise ZoftError(f"the checkpoint was saved by {saved['world_size']} process(es) in mode {saved['mode']}; "
                        f"resume it with the same (now: {now['world_size']}, {now['mode']}): torchrun "
                        f"--nproc-per-node {saved['world_size']} or zoft train --nproc {saved['world_size']}")


class ReplicaRunFolder(RunFolder):
    """The run folder as a rank other than 0 sees it: it reads rank 0's (a checkpoint to resume) and writes
    nothing. Rank 0 alone checks the folder and writes config, metrics, trajectory, checkpoints and summary."""

    def check(self, *, overwrite: bool, resume: bool) -> None:
        pass

    def begin(self, config: RunConfig, *, overwrite: bool) -> None:
        pass

    def append_metrics(self, record: dict[str, Any]) -> None:
        pass

    def truncate_metrics(self, last_step: int) -> bool:
        return False

    def write_summary(self, summary: Summary) -> None:
        pass

    def save_model(self, model: nn.Module, tokenizer: Any) -> None:
        pass

    def save_predictions(self, predictions: Any) -> None:
        pass

    def save_checkpoint(self, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
        pass

    def save_start(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def create_trajectory(self, device: str) -> None:
        pass

    def truncate_trajectory(self, last_step: int) -> int:
        return last_step  # rank 0 cuts the file; this rank appends nothing to it

    def append_trajectory(self, record: trajectory.StepRecord) -> None:
        pass


"""zoft.distributed: data-parallel MeZO (scalars only) and DDP, in real processes on Gloo, one thread each.

The exchanges are tested at two levels: the optimiser with the group's closures and exchange, in 2 spawned
processes against one process computing the same estimate (shared direction: the whole batch; a direction per
rank: 2-direction n-SPSA, direction i on rank i's rows), and `zoft train` end to end, 2 ranks against 1 process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

from zoft import distributed
from zoft.cli import main
from zoft.config import build_config
from zoft.distributed import DIRECTION_PER_RANK, SHARED_DIRECTION, DataParallel, ReplicaMismatch
from zoft.errors import ZoftError
from zoft.optim import ZerothOrderSGD

WORLD = 2
STEPS = 3
ROWS = 6  # 3 a rank
LR, EPS, SEED = 1e-2, 1e-3, 7


def tiny_classifier() -> BertForSequenceClassification:
    """The same random 2-layer BERT in every process (dropout off: replicas must compute alike)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).eval()


def a_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(1, 50, (ROWS, 8), generator=generator),
            "attention_mask": torch.ones(ROWS, 8, dtype=torch.long),
            "labels": torch.randint(0, 2, (ROWS,), generator=generator)}


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _zo_worker(rank: int, mode: str, init_file: str, out: str) -> None:
    """One rank: STEPS MeZO steps through the group, its tensors saved; then a replica check that must pass and
    one, after rank 1 nudges a weight, that must fail on every rank."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=60))
    group = DataParallel(mode, torch.device("cpu"), replica_check_every=0, timeout_seconds=60)
    model, batch = tiny_classifier(), a_batch()
    per_rank = mode == DIRECTION_PER_RANK
    optimizer = ZerothOrderSGD(model.parameters(), lr=LR, eps=EPS, seed=SEED, n_perturbations=WORLD if per_rank else 1,
                               exchange=group.exchange if per_rank else None)
    records = [optimizer.step(group.loss_closure(model, [batch])).trajectory_record() for _ in range(STEPS)]
    torch.save({"tensors": trainable(model), "seeds": [r.seeds for r in records],
                "grads": [r.projected_grads for r in records]}, f"{out}/rank{rank}.pt")
    group.check_replicas(trainable(model), STEPS)
    if rank == 1:
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] += 1e-3
    try:
        group.check_replicas(trainable(model), STEPS + 1)
        message = "no mismatch raised"
    except ReplicaMismatch as error:
        message = str(error)
    Path(f"{out}/mismatch{rank}.txt").write_text(message)
    dist.destroy_process_group()


def run_ranks(mode: str, tmp_path: Path) -> list[dict]:
    mp.spawn(_zo_worker, args=(mode, str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)
    return [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD)]


def shards(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    rows = torch.tensor_split(torch.arange(ROWS), WORLD)
    return [{key: value[index] for key, value in batch.items()} for index in rows]


def assert_replicas_agree_and_match(ranks: list[dict], reference: dict[str, torch.Tensor]) -> None:
    for name, tensor in ranks[0]["tensors"].items():
        assert torch.equal(tensor, ranks[1]["tensors"][name]), f"{name}: the ranks' replicas differ"
        # float tolerance: the ranks sum their losses in float64, one process takes its float32 mean
        torch.testing.assert_close(tensor, reference[name], rtol=0, atol=1e-5)
    start = trainable(tiny_classifier())
    assert max((reference[name] - start[name]).abs().max() for name in start) > 1e-4  # the steps moved the weights


@pytest.mark.parametrize("mode", [SHARED_DIRECTION, DIRECTION_PER_RANK])
def test_two_ranks_stay_identical_and_equal_one_process(mode, tmp_path):
    ranks = run_ranks(mode, tmp_path)
    model, batch = tiny_classifier(), a_batch()
    if mode == SHARED_DIRECTION:
        # one process on the combined batch, with the same seeds
        optimizer = ZerothOrderSGD(model.parameters(), lr=LR, eps=EPS, seed=SEED)
        records = [optimizer.step(lambda: model(**batch).loss).trajectory_record() for _ in range(STEPS)]
    else:
        # one process running 2-direction n-SPSA with the same seeds, direction i measured on rank i's rows
        optimizer = ZerothOrderSGD(model.parameters(), lr=LR, eps=EPS, seed=SEED, n_perturbations=WORLD)
        rows = shards(batch)
        records = []
        for _ in range(STEPS):
            calls = iter(range(2 * WORLD))  # the closure is called twice a direction, in the order of the seeds
            records.append(optimizer.step(lambda calls=calls: model(**rows[next(calls) // 2]).loss).trajectory_record())
    assert all(rank["seeds"] == [r.seeds for r in records] for rank in ranks)  # every rank applied every seed
    for rank in ranks:
        for theirs, ours in zip(rank["grads"], [r.projected_grads for r in records], strict=True):
            assert theirs == pytest.approx(ours, rel=1e-3, abs=1e-4)
    assert_replicas_agree_and_match(ranks, trainable(model))
    for rank in range(WORLD):
        message = (tmp_path / f"mismatch{rank}.txt").read_text()
        assert message.startswith(f"step {STEPS + 1}: the trainable tensors of rank 1 differ from rank 0's"), message


# -- zoft train on 2 processes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_bert_no_dropout(tmp_path_factory, minilm_path) -> Path:
    """tests/conftest.py's tiny BERT, without dropout: DDP's ranks draw other dropout masks than one process."""
    folder = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def run_args(tiny_bert_no_dropout, real_glue) -> list[str]:
    return ["--model", str(tiny_bert_no_dropout), "--data-dir", str(real_glue), "--task", "mrpc", "--train-limit", "64",
            "--validation-fraction", "0.02", "--eval-every", "3", "--log-every", "1", "--batch-size", "8",
            "--max-length", "64", "--lr", "1e-2", "--quiet"]


def zoft(*argv: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zoft", *argv], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def trained(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "checkpoint" / "trainable.safetensors")


def test_two_ddp_processes_train_what_one_process_trains(run_args, tmp_path):
    """DDP LoRA (MeZO on 2 processes: the SIGTERM test below, stopped, resumed and compared with one process)."""
    common = [*run_args, "--method", "lora", "--lora-dropout", "0", "--steps", "4", "--replica-check-every", "2"]
    # the one-process reference in this process (one thread, as each rank has): the ranks are the subprocesses
    assert main(["train", *common, "--out", str(tmp_path / "one")]) == 0
    two = zoft("train", *common, "--out", str(tmp_path / "two"), "--nproc", "2")
    assert two.returncode == 0, two.stderr
    expected, got = trained(tmp_path / "one"), trained(tmp_path / "two")
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 4
    group = summary["distributed"]
    assert group["world_size"] == 2 and group["backend"] == "gloo" and group["writer"] == "rank 0"
    assert group["replica_checks"] == 4 and group["last_replica_check"] == 4  # start, steps 2 and 4, the end
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert len(train) == 4  # rank 0 alone wrote the metrics: one line a step
    assert group["mode"] == "ddp"
    lora_bytes = sum(t.numel() * 4 for t in got.values())
    assert group["step_exchange_bytes"] == lora_bytes + 8  # the adapters' and head's gradients, and the loss
    assert "distributed" not in json.loads((tmp_path / "one" / "summary.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_trained(run: Path) -> bool:
    metrics = run / "metrics.jsonl"
    return metrics.exists() and '"kind": "train"' in metrics.read_text()


def test_a_rank_killed_mid_run_stops_the_other_with_an_error_naming_it(run_args, tmp_path):
    out = tmp_path / "run"
    env = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    argv = [sys.executable, "-m", "zoft", "train", *run_args, "--method", "mezo", "--steps", "100000",
            "--eval-every", "100000", "--dist-timeout", "30", "--out", str(out)]
    ranks = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **env, "RANK": str(rank), "LOCAL_RANK": str(rank),
                                   "OMP_NUM_THREADS": "1"}) for rank in range(2)]
    try:
        deadline = time.monotonic() + 180
        while not has_trained(out):
            assert time.monotonic() < deadline and ranks[0].poll() is None, "the run did not start training"
            time.sleep(0.2)
        ranks[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        stderr = ranks[0].communicate(timeout=90)[1]
        waited = time.monotonic() - killed
    finally:
        for process in ranks:
            if process.poll() is None:
                process.kill()
    assert ranks[0].returncode != 0
    assert "zoft: error: rank 0 of 2:" in stderr and "rank 1 closed its connection or did not answer" in stderr, stderr
    assert waited < 60
    assert json.loads((out / "summary.json").read_text())["status"] == "crashed"


# -- what needs no second process ------------------------------------------------------------------------------


def test_nproc_is_dropped_from_the_command_each_process_runs():
    argv = ["train", "--nproc", "2", "--steps", "3", "--nproc=4"]
    assert distributed.without_nproc(argv) == ["train", "--steps", "3"]


@pytest.mark.parametrize(("overrides", "key"), [({"zo_estimator": "svrg"}, "zo_estimator"),
                                                ({"head_grad": "exact", "head": "classifier"}, "head_grad")])
def test_what_does_not_run_on_several_processes_is_refused_naming_the_key(overrides, key):
    config = build_config(overrides={"method": "mezo", "model": "minilm", **overrides})
    assert distributed.refusal(config).startswith(f"config key '{key}'")
    assert distributed.refusal(build_config(overrides={"method": "mezo", "model": "minilm"})) is None


@pytest.fixture
def torchrun_env(monkeypatch):
    """torchrun's environment for a group of one, read as a data-parallel run: join's lifecycle, in this process."""
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)


def test_the_group_a_run_starts_is_destroyed_when_it_ends_however_it_ends(torchrun_env):
    """A group left to the interpreter's exit aborted a rank after a completed run (Gloo's threads, SIGABRT)."""
    config = build_config(overrides={"method": "mezo", "model": "minilm", "device": "cpu"})
    with distributed.join(config) as parallel:
        assert dist.is_initialized() and parallel.world_size == 1
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="a crash"), distributed.join(config):
        raise RuntimeError("a crash")
    assert not dist.is_initialized()


def test_a_group_the_caller_started_is_left_to_the_caller(torchrun_env):
    dist.init_process_group("gloo")
    try:
        with distributed.join(build_config(overrides={"method": "mezo", "model": "minilm", "device": "cpu"})):
            pass
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def test_a_checkpoint_resumes_with_the_world_size_it_was_saved_by():
    distributed.check_resumed(None, None)
    with pytest.raises(ZoftError, match="saved by 2 process"):
        distributed.check_resumed({"world_size": 2, "mode": SHARED_DIRECTION}, None)


def test_sigterm_to_the_launcher_checkpoints_and_the_same_world_size_resumes(run_args, tmp_path):
    """`zoft train --nproc 2` stopped by SIGTERM: torchrun passes it to both ranks, which stop after the same step with
    a checkpoint; `--resume --nproc 2` finishes the run that one process trains uninterrupted (the reference runs in
    this process, before the ranks start: never two runs at once on this machine's cores)."""
    common = [*run_args, "--method", "mezo", "--steps", "60", "--eval-every", "60", "--test-limit", "16",
              "--replica-check-every", "20"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert main(["train", *common, "--out", str(whole)]) == 0
    launcher = subprocess.Popen([sys.executable, "-m", "zoft", "train", *common, "--nproc", "2", "--out", str(stopped)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 180
        while not has_trained(stopped):
            assert time.monotonic() < deadline and launcher.poll() is None, "the run did not start training"
            time.sleep(0.05)
        launcher.send_signal(signal.SIGTERM)
        stderr = launcher.communicate(timeout=120)[1]
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode == 128 + signal.SIGTERM, stderr
    assert f"continue with `zoft train --out {stopped} --resume --nproc 2`" in stderr
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 0 < summary["steps"] < 60
    resumed = zoft("train", "--out", str(stopped), "--resume", "--nproc", "2")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 60
    group = summary["distributed"]
    assert (group["world_size"], group["backend"], group["writer"], group["mode"]) == (2, "gloo", "rank 0",
                                                                                       SHARED_DIRECTION)
    assert group["last_replica_check"] == 60
    train = [r for r in read_jsonl(stopped / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 61))  # rank 0 alone wrote: one line a step, none twice
    assert group["step_exchange_bytes"] == 32 and all(r["exchanged_bytes"] == 32 for r in train)  # 2 x (sum, rows)
    assert "distributed" not in json.loads((whole / "summary.json").read_text())
    expected, got = trained(whole), trained(stopped)
    assert expected.keys() == got.keys()
    for name in expected:  # float tolerance: the ranks sum their losses in float64, one process takes its mean
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)
    assert main(["replay", str(stopped)]) == 0  # the trajectory of both processes holds every step, resumed or not
    rebuilt = load_file(stopped / "replay-60.safetensors")
    assert all(torch.equal(rebuilt[name], got[name]) for name in got)

"""Resume, bit for bit, for every method and head, through the real CLI on tiny random models and a slice of real
MRPC: a run stopped by Ctrl-C (resumed from the checkpoint written at the stop) or crashed (resumed from its last
periodic checkpoint, with metrics and model/ already written past it) and continued with `zoft train --resume`
ends as the same run never stopped: the same metrics but their timings, the same trainable tensors, optimiser,
schedule, data stream and random state in its checkpoint, the same best model and summary.

Real signals to a real process (SIGTERM, SIGKILL) are tested in tests/test_train.py."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zoft.cli import main
from zoft.train import Trainer

TIMING_FIELDS = {"step_seconds", "train_seconds", "eval_seconds"}

# 8 steps; evaluations at steps 0, 4 and 8; periodic checkpoints at steps 3 and 6. Step 0 may not be the best
# (select_step_zero false), so step 4's evaluation always writes model/: after a crash in step 6 it is ahead of
# the checkpoint at step 3 that the run resumes from.
RESUMED_RUN = ("--steps", "8", "--eval-every", "4", "--checkpoint-every", "3", "--select-step-zero", "false",
               "--test-limit", "64")
STOP_AFTER = 5  # neither a checkpoint nor an evaluation step: the checkpoint written at the stop is the newest
CRASH_IN = 6  # the step that raises: the last checkpoint is step 3's, and steps 4 and 5 are logged past it
PERIODIC = 3
TORN_LINE = '{"kind": "train", "step": 6, "lo'  # what a process killed mid-write leaves
TORN_WARNING = ("metrics.jsonl: dropped a partial last line (a run killed mid-write); continuing from the checkpoint "
                f"at step {PERIODIC}")


@dataclass(frozen=True)
class Case:
    options: tuple[str, ...]
    model: str = "tiny_bert"  # the fixture of the model it trains
    saved: tuple[str, ...] = ()  # optimisers in the method's checkpoint state that must hold per-parameter state


# Learning rates large enough that every trainable tensor moves away from its start by the resume point.
CASES = {
    "lora": Case(("--method", "lora", "--lr", "1e-2"), saved=("optimizer",)),  # dropout 0.1: its RNG restored
    "full": Case(("--method", "full", "--lr", "1e-3"), saved=("optimizer",)),
    "mezo": Case(("--method", "mezo", "--lr", "1e-3")),
    "mezo-momentum": Case(("--method", "mezo", "--lr", "1e-3", "--momentum", "0.9", "--weight-decay", "0.1"),
                          saved=("optimizer",)),
    "mezo-n-spsa-schedule": Case(("--method", "mezo", "--lr", "1e-3", "--n-perturbations-final", "3")),
    # z drawn again from each step's seed by the configured distribution after the resume, as before it
    "mezo-lowrank": Case(("--method", "mezo", "--lr", "1e-3", "--perturbation", "lowrank", "--perturbation-rank",
                          "2")),
    # density 0.9: a small adapter spans one or two 64-number blocks of its bucket, left out of a step with
    # chance about 1 - density, and every tensor must have moved by the resume point (at 0.2 one had not)
    "mezo-sparse": Case(("--method", "mezo", "--lr", "1e-3", "--perturbation", "sparse", "--perturbation-density",
                         "0.9")),
    # snapshots at steps 1, 4 and 7: the stop resumes between snapshots (θ̄ and g from the checkpoint), the crash
    # before one; the large batch draws from the training stream, and n-SPSA grows on SVRG's step count
    "mezo-svrg-n-spsa-schedule": Case(("--method", "mezo", "--lr", "1e-3", "--zo-estimator", "svrg", "--svrg-every",
                                       "3", "--svrg-batches", "2", "--n-perturbations-final", "2"),
                                      saved=("optimizer",)),
    "mezo-exact-head": Case(("--method", "mezo", "--lr", "1e-3", "--head-grad", "exact", "--head-lr", "1e-2"),
                            saved=("head_optimizer",)),
    "mezo-prompt-head": Case(("--method", "mezo", "--lr", "1e-3", "--head", "prompt", "--train-lm-head", "true"),
                             model="tiny_bert_mlm"),
}


@dataclass
class Straight:
    """One case's run, never stopped, and its trainable tensors before the first step."""

    args: list[str]
    folder: Path
    start: dict[str, torch.Tensor]
    case: Case


@pytest.fixture(scope="module", params=list(CASES))
def straight(request, tmp_path_factory, tiny_run_args) -> Straight:
    """Shared by both ways of stopping a case: the run they must end up equal to."""
    case = CASES[request.param]
    args = [*tiny_run_args, "--model", str(request.getfixturevalue(case.model)), *RESUMED_RUN, *case.options]
    folder = tmp_path_factory.mktemp(request.param) / "straight"
    start: dict[str, torch.Tensor] = {}
    original_step = Trainer.train_step

    def record_the_start(self):
        if self.state.step == 0:
            start.update({name: p.detach().clone() for name, p in self._trainable_tensors().items()})
        return original_step(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "train_step", record_the_start)
        assert main(["train", "--out", str(folder), *args]) == 0
    return Straight(args, folder, start, case)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timings(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def checkpoint_state(run):
    return torch.load(run / "checkpoint" / "state.pt", weights_only=True)


def assert_equal_tensors(ours, theirs):
    assert ours.keys() == theirs.keys()
    assert [name for name in ours if not torch.equal(ours[name], theirs[name])] == []


def assert_same_state(ours, theirs, where="state.pt"):
    """Equal to the bit, tensors (optimiser moments, θ̄, generator and RNG states) and numbers alike; timings
    aside."""
    if isinstance(ours, torch.Tensor):
        assert isinstance(theirs, torch.Tensor) and torch.equal(ours, theirs), where
    elif isinstance(ours, dict):
        assert ours.keys() == theirs.keys(), where
        for key in ours.keys() - TIMING_FIELDS:
            assert_same_state(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(ours, (list, tuple)):
        assert len(ours) == len(theirs), where
        for index, (one, other) in enumerate(zip(ours, theirs, strict=True)):
            assert_same_state(one, other, f"{where}[{index}]")
    else:
        assert ours == theirs, where


def assert_moved_from_the_start(run, straight: Straight):
    """The checkpoint to resume from is not the start, so a resume that started over could not pass."""
    tensors = load_file(run / "checkpoint" / "trainable.safetensors")
    assert tensors.keys() == straight.start.keys()
    assert [name for name in tensors if torch.equal(tensors[name], straight.start[name])] == []


def assert_resumes_to_the_straight_run(run, straight: Straight, extra_warnings=()):
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert without_timings(read_jsonl(run / "metrics.jsonl")) == without_timings(
        read_jsonl(straight.folder / "metrics.jsonl"))
    assert_equal_tensors(*(load_file(f / "checkpoint" / "trainable.safetensors") for f in (run, straight.folder)))
    ours, theirs = checkpoint_state(run), checkpoint_state(straight.folder)
    assert ours["loop"]["step"] == 8
    assert_same_warnings(ours["loop"].pop("warnings"), theirs["loop"].pop("warnings"), extra_warnings)
    assert_same_state(ours, theirs)
    for optimizer in straight.case.saved:  # the state compared is not empty
        assert ours["method"][optimizer]["state"]
    # the best model: step 4's, written again by the resumed run where a crashed one had written it already
    for weights in sorted(p.name for p in (straight.folder / "model").glob("*.safetensors")):
        assert_equal_tensors(*(load_file(f / "model" / weights) for f in (run, straight.folder)))
    if (straight.folder / "trajectory.bin").exists():  # MeZO's SPSA: the seed trajectory, cut back and continued
        assert (run / "trajectory.bin").read_bytes() == (straight.folder / "trajectory.bin").read_bytes()
    summary, straight_summary = (json.loads((f / "summary.json").read_text()) for f in (run, straight.folder))
    assert summary["status"] == "completed"
    for key in ("steps", "best", "final", "passes", "examples_seen"):
        assert summary[key] == straight_summary[key], key
    assert summary["best"]["step"] == 4
    assert_same_warnings(summary["warnings"], straight_summary["warnings"], extra_warnings)


def assert_same_warnings(ours, theirs, extra):
    """The straight run's warnings, and each of `extra` (what the resume itself said) once."""
    assert [w for w in ours if w not in extra] == theirs
    assert [w for w in ours if w in extra] == list(extra)


def test_a_stopped_run_resumes_bit_exactly(tmp_path, straight, train_stopped_at):
    run = tmp_path / "stopped"
    assert train_stopped_at(STOP_AFTER, ["--out", str(run), *straight.args]) == 130
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert checkpoint_state(run)["loop"]["step"] == STOP_AFTER  # written at the stop, not the periodic one
    assert_moved_from_the_start(run, straight)
    assert_resumes_to_the_straight_run(run, straight)


class Crash(RuntimeError):
    pass


def test_a_crashed_run_resumes_from_its_last_periodic_checkpoint(tmp_path, straight, monkeypatch):
    run = tmp_path / "crashed"
    original_step = Trainer.train_step

    def crash_in_step_6(self):
        if self.state.step == CRASH_IN - 1:
            raise Crash("a crash in the middle of a step")
        return original_step(self)

    monkeypatch.setattr(Trainer, "train_step", crash_in_step_6)
    with pytest.raises(Crash):
        main(["train", "--out", str(run), *straight.args])
    monkeypatch.setattr(Trainer, "train_step", original_step)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "crashed"
    assert checkpoint_state(run)["loop"]["step"] == PERIODIC
    assert summary["best"]["step"] == 4  # model/ holds a step past the checkpoint
    assert {r["step"] for r in read_jsonl(run / "metrics.jsonl")} == {0, 1, 2, 3, 4, 5}  # to be cut back to 3
    with (run / "metrics.jsonl").open("a") as file:  # and a last line torn by a kill mid-write
        file.write(TORN_LINE)
    assert_moved_from_the_start(run, straight)
    assert_resumes_to_the_straight_run(run, straight, extra_warnings=[TORN_WARNING])

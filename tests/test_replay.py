"""zoft replay: a MeZO run's trainable tensors rebuilt from start.safetensors and trajectory.bin, compared
bit for bit with the tensors the run itself saved."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from zoft import trajectory
from zoft.cli import main
from zoft.config import build_config
from zoft.runs import RunFolder
from zoft.train import Trainer


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


@pytest.fixture
def keep_checkpoints(monkeypatch):
    """Each checkpoint's trainable tensors kept as checkpoint-<step>.safetensors beside the run's own."""
    original = Trainer.save_checkpoint

    def save_and_keep(self):
        original(self)
        shutil.copy(self.run.path / "checkpoint" / "trainable.safetensors",
                    self.run.path / f"checkpoint-{self.state.step}.safetensors")

    monkeypatch.setattr(Trainer, "save_checkpoint", save_and_keep)


@pytest.mark.parametrize("options", [
    ["--method", "mezo", "--params", "lora"],
    ["--method", "mezo", "--params", "all", "--weight-decay", "0.1"],
    ["--method", "mezo", "--params", "lora", "--momentum", "0.9", "--n-perturbations", "2",
     "--n-perturbations-final", "3", "--weight-decay", "0.1", "--cache-z", "true"],
    ["--method", "mezo", "--params", "all", "--perturbation", "lowrank", "--perturbation-rank", "2", "--momentum",
     "0.9"],
    ["--method", "mezo", "--params", "all", "--perturbation", "sparse", "--perturbation-density", "0.1"],
], ids=["mezo-lora", "mezo-all-decay", "momentum-n-spsa-schedule", "lowrank-momentum", "sparse"])
def test_replay_equals_the_saved_tensors_bit_for_bit(tmp_path, tiny_run_args, keep_checkpoints, options, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *tiny_run_args, *options, "--checkpoint-every", "3"]) == 0
    assert (run / "start.safetensors").is_file()
    logged = trajectory.read(run / "trajectory.bin")
    assert [r.step for r in logged.records] == [1, 2, 3, 4, 5, 6]
    if "--n-perturbations-final" in options:
        assert [len(r.seeds) for r in logged.records] == [2, 2, 2, 3, 3, 3]

    capsys.readouterr()
    assert main(["replay", str(run)]) == 0
    assert capsys.readouterr().out == f"step 6: {run / 'replay-6.safetensors'}\n"
    assert equal(load_file(run / "replay-6.safetensors"), load_file(run / "checkpoint" / "trainable.safetensors"))
    assert main(["replay", str(run), "--to", "3", "--out", str(tmp_path / "at-3.safetensors")]) == 0
    at_3 = load_file(tmp_path / "at-3.safetensors")
    assert equal(at_3, load_file(run / "checkpoint-3.safetensors"))
    assert not equal(at_3, load_file(run / "checkpoint-6.safetensors"))
    assert main(["replay", str(run), "--to", "0"]) == 0
    assert equal(load_file(run / "replay-0.safetensors"), load_file(run / "start.safetensors"))


def test_replay_past_the_end_or_of_a_torn_trajectory(tmp_path, tiny_run_args, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *tiny_run_args, "--method", "mezo", "--params", "lora"]) == 0
    capsys.readouterr()
    assert main(["replay", str(run), "--to", "7"]) == 2
    assert capsys.readouterr().err == f"zoft: error: --to 7: the trajectory of {run} holds steps 0 to 6\n"

    path = run / "trajectory.bin"
    with path.open("r+b") as file:  # the last record cut mid-write
        file.truncate(path.stat().st_size - 3)
    assert main(["replay", str(run)]) == 0
    captured = capsys.readouterr()
    assert "record cut short" in captured.err and captured.out == f"step 5: {run / 'replay-5.safetensors'}\n"


def test_svrg_and_backprop_runs_log_no_trajectory_and_are_refused(tmp_path, tiny_run_args, capsys):
    svrg, lora = tmp_path / "svrg", tmp_path / "lora"
    assert main(["train", "--out", str(svrg), *tiny_run_args, "--method", "mezo", "--params", "lora",
                 "--zo-estimator", "svrg", "--svrg-every", "3", "--steps", "3"]) == 0
    assert main(["train", "--out", str(lora), *tiny_run_args, "--method", "lora", "--steps", "2"]) == 0
    for run in (svrg, lora):
        assert not (run / "trajectory.bin").exists() and not (run / "start.safetensors").exists()
    capsys.readouterr()
    assert main(["replay", str(svrg)]) == 2
    assert capsys.readouterr().err == (f"zoft: error: {svrg} cannot be replayed: zo_estimator=svrg also steps by "
                                       "its snapshots' full-batch estimates, which a trajectory of seeds and "
                                       "projected gradients does not hold\n")
    assert main(["replay", str(lora)]) == 2
    assert "method lora trains by backprop" in capsys.readouterr().err


def test_a_resumed_runs_trajectory_is_an_uninterrupted_ones(tmp_path, tiny_run_args, train_stopped_at):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    args = [*tiny_run_args, "--method", "mezo", "--params", "lora", "--n-perturbations", "2",
            "--checkpoint-every", "2"]
    assert main(["train", "--out", str(straight), *args]) == 0
    assert train_stopped_at(3, ["--out", str(stopped), *args]) == 130
    # A kill after the checkpoint: steps past it, and a record cut short, which the resume cuts away.
    with (stopped / "trajectory.bin").open("ab") as file:
        file.write(trajectory.StepRecord(4, 1e-3, (1, 2), (0.5, 0.5)).encode())
        file.write(b"\x05\x00\x00")
    assert main(["train", "--out", str(stopped), "--resume", "--quiet"]) == 0

    assert (stopped / "trajectory.bin").read_bytes() == (straight / "trajectory.bin").read_bytes()
    assert main(["replay", str(stopped)]) == 0
    assert equal(load_file(stopped / "replay-6.safetensors"),
                 load_file(straight / "checkpoint" / "trainable.safetensors"))


def test_a_trajectory_that_ends_before_the_checkpoint_is_not_continued(tmp_path, tiny_run_args, train_stopped_at):
    run = tmp_path / "run"
    args = [*tiny_run_args, "--method", "mezo", "--params", "lora", "--steps", "3"]
    assert train_stopped_at(2, ["--out", str(run), *args]) == 130
    trajectory.truncate(run / "trajectory.bin", 1)  # a damaged file: a step the checkpoint has is missing
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert trajectory.read(run / "trajectory.bin").last_step == 1
    warnings = json.loads((run / "summary.json").read_text())["warnings"]
    assert any("trajectory.bin ends at step 1, before the checkpoint's step 2" in w for w in warnings)


@pytest.fixture
def hand_made_run(tmp_path):
    """A MeZO run folder written by hand, no training: a config, a start and an empty trajectory."""
    run = RunFolder(tmp_path / "run")
    run.begin(build_config(overrides={"method": "mezo", "params": "lora", "steps": "3"}), overwrite=False)
    run.save_start({"w": torch.ones(2, 2)})
    return run


def test_a_run_drawn_on_cuda_is_not_replayed_without_cuda(hand_made_run, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    trajectory.create(hand_made_run.trajectory_path, device="cuda:0")
    assert main(["replay", str(hand_made_run.path)]) == 2
    assert "drew its random directions on cuda:0, and this machine has no CUDA device" in capsys.readouterr().err


def test_a_run_without_a_trajectory_is_refused(hand_made_run, capsys):
    assert main(["replay", str(hand_made_run.path)]) == 2
    assert capsys.readouterr().err == (f"zoft: error: {hand_made_run.path} has no trajectory.bin (a run trained "
                                       "before zoft logged trajectories?)\n")

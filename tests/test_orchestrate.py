"""compare and sweep on one orchestration: how each config is layered, and what happens to a folder that already
holds something (the same rule for both commands)."""

import io
from argparse import Namespace

import pytest
import torch

from zoft import orchestrate, presets
from zoft.cli import child_processes, main
from zoft.config import build_config
from zoft.console import Console
from zoft.errors import ZoftError
from zoft.orchestrate import (
    PendingRun,
    Placement,
    PlannedRun,
    Processes,
    child_argv,
    layered_config,
    train_each,
    visible_gpus,
)
from zoft.runs import RunFolder, Status, Summary


@pytest.fixture
def config(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    return build_config(overrides={"method": "mezo-lora", "steps": "10"})


def folder_with(path, config, *, status=None, checkpoint=False) -> RunFolder:
    run = RunFolder(path)
    run.begin(config, overwrite=False)
    run.append_metrics({"kind": "train", "step": 1, "loss": 0.5})
    if status is not None:
        run.write_summary(Summary(status=status))
    if checkpoint:
        (path / "checkpoint").mkdir()
    return run


class Recorder:
    """Stands in for zoft.train.train: records how each run was asked to start."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, bool]] = []

    def __call__(self, config, out, *, overwrite, resume):
        self.calls.append((out.name, overwrite, resume))


def test_the_state_of_a_folder(tmp_path, config):
    assert RunFolder(tmp_path / "empty").state(config, overwrite=False) == "new"
    assert folder_with(tmp_path / "done", config, status=Status.COMPLETED).state(config, overwrite=False) == "finished"
    assert folder_with(tmp_path / "nan", config, status=Status.DIVERGED).state(config, overwrite=False) == "finished"
    stopped = folder_with(tmp_path / "stopped", config, status=Status.INTERRUPTED, checkpoint=True)
    assert stopped.state(config, overwrite=False) == "stopped"
    assert folder_with(tmp_path / "crashed", config).state(config, overwrite=False) == "stale"
    assert stopped.state(config, overwrite=True) == "stale"


def test_a_folder_of_another_config_is_refused_unless_overwritten(tmp_path, config):
    other = build_config(overrides={"method": "mezo-lora", "steps": "20"})
    run = folder_with(tmp_path / "run", other, status=Status.COMPLETED)
    with pytest.raises(ZoftError, match="holds a run with another config; pass --overwrite to replace it"):
        run.state(config, overwrite=False)
    assert run.state(config, overwrite=True) == "stale"


@pytest.mark.parametrize("command", ["compare", "sweep"])
def test_each_run_is_kept_resumed_replaced_or_started_and_said_so(tmp_path, config, command):
    runs = [PlannedRun("done", config, folder_with(tmp_path / "done", config, status=Status.COMPLETED)),
            PlannedRun("stopped", config, folder_with(tmp_path / "stopped", config, checkpoint=True)),
            PlannedRun("crashed", config, folder_with(tmp_path / "crashed", config)),
            PlannedRun("new", config, RunFolder(tmp_path / "new"))]
    train, stream = Recorder(), io.StringIO()
    train_each(runs, train, overwrite=False, console=Console(stream=stream, progress=False), command=command)
    assert train.calls == [("stopped", False, True), ("crashed", True, False), ("new", False, False)]
    lines = stream.getvalue().splitlines()
    assert lines[0] == f"{command}: 1/4 done: {tmp_path / 'done'} already holds this run; keeping it"
    assert lines[1] == f"{command}: 2/4 stopped → {tmp_path / 'stopped'} (resuming)"
    assert lines[3] == f"{command}: 4/4 new → {tmp_path / 'new'}"


def test_every_folder_is_checked_before_the_first_run_trains(tmp_path, config):
    other = build_config(overrides={"method": "mezo-lora", "steps": "20"})
    runs = [PlannedRun("a", config, RunFolder(tmp_path / "a")),
            PlannedRun("b", config, folder_with(tmp_path / "b", other, status=Status.COMPLETED))]
    train = Recorder()
    with pytest.raises(ZoftError, match="another config"):
        train_each(runs, train, overwrite=False, console=Console(quiet=True), command="sweep")
    assert train.calls == []


def test_a_config_layers_defaults_preset_overrides_extra_then_the_method(tmp_path, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    preset = tmp_path / "preset.yaml"
    preset.write_text("lr: 1.0e-3\neps: 1.0e-2\nsteps: 50\nmethod: lora\n")
    config = layered_config("mezo-lora", {"eps": "1e-4", "task": "sst2", "steps": "60"}, preset, {"steps": "70"})
    assert (config.method.lr, config.method.eps, config.train.steps) == (1e-3, 1e-4, 70)
    assert (config.method.method, config.method.params) == ("mezo", "lora")  # the method wins over the preset's


def test_without_a_preset_the_packaged_one_for_task_model_and_method_is_taken(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    config = layered_config("mezo-lora", {"task": "mrpc", "model": "minilm"})
    assert config.method.lr == build_config(presets.FOLDER / "mrpc-minilm-mezo-lora.yaml").method.lr


# -- runs in child processes (the processes themselves: tests/test_sweep.py) --------------------------------------


@pytest.mark.parametrize(("state", "tail"), [("new", ["--config"]), ("stale", ["--config", "--overwrite"]),
                                             ("stopped", ["--resume"])])
def test_a_child_starts_resumes_or_replaces_its_run_on_its_processes(tmp_path, config, state, tail):
    item = PendingRun("sweep: 1/1 a", PlannedRun("a", config, RunFolder(tmp_path / "a")), state)
    argv = child_argv(item, Processes(nproc=2, options=("--tensorboard",)))
    assert argv[1:8] == ["-m", "zoft", "train", "--out", str(tmp_path / "a"), "--tensorboard", "--nproc"]
    assert [a for a in argv[9:] if a.startswith("--")] == tail
    if state != "stopped":  # the config a child starts from reads back equal: the next run keeps or resumes it
        assert build_config(argv[argv.index("--config") + 1]) == config


def test_runs_at_once_go_to_the_gpus_in_turn_or_share_the_cores(config, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert visible_gpus() == ("3", "5")  # the i-th of this process's GPUs, not the machine's i-th
    monkeypatch.setattr(orchestrate, "pick_device", lambda name: torch.device("cuda"))
    placement = Placement(("3", "5"), threads=4)
    assert [placement.environment(config, slot) for slot in range(3)] == [
        {"CUDA_VISIBLE_DEVICES": "3"}, {"CUDA_VISIBLE_DEVICES": "5"}, {"CUDA_VISIBLE_DEVICES": "3"}]
    monkeypatch.setattr(orchestrate, "pick_device", lambda name: torch.device("cpu"))
    assert placement.environment(config, 1) == {"OMP_NUM_THREADS": "4"}
    monkeypatch.setattr(orchestrate, "usable_cores", lambda: 8)
    assert Placement.here(Processes(jobs=3)).threads == 2 and Placement.here(Processes(jobs=16)).threads == 1
    assert Placement.here(Processes(nproc=2)) == Placement((), 4)  # one run on every GPU: none pinned


def test_jobs_with_nproc_and_what_cannot_run_on_several_processes_are_refused(config, tmp_path, capsys):
    assert main(["sweep", "--jobs", "2", "--nproc", "2", "--steps", "1", "--out", str(tmp_path), "--grid",
                 "lr=1e-3"]) == 2
    assert "zoft: error: --jobs and --nproc together are not supported" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    with pytest.raises(ZoftError, match="mezo-lora: config key 'zo_estimator'"):
        child_processes(Namespace(nproc=2, tensorboard=False), [build_config(overrides={"method": "mezo-lora",
                                                                                          "zo_estimator": "svrg"})])
    assert child_processes(Namespace(jobs=1, nproc=None, tensorboard=False), [config]) is None

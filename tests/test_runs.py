"""The run folder: refusal rules, overwriting only zoft's own entries, atomic writes, checkpoints."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import zoft
from zoft.config import build_config
from zoft.errors import ZoftError
from zoft.runs import FINISHED, RUN_ENTRIES, RunFolder, Status, Summary, describe_stop, environment, git_commit


@pytest.fixture
def config(monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    return build_config(overrides={"method": "mezo", "lr": "2e-5", "steps": "10"})


def make_run(path, config) -> RunFolder:
    """A folder holding a finished-looking run: every entry zoft writes, each with some content."""
    run = RunFolder(path)
    run.begin(config, overwrite=False)
    run.append_metrics({"kind": "train", "step": 1, "loss": 0.5})
    run.write_summary(Summary(status=Status.COMPLETED))
    for entry in ("model", "predictions", "checkpoint", "tensorboard"):
        (path / entry).mkdir()
        (path / entry / "file.bin").write_bytes(b"old")
    for entry in ("start.safetensors", "trajectory.bin"):
        (path / entry).write_bytes(b"old")
    return run


class FakeModel:
    """Stands in for a model or tokenizer: save_pretrained writes one file with a marker."""

    def __init__(self, marker: str, fail: bool = False) -> None:
        self.marker, self.fail = marker, fail

    def save_pretrained(self, folder):
        (folder / "weights.txt").write_text(self.marker)
        if self.fail:
            raise RuntimeError("disk full")


# -- check -----------------------------------------------------------------------------------------------


def test_check_accepts_a_new_or_empty_folder(tmp_path):
    RunFolder(tmp_path / "new").check(overwrite=False, resume=False)
    RunFolder(tmp_path).check(overwrite=False, resume=False)
    (tmp_path / "notes.txt").write_text("mine")
    RunFolder(tmp_path).check(overwrite=False, resume=False)


@pytest.mark.parametrize("entry", ["config.yaml", "metrics.jsonl"])
def test_check_refuses_a_folder_holding_a_run(tmp_path, entry):
    (tmp_path / entry).write_text("")
    with pytest.raises(ZoftError, match=r"already holds a run.*--overwrite.*--resume"):
        RunFolder(tmp_path).check(overwrite=False, resume=False)
    RunFolder(tmp_path).check(overwrite=True, resume=False)


def test_check_resume_needs_a_checkpoint(tmp_path, config):
    make_run(tmp_path / "run", config)
    RunFolder(tmp_path / "run").check(overwrite=False, resume=True)
    with pytest.raises(ZoftError, match="no checkpoint to resume from"):
        RunFolder(tmp_path / "other").check(overwrite=False, resume=True)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.yaml").write_text("")
    with pytest.raises(ZoftError, match="no checkpoint"):
        RunFolder(tmp_path / "plain").check(overwrite=False, resume=True)


def test_check_refuses_overwrite_with_resume(tmp_path):
    with pytest.raises(ZoftError, match="exclude each other"):
        RunFolder(tmp_path).check(overwrite=True, resume=True)


def test_check_refuses_a_file(tmp_path):
    (tmp_path / "run").write_text("a file")
    with pytest.raises(ZoftError, match="is a file"):
        RunFolder(tmp_path / "run").check(overwrite=True, resume=False)


# -- begin and the config ------------------------------------------------------------------------------------


def test_begin_records_the_config(tmp_path, config):
    run = RunFolder(tmp_path / "a" / "run")
    run.begin(config, overwrite=False)
    assert run.read_config() == config
    assert not (tmp_path / "a" / "run" / "config.yaml.tmp").exists()


def test_read_config_without_one(tmp_path):
    with pytest.raises(ZoftError, match=r"has no config\.yaml"):
        RunFolder(tmp_path).read_config()


def test_overwrite_removes_only_zoft_entries(tmp_path, config):
    path = tmp_path / "run"
    make_run(path, config)
    assert {p.name for p in path.iterdir()} == set(RUN_ENTRIES)
    (path / "notes.txt").write_text("my notes")
    (path / "plots").mkdir()
    (path / "plots" / "mine.png").write_bytes(b"png")
    new_config = build_config(overrides={"method": "full", "steps": "3"})
    RunFolder(path).begin(new_config, overwrite=True)
    assert {p.name for p in path.iterdir()} == {"config.yaml", "notes.txt", "plots"}
    assert (path / "notes.txt").read_text() == "my notes"
    assert (path / "plots" / "mine.png").read_bytes() == b"png"
    assert RunFolder(path).read_config() == new_config


# -- metrics -------------------------------------------------------------------------------------------------


def test_metrics_append_and_read(tmp_path):
    run = RunFolder(tmp_path)
    assert run.read_metrics() == []
    records = [{"kind": "train", "step": s, "loss": 1.0 / s} for s in range(1, 4)]
    for record in records:
        run.append_metrics(record)
    assert run.read_metrics() == records
    assert len(run.metrics_path.read_text().splitlines()) == 3


def test_metrics_read_without_a_torn_last_line_and_refuse_a_damaged_one(tmp_path):
    run = RunFolder(tmp_path)
    run.append_metrics({"kind": "train", "step": 1})
    with run.metrics_path.open("a") as file:
        file.write('{"kind": "train", "st')  # what a process killed mid-write leaves
    assert run.read_metrics() == [{"kind": "train", "step": 1}]
    run.metrics_path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')
    with pytest.raises(ZoftError, match=r"metrics.jsonl: line 2 is not JSON"):
        run.read_metrics()


def test_truncate_metrics_keeps_steps_up_to_n(tmp_path):
    run = RunFolder(tmp_path)
    records = [{"kind": "eval", "step": 0}]
    records += [{"kind": "train", "step": s} for s in range(1, 7)]
    records += [{"kind": "eval", "step": 3}, {"kind": "eval", "step": 6}]
    for record in records:
        run.append_metrics(record)
    assert run.truncate_metrics(3) is False  # nothing torn
    kept = run.read_metrics()
    assert kept == [r for r in records if r["step"] <= 3]
    assert {"kind": "eval", "step": 3} in kept
    assert max(r["step"] for r in kept) == 3
    run.append_metrics({"kind": "train", "step": 4})
    assert run.read_metrics()[-1] == {"kind": "train", "step": 4}
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_truncate_metrics_says_when_it_dropped_a_torn_last_line(tmp_path):
    run = RunFolder(tmp_path)
    run.append_metrics({"kind": "train", "step": 1})
    with run.metrics_path.open("a") as file:
        file.write('{"kind": "train", "st')
    assert run.truncate_metrics(1) is True
    assert run.metrics_path.read_text() == '{"kind": "train", "step": 1}\n'
    assert run.truncate_metrics(1) is False  # the file it rewrote is whole


def test_summary_round_trip(tmp_path):
    run = RunFolder(tmp_path)
    summary = Summary(status=Status.COMPLETED, best={"step": 3})
    run.write_summary(summary)
    assert run.read_summary() == summary
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"


# -- atomic folder writes ------------------------------------------------------------------------------------


def test_save_model_replaces_the_folder(tmp_path):
    run = RunFolder(tmp_path)
    run.save_model(FakeModel("first"), FakeModel("first"))
    (tmp_path / "model" / "stale.bin").write_bytes(b"stale")
    run.save_model(FakeModel("second"), FakeModel("second"))
    assert (tmp_path / "model" / "weights.txt").read_text() == "second"
    assert not (tmp_path / "model" / "stale.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_save_model_after_a_crash_leftover(tmp_path):
    run = RunFolder(tmp_path)
    run.save_model(FakeModel("first"), FakeModel("first"))
    (tmp_path / "model.tmp").mkdir()
    (tmp_path / "model.tmp" / "half-written.bin").write_bytes(b"x")
    (tmp_path / "model.old").mkdir()
    run.save_model(FakeModel("second"), FakeModel("second"))
    assert (tmp_path / "model" / "weights.txt").read_text() == "second"
    assert not (tmp_path / "model" / "half-written.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_failed_save_keeps_the_previous_model(tmp_path):
    run = RunFolder(tmp_path)
    run.save_model(FakeModel("first"), FakeModel("first"))
    with pytest.raises(RuntimeError):
        run.save_model(FakeModel("second", fail=True), FakeModel("second"))
    assert (tmp_path / "model" / "weights.txt").read_text() == "first"


def test_save_predictions(tmp_path):
    run = RunFolder(tmp_path)
    run.save_predictions({"test": [{"index": 0, "prediction": 1}], "validation": []})
    run.save_predictions({"test": [{"index": 0, "prediction": 0}, {"index": 1, "prediction": 1}]})
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["test.jsonl"]
    rows = [json.loads(line) for line in (tmp_path / "predictions" / "test.jsonl").read_text().splitlines()]
    assert rows == [{"index": 0, "prediction": 0}, {"index": 1, "prediction": 1}]


# -- checkpoints -------------------------------------------------------------------------------------------


def test_checkpoint_round_trip(tmp_path):
    run = RunFolder(tmp_path)
    weight = torch.randn(4, 3)
    tensors = {"a.weight": weight.t(), "b.bias": torch.arange(5, dtype=torch.float32),
               "c": torch.zeros(2, dtype=torch.bfloat16)}
    torch.manual_seed(123)
    state = {
        "loop": {"step": 7, "best_value": 0.5, "best_step": None, "last_eval": {"test/accuracy": 0.6},
                 "warnings": ["w"]},
        "method": {"optimizer": {"state": {0: {"exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 1e-3}]}},
        "stream": {"epoch_generator_state": [1, 2, 3], "position": 4},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": [],
    }
    expected_next = torch.rand(3)
    run.save_checkpoint(tensors, state)
    loaded_tensors, loaded_state = run.load_checkpoint()
    assert set(loaded_tensors) == set(tensors)
    for name, tensor in tensors.items():
        assert torch.equal(loaded_tensors[name], tensor)
        assert loaded_tensors[name].dtype == tensor.dtype
    assert loaded_state["loop"] == state["loop"]
    assert loaded_state["stream"] == state["stream"]
    assert loaded_state["method"]["optimizer"]["param_groups"] == [{"lr": 1e-3}]
    assert torch.equal(loaded_state["method"]["optimizer"]["state"][0]["exp_avg"], torch.ones(3))
    assert loaded_state["torch_rng"].dtype == torch.uint8
    torch.set_rng_state(loaded_state["torch_rng"])
    assert torch.equal(torch.rand(3), expected_next)


def test_checkpoint_replaces_the_previous_one(tmp_path):
    run = RunFolder(tmp_path)
    run.save_checkpoint({"w": torch.zeros(2)}, {"loop": {"step": 1}})
    run.save_checkpoint({"w": torch.ones(2)}, {"loop": {"step": 2}})
    tensors, state = run.load_checkpoint()
    assert torch.equal(tensors["w"], torch.ones(2))
    assert state["loop"]["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


# -- provenance ----------------------------------------------------------------------------------------------


def test_git_commit_is_the_source_trees_head():
    source = Path(zoft.__file__).resolve().parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("zoft is installed outside a git work tree (an sdist or a wheel)")
    commit = git_commit()
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", commit) and commit.removesuffix("-dirty") == head.stdout.strip()


def test_git_commit_without_git_is_none(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert git_commit() is None


def test_environment():
    info = environment(torch.device("cpu"))
    assert info["device"]["type"] == "cpu"
    assert info["device"]["threads"] >= 1
    versions = info["versions"]
    assert set(versions) >= {"python", "torch", "transformers", "peft", "zoft"}
    assert versions["torch"] == torch.__version__
    assert all(isinstance(v, str) and v for v in versions.values())
    json.dumps(info)


# -- summary.json: the Summary type and its formats ----------------------------------------------------------

FORMAT_0 = {  # as zoft wrote it before the "format" key: stopped_by in prose
    "status": "completed", "task": "mrpc", "model": "tiny", "method": "mezo", "params": "lora", "steps": 200,
    "planned_steps": 1000, "stopped_by": "budget of 400 forward passes", "select_metric": "validation/accuracy",
    "best": {"step": 100, "validation/accuracy": 0.7, "test/accuracy": 0.69},
    "final": {"step": 200, "validation/accuracy": 0.6, "test/accuracy": 0.68},
    "majority_baseline": {"split": "test", "accuracy": 0.68, "label": 1, "share": 0.68}, "beats_majority": True,
    "parameters": {"trainable": 10, "total": 1000, "trainable_percent": 1.0}, "passes": {"forward": 400, "backward": 0},
    "examples_seen": 3200, "time": {"wall_seconds": 9.0, "train_seconds": 6.0, "eval_seconds": 2.0,
                                    "seconds_per_step": 0.03},
    "memory": {"device": "cpu", "train_peak_rss_bytes": 7e8}, "data": {"source": "glue", "sizes": {"test": 408}},
    "head_init": None, "warnings": ["step 3: x"], "device": {"type": "cpu", "name": "x86_64", "threads": 2},
    "versions": {"zoft": "0.1.0"}, "git_commit": "abc", "command": ["zoft", "train"], "started_at": "2026-12-01",
}


def test_a_format_0_summary_reads_with_its_prose_stopped_by():
    summary = Summary.from_json(FORMAT_0)
    assert summary.stopped_by == "max_forward_passes" and summary.status is Status.COMPLETED
    assert summary.select_key == "validation/accuracy" and summary.passes.forward == 400
    assert summary.parameters.trainable == 10 and summary.device.threads == 2 and summary.time.seconds_per_step == 0.03
    minutes = Summary.from_json({**FORMAT_0, "stopped_by": "time budget of 0.0001 minutes"})
    assert minutes.stopped_by == "max_minutes"
    assert Summary.from_json({"status": "crashed"}).stopped_by == "steps"  # the oldest files have few keys


def test_a_format_1_summary_round_trips_with_the_keys_of_format_0():
    document = {"format": 1, **FORMAT_0, "stopped_by": "max_forward_passes"}
    summary = Summary.from_json(document)
    assert summary.to_json() == document
    assert list(summary.to_json()) == ["format", *FORMAT_0]  # the keys in format 0's order
    assert Summary.from_json(FORMAT_0).to_json() == document  # an old file is rewritten in the new format


def test_the_limit_that_stopped_a_run_reads_as_format_0_wrote_it():
    assert describe_stop("max_minutes", 10.0, None) == "time budget of 10 minutes"
    assert describe_stop("max_minutes", 0.0001, None) == "time budget of 0.0001 minutes"
    assert describe_stop("max_forward_passes", None, 400) == "budget of 400 forward passes"


def test_a_summary_of_a_newer_format_or_an_unknown_stop_is_refused():
    with pytest.raises(ZoftError, match="format 2"):
        Summary.from_json({**FORMAT_0, "format": 2})
    with pytest.raises(ZoftError, match="unknown stopped_by"):
        Summary.from_json({**FORMAT_0, "stopped_by": "the moon"})


def test_a_status_is_its_string():
    assert Status("diverged") is Status.DIVERGED and Status.DIVERGED == "diverged"
    assert f"{Status.COMPLETED}" == str(Status.COMPLETED) == "completed"
    assert json.dumps(Status.INTERRUPTED) == '"interrupted"'
    assert set(FINISHED) == {Status.COMPLETED, Status.DIVERGED} and "crashed" not in FINISHED


def test_a_run_is_finished_once_its_summary_says_completed_or_diverged(tmp_path):
    run = RunFolder(tmp_path)
    assert not run.finished()
    for status, finished in ((Status.INTERRUPTED, False), (Status.CRASHED, False), (Status.DIVERGED, True)):
        run.write_summary(Summary(status=status))
        assert run.finished() == finished


def test_the_start_tensors_keep_their_parameter_order(tmp_path):
    run = RunFolder(tmp_path)
    tensors = {"z.weight": torch.ones(2, 3), "a.bias": torch.zeros(3), "m.weight": torch.full((1,), 2.0)}
    run.save_start(tensors)
    loaded = run.load_start()
    assert list(loaded) == ["z.weight", "a.bias", "m.weight"]
    assert all(torch.equal(loaded[name], tensors[name]) for name in tensors)
    assert not (tmp_path / "start.safetensors.tmp").exists()


def test_start_tensors_without_their_order_are_refused(tmp_path):
    save_file({"w": torch.ones(1)}, tmp_path / "start.safetensors")
    with pytest.raises(ZoftError, match="no parameter order"):
        RunFolder(tmp_path).load_start()
    with pytest.raises(ZoftError, match=r"has no start\.safetensors"):
        RunFolder(tmp_path / "none").load_start()

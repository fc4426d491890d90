"""A full disk mid-run: one `zoft: error:` line naming the file, the last good checkpoint and every earlier
metrics line kept, and `--resume` continuing as if nothing had happened. The full disk is an OSError(ENOSPC)
injected at the write (a real tmpfs needs root; docs/reliability.md has the command for one)."""

import errno
import json
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from zoft import runs
from zoft.cli import main
from zoft.errors import ZoftError
from zoft.runs import RunFolder

TIMING_FIELDS = {"step_seconds", "train_seconds", "eval_seconds"}


def full_disk() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


def records(path):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS}
            for line in path.read_text().splitlines()]


def fail_on_call(number, real):
    """`real`, except that its call `number` (from 1) raises ENOSPC."""
    calls = []

    def write(*args, **kwargs):
        calls.append(args)
        if len(calls) == number:
            raise full_disk()
        return real(*args, **kwargs)

    return write


@pytest.fixture
def run_args(tiny_run_args):
    return [*tiny_run_args, "--method", "lora", "--checkpoint-every", "2"]


@pytest.fixture
def straight(tmp_path, run_args):
    """The same run, never stopped: what a stopped and resumed run must end up equal to."""
    folder = tmp_path / "straight"
    assert main(["train", "--out", str(folder), *run_args]) == 0
    return folder


def assert_resumes_to(run, straight):
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert records(run / "metrics.jsonl") == records(straight / "metrics.jsonl")
    ours, theirs = (load_file(folder / "checkpoint" / "trainable.safetensors") for folder in (run, straight))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zoft: error: "), lines
    return lines[0]


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one(tmp_path, run_args, straight, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(runs, "save_file", fail_on_call(2, runs.save_file))  # the checkpoint of step 4
    capsys.readouterr()
    assert main(["train", "--out", str(run), *run_args]) == 2
    line = one_error_line(capsys)
    assert str(run / "checkpoint" / "trainable.safetensors") in line and "No space left on device" in line

    assert not (run / "checkpoint.tmp").exists()
    tensors, state = RunFolder(run).load_checkpoint()
    assert state["loop"]["step"] == 2 and tensors
    assert json.loads((run / "summary.json").read_text())["status"] == "crashed"
    written = records(run / "metrics.jsonl")
    assert written == records(straight / "metrics.jsonl")[:len(written)] and written[-1]["step"] == 4
    monkeypatch.undo()
    assert_resumes_to(run, straight)


def test_a_full_disk_mid_line_in_the_metrics_keeps_every_earlier_line(tmp_path, run_args, straight, monkeypatch,
                                                                      capsys):
    run = tmp_path / "run"
    real = runs._write_all
    lines = []

    def half_a_line_then_full(descriptor, data):
        lines.append(data)
        if len(lines) == 5:  # the evaluation at step 3, after the checkpoint of step 2
            real(descriptor, data[:len(data) // 2])
            raise full_disk()
        real(descriptor, data)

    monkeypatch.setattr(runs, "_write_all", half_a_line_then_full)
    capsys.readouterr()
    assert main(["train", "--out", str(run), *run_args]) == 2
    line = one_error_line(capsys)
    assert str(run / "metrics.jsonl") in line and "No space left on device" in line

    text = (run / "metrics.jsonl").read_text()
    assert text.endswith("\n")  # the half line is cut back off
    assert records(run / "metrics.jsonl") == records(straight / "metrics.jsonl")[:4]
    assert RunFolder(run).load_checkpoint()[1]["loop"]["step"] == 2
    monkeypatch.undo()
    assert_resumes_to(run, straight)


def test_a_summary_that_cannot_be_written_either_does_not_hide_the_error(tmp_path, run_args, monkeypatch, capsys):
    run = tmp_path / "run"
    monkeypatch.setattr(runs, "save_file", fail_on_call(1, runs.save_file))

    def no_space(self, summary):
        raise ZoftError(f"could not write {self.summary_path}: No space left on device")

    monkeypatch.setattr(RunFolder, "write_summary", no_space)
    capsys.readouterr()
    assert main(["train", "--out", str(run), *run_args]) == 2
    line = one_error_line(capsys)
    assert str(run / "checkpoint") in line and "summary.json" not in line


def test_a_failed_text_write_keeps_the_old_text_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    runs._write_text_atomically(path, "old\n")

    real_open = Path.open

    def open_then_fill_the_disk(self, *args, **kwargs):
        with real_open(self, *args, **kwargs) as file:
            file.write("ne")  # a part reaches the disk, the rest does not
        raise full_disk()

    monkeypatch.setattr(Path, "open", open_then_fill_the_disk)
    with pytest.raises(ZoftError, match=f"could not write {path}: No space left on device"):
        runs._write_text_atomically(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_failed_folder_write_keeps_the_old_folder(tmp_path):
    target = tmp_path / "model"
    runs._replace_dir(target, lambda folder: (folder / "weights").write_text("old"))

    def fill(folder):
        (folder / "weights").write_text("half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(ZoftError, match=f"could not write {target}: .*No space left on device"):
        runs._replace_dir(target, fill)
    assert (target / "weights").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_full_disk_in_torch_save_names_the_checkpoint_file(tmp_path, monkeypatch):
    run = RunFolder(tmp_path)
    run.save_checkpoint({"w": torch.ones(2)}, {"step": 1})

    def full(state, path):  # what torch.save raises when the disk fills under it
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(runs.torch, "save", full)
    with pytest.raises(ZoftError, match=f"could not write {tmp_path / 'checkpoint' / 'state.pt'}: .*unexpected pos"):
        run.save_checkpoint({"w": torch.zeros(2)}, {"step": 2})
    monkeypatch.undo()
    tensors, state = run.load_checkpoint()
    assert state == {"step": 1} and torch.equal(tensors["w"], torch.ones(2))


def test_a_full_disk_at_the_seed_trajectory_stops_mezo_and_resume_continues_it(tmp_path, tiny_run_args, monkeypatch,
                                                                                capsys):
    args = [*tiny_run_args, "--method", "mezo-lora", "--checkpoint-every", "2"]
    straight = tmp_path / "straight"
    assert main(["train", "--out", str(straight), *args]) == 0
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(runs.trajectory, "append", fail_on_call(3, runs.trajectory.append))  # step 3's record
        capsys.readouterr()
        assert main(["train", "--out", str(run), *args]) == 2
    line = one_error_line(capsys)
    assert str(run / "trajectory.bin") in line and "No space left on device" in line
    assert RunFolder(run).load_checkpoint()[1]["loop"]["step"] == 2
    assert_resumes_to(run, straight)
    assert (run / "trajectory.bin").read_bytes() == (straight / "trajectory.bin").read_bytes()

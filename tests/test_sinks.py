"""The sinks in front of the run folder, the console and TensorBoard; the Trainer's cheap construction."""

import io
import json
import sys

import pytest

from zoft.cli import main
from zoft.config import build_config
from zoft.console import Console
from zoft.errors import ZoftError
from zoft.runs import RunFolder
from zoft.sinks import ConsoleSink, RunFolderSink, TensorBoardSink, scalars
from zoft.train import Trainer

EVAL = {"kind": "eval", "step": 3, "forward_passes": 6, "eval_seconds": 0.5, "validation/accuracy": 0.75,
        "test/accuracy": 0.5}
TRAIN = {"kind": "train", "step": 3, "loss": 0.69, "lr": 1e-4, "forward_passes": 6, "epoch": 0}


def test_scalars_tag_train_values_and_keep_split_keys():
    assert scalars(TRAIN) == [("train/loss", 0.69), ("train/lr", 1e-4), ("train/forward_passes", 6.0),
                              ("train/epoch", 0.0)]
    assert ("validation/accuracy", 0.75) in scalars(EVAL) and ("eval/eval_seconds", 0.5) in scalars(EVAL)
    assert scalars({"kind": "eval", "step": 0, "note": "text", "flag": True}) == []


def test_the_run_folder_sink_appends_records_and_writes_the_summary(tmp_path):
    run = RunFolder(tmp_path)
    sink = RunFolderSink(run)
    sink.log(TRAIN)
    sink.log(EVAL)
    assert run.read_metrics() == [TRAIN, EVAL]
    assert not (tmp_path / "summary.json").exists()


def test_the_console_sink_shows_evaluations_not_train_records(tmp_path):
    stream = io.StringIO()
    sink = ConsoleSink(Console(stream=stream, progress=False), "validation/accuracy", tmp_path)
    sink.log(TRAIN)
    assert stream.getvalue() == ""
    sink.log(EVAL)
    assert stream.getvalue() == "step 3 eval: validation: accuracy 0.7500; test: accuracy 0.5000\n"


def test_tensorboard_missing_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an absent package looks like
    with pytest.raises(ZoftError, match=r"needs the tensorboard package: pip install 'zoft\[tensorboard\]'"):
        TensorBoardSink(tmp_path)


def test_a_run_with_tensorboard_logs_the_same_numbers_as_its_metrics(tmp_path, tiny_run_args):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--method", "lora", "--tensorboard", *tiny_run_args]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    events = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(s, pytest.approx(v)) for s, v in train]
    evals = [(r["step"], r["validation/accuracy"]) for r in records if r["kind"] == "eval"]
    assert [(e.step, e.value) for e in events.Scalars("validation/accuracy")] == [
        (s, pytest.approx(v)) for s, v in evals]


def test_constructing_a_trainer_loads_nothing_setup_does(tmp_path):
    config = build_config(overrides={"task": "mrpc", "data_dir": str(tmp_path / "no-such-glue")})
    trainer = Trainer(config, RunFolder(tmp_path / "run"), Console(quiet=True))
    assert trainer.state.step == 0 and not (tmp_path / "run").exists()
    with pytest.raises(ZoftError, match="no-such-glue"):
        trainer.setup()

"""What a person watching a run sees: plain lines off a terminal, a progress bar on one, nothing with quiet."""

import io
from pathlib import Path

from zoft.console import Console, format_baseline
from zoft.runs import Status, Summary, Timing

STEP = {"kind": "train", "loss": 0.6931, "lr": 1e-4, "train_seconds": 12.4}


def plain(**kw) -> tuple[Console, io.StringIO]:
    stream = io.StringIO()
    return Console(stream=stream, progress=False, **kw), stream


def test_off_a_terminal_a_line_every_plain_every_steps():
    console, stream = plain(plain_every=2)
    for step in (1, 2, 3, 4):
        console.step({**STEP, "step": step})
    assert stream.getvalue().splitlines() == ["step 2: loss 0.6931, lr 0.0001, 12 s",
                                              "step 4: loss 0.6931, lr 0.0001, 12 s"]


def test_an_evaluation_shows_both_splits_without_the_majority_share():
    console, stream = plain()
    console.evaluation({"step": 5, "validation/accuracy": 0.8, "validation/majority_share": 0.6,
                        "test/accuracy": 0.75, "test/f1": 0.7}, "validation/accuracy")
    assert stream.getvalue() == "step 5 eval: validation: accuracy 0.8000; test: accuracy 0.7500, f1 0.7000\n"


def test_quiet_prints_nothing_not_even_warnings():
    console, stream = plain(quiet=True, plain_every=1)
    console.start(["task mrpc"], total=3, done=0)
    console.step({**STEP, "step": 1})
    console.warn("the loss diverged")
    console.print("compare: lora → runs/lora")
    assert stream.getvalue() == ""


def test_on_a_terminal_a_progress_bar_counts_steps_and_lines_go_above_it():
    console, stream = plain()
    console.progress = True
    console.start(["task mrpc"], total=4, done=1)
    console.step({**STEP, "step": 2})
    console.warn("careful")
    assert console.bar is not None and console.bar.n == 2
    output = stream.getvalue()
    assert output.startswith("task mrpc\n") and "warning: careful" in output and "loss 0.6931" in output


def test_the_baseline_is_the_majority_class_or_for_regression_the_mean():
    majority = {"share": 0.68, "accuracy": 0.68, "f1": 0.81}
    assert format_baseline(majority) == "majority class: accuracy 0.6800, f1 0.8100"
    assert format_baseline({"mean": 2.5, "mse": 1.25}) == "constant mean 2.5000: mse 1.2500"


def test_the_end_of_a_run_warns_when_its_best_does_not_beat_the_majority_class():
    def closing_lines(beats_majority):
        console, stream = plain()
        summary = Summary(status=Status.COMPLETED, steps=6, select_key="validation/accuracy",
                          best={"step": 3, "test/accuracy": 0.6838}, majority_baseline={"share": 0.6838,
                                                                                        "accuracy": 0.6838},
                          beats_majority=beats_majority, time=Timing(wall_seconds=4.2))
        console.close(summary, Path("runs/mrpc-lora"))
        return stream.getvalue().splitlines()

    warning = "warning: the best checkpoint does not beat the majority-class baseline on test"
    assert closing_lines(False) == [
        "completed: 6 steps in 4 s",
        "best by validation/accuracy at step 3: test accuracy 0.6838 (majority class: accuracy 0.6838)",
        warning, "run folder: runs/mrpc-lora"]
    assert warning not in closing_lines(True)
    assert warning not in closing_lines(None)  # no test score (regression's baseline has no correlation)

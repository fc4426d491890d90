"""The training loop through the real CLI, on a tiny random BERT and a small slice of real MRPC."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from zoft.cli import main
from zoft.train import Trainer

TRAIN_FIELDS = {"step", "loss", "lr", "examples_seen", "forward_passes", "backward_passes", "train_seconds"}
TIMING_FIELDS = {"step_seconds", "train_seconds", "eval_seconds"}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timings(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def test_lora_run_folder_is_complete(tmp_path, tiny_run_args):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--method", "lora", *tiny_run_args]) == 0
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "summary.json", "model",
                                               "predictions", "checkpoint"}
    records = read_jsonl(run / "metrics.jsonl")
    train_records = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4, 5, 6]
    assert all(TRAIN_FIELDS | {"grad_norm"} <= r.keys() for r in train_records)
    assert [r["forward_passes"] for r in train_records] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in evals] == [0, 3, 6]
    assert all({"validation/accuracy", "validation/f1", "test/accuracy", "test/f1"} <= r.keys() for r in evals)

    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["majority_baseline"]["accuracy"] == pytest.approx(279 / 408)
    best_eval = max(evals, key=lambda r: r["validation/accuracy"])  # first maximum wins, as in the loop
    assert summary["best"]["step"] == best_eval["step"]
    assert summary["best"]["test/accuracy"] == best_eval["test/accuracy"]
    assert summary["final"]["step"] == 6
    assert 0 < summary["parameters"]["trainable"] < summary["parameters"]["total"]
    assert summary["passes"] == {"forward": 6, "backward": 6}
    assert summary["memory"]["train_peak_rss_bytes"] > 50e6
    assert summary["time"]["seconds_per_step"] > 0
    assert set(summary["versions"]) >= {"python", "torch", "transformers", "peft"}
    assert summary["data"]["sizes"]["test"] == 408

    predictions = read_jsonl(run / "predictions" / "test.jsonl")
    assert len(predictions) == 408
    accuracy = sum(p["prediction"] == p["label"] for p in predictions) / 408
    assert accuracy == pytest.approx(summary["best"]["test/accuracy"])
    assert (run / "model" / "adapter_config.json").is_file()


def test_full_fine_tuning_saves_the_whole_model(tmp_path, tiny_run_args):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--method", "full", *tiny_run_args]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["parameters"]["trainable"] == summary["parameters"]["total"]
    assert (run / "model" / "config.json").is_file() and (run / "model" / "model.safetensors").is_file()


def test_mezo_logs_both_losses_and_no_backward(tmp_path, tiny_run_args):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--method", "mezo", "--n-perturbations", "2", *tiny_run_args]) == 0
    train_records = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    assert all({"loss_plus", "loss_minus", "projected_grad"} <= r.keys() for r in train_records)
    assert all(r["loss"] == pytest.approx((r["loss_plus"] + r["loss_minus"]) / 2) for r in train_records)
    assert [r["forward_passes"] for r in train_records] == [4 * s for s in range(1, 7)]
    assert all(r["backward_passes"] == 0 for r in train_records)


@pytest.mark.parametrize("torn_last_line", [False, True], ids=["clean-log", "torn-log"])
def test_a_stopped_run_resumes_bit_exactly(tmp_path, tiny_run_args, monkeypatch, torn_last_line):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    args = [*tiny_run_args, "--method", "lora", "--checkpoint-every", "0"]
    assert main(["train", "--out", str(straight), *args]) == 0

    original_step = Trainer.train_step

    def press_ctrl_c_at_step_4(self):
        record = original_step(self)
        if record["step"] == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return record

    monkeypatch.setattr(Trainer, "train_step", press_ctrl_c_at_step_4)
    assert main(["train", "--out", str(stopped), *args]) == 130
    assert json.loads((stopped / "summary.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(Trainer, "train_step", original_step)
    if torn_last_line:  # a kill mid-write: resume reads past the partial line and rewrites the log
        with (stopped / "metrics.jsonl").open("a") as file:
            file.write('{"kind": "train", "step": 5, "lo')
    assert main(["train", "--out", str(stopped), "--resume", "--quiet"]) == 0

    assert without_timings(read_jsonl(stopped / "metrics.jsonl")) == without_timings(
        read_jsonl(straight / "metrics.jsonl")
    )
    straight_params = load_file(straight / "checkpoint" / "trainable.safetensors")
    stopped_params = load_file(stopped / "checkpoint" / "trainable.safetensors")
    assert straight_params.keys() == stopped_params.keys()
    assert all(torch.equal(straight_params[k], stopped_params[k]) for k in straight_params)
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["passes"]["forward"] == 6


def test_a_diverging_run_stops_and_says_so(tmp_path, tiny_run_args):
    run = tmp_path / "run"
    code = main(["train", "--out", str(run), "--method", "full", "--lr", "1e30", "--max-grad-norm", "0",
                 "--schedule", "constant", *tiny_run_args])
    summary = json.loads((run / "summary.json").read_text())
    assert code == 1
    assert summary["status"] == "diverged"
    assert any("diverged" in w for w in summary["warnings"])


def test_a_collapsed_model_is_flagged(tmp_path, tiny_run_args):
    run = tmp_path / "run"
    # A large constant learning rate drives a tiny model to predict the majority class for everything.
    assert main(["train", "--out", str(run), "--method", "full", "--lr", "0.05", "--schedule", "constant",
                 *tiny_run_args]) == 0
    summary = json.loads((run / "summary.json").read_text())
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "eval"]
    collapsed = [r["step"] for r in evals if r["test/majority_share"] == 1.0]
    assert collapsed, "the run was expected to collapse to one class"
    assert [w for w in summary["warnings"] if "one class" in w] == [
        w for w in summary["warnings"] if any(f"step {s}:" in w for s in collapsed)
    ]


@pytest.mark.parametrize(("task", "metrics"), [
    ("sst2", {"accuracy"}), ("cola", {"matthews"}), ("stsb", {"pearson", "spearman"}), ("rte", {"accuracy"}),
])
def test_every_shared_glue_task_trains_with_its_metric(tmp_path, tiny_run_args, task, metrics):
    run = tmp_path / task
    args = [a if a != "mrpc" else task for a in tiny_run_args]
    assert main(["train", "--out", str(run), "--method", "lora", *args]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == task
    assert {key.split("/")[1] for key in summary["best"] if key.startswith("test/")} - {"majority_share"} == metrics
    assert summary["select_metric"] == f"validation/{sorted(metrics)[0] if task != 'stsb' else 'pearson'}"


def test_step_zero_is_never_chosen_when_the_papers_selection_is_asked_for(tmp_path, tiny_run_args):
    """The tiny random model predicts one class at every evaluation: step 0's score is never beaten, so zoft's
    default selection keeps step 0, and the MeZO paper's (select_step_zero=false) the first later evaluation."""
    runs = {}
    for zero in ("true", "false"):
        runs[zero] = tmp_path / zero
        assert main(["train", "--out", str(runs[zero]), "--method", "mezo", "--select-step-zero", zero,
                     *tiny_run_args]) == 0
    evals = [r for r in read_jsonl(runs["true"] / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals[0]["validation/accuracy"] >= max(r["validation/accuracy"] for r in evals[1:])
    assert json.loads((runs["true"] / "summary.json").read_text())["best"]["step"] == 0
    best = json.loads((runs["false"] / "summary.json").read_text())["best"]
    later = [r for r in evals[1:] if r["validation/accuracy"] == max(e["validation/accuracy"] for e in evals[1:])]
    assert best["step"] == later[0]["step"] == 3


def test_mezo_with_a_random_classifier_on_a_masked_lm_is_warned_about(tmp_path, tiny_bert_mlm, real_glue, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--model", str(tiny_bert_mlm), "--data-dir", str(real_glue), "--task",
                 "sst2", "--head", "classifier", "--method", "mezo", "--train-limit", "32", "--validation-fraction",
                 "0.002", "--steps", "2", "--eval-every", "2", "--max-length", "32"]) == 0
    warning = ("MeZO with a randomly initialised classifier head on a masked LM: without a prompt MeZO stays near "
               "chance (the MeZO paper's Table 5")
    assert warning in capsys.readouterr().err
    assert any(w.startswith(warning) for w in json.loads((run / "summary.json").read_text())["warnings"])

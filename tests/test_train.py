"""The training loop through the real CLI, on a tiny random BERT and a small slice of real MRPC."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from zoft import trajectory
from zoft.cli import main
from zoft.config import build_config
from zoft.console import Console
from zoft.evaluate import evaluate_split
from zoft.runs import RunFolder
from zoft.train import Trainer, planned_steps

TRAIN_FIELDS = {"step", "loss", "lr", "examples_seen", "forward_passes", "backward_passes", "train_seconds"}
TIMING_FIELDS = {"step_seconds", "train_seconds", "eval_seconds"}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timings(records):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def saved_adapter_names(trainable: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's trainable tensors under the names PEFT's save_pretrained gives them in model/."""
    return {name.replace(".modules_to_save.default", "").replace(".default", ""): t for name, t in trainable.items()}


def test_lora_run_folder_is_complete(tmp_path, learning_run_args, assert_trained):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--method", "lora", *learning_run_args]) == 0
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
    assert summary["best"]["step"] == best_eval["step"] == 3 and evals[0]["validation/accuracy"] < best_eval[
        "validation/accuracy"]
    assert summary["best"]["test/accuracy"] == best_eval["test/accuracy"]
    assert summary["final"]["step"] == 6
    assert 0 < summary["parameters"]["trainable"] < summary["parameters"]["total"]
    assert summary["passes"] == {"forward": 6, "backward": 6}
    memory = summary["memory"]  # the phase's figures, in the order they must hold (measure.py tests the sampler)
    assert 0 < memory["rss_at_train_start_bytes"] <= memory["train_peak_rss_bytes"]
    assert memory["process_peak_rss_bytes"] >= memory["train_peak_rss_bytes"] * 0.9
    assert summary["time"]["seconds_per_step"] > 0
    assert set(summary["versions"]) >= {"python", "torch", "transformers", "peft"}
    assert summary["data"]["sizes"]["test"] == 408

    predictions = read_jsonl(run / "predictions" / "test.jsonl")
    assert len(predictions) == 408
    accuracy = sum(p["prediction"] == p["label"] for p in predictions) / 408
    assert accuracy == pytest.approx(summary["best"]["test/accuracy"])
    assert (run / "model" / "adapter_config.json").is_file()
    # model/ holds step 3, the best: trained (lora_B off zero), and not the step-6 weights of the checkpoint
    assert_trained(run)
    best = load_file(run / "model" / "adapter_model.safetensors")
    final = saved_adapter_names(load_file(run / "checkpoint" / "trainable.safetensors"))
    assert best.keys() == final.keys()
    assert all(not torch.equal(best[name], final[name]) for name in best if "lora_B" in name)


def test_full_fine_tuning_saves_the_whole_trained_model(tmp_path, learning_run_args, tiny_bert, assert_trained):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--method", "full", *learning_run_args]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["parameters"]["trainable"] == summary["parameters"]["total"]
    assert (run / "model" / "config.json").is_file() and (run / "model" / "model.safetensors").is_file()
    assert_trained(run)
    # every weight of the encoder is saved, and the encoder's weights moved off the ones it started from
    start = load_file(tiny_bert / "model.safetensors")
    saved = load_file(run / "model" / "model.safetensors")
    assert {f"bert.{name}" for name in start} <= saved.keys() and "classifier.weight" in saved
    moved = [name for name in start if not torch.equal(start[name], saved[f"bert.{name}"])]
    assert any(name.startswith("encoder.layer.0.") for name in moved)


def test_mezo_logs_both_losses_and_no_backward(tmp_path, tiny_run_args):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--method", "mezo", "--n-perturbations", "2", *tiny_run_args]) == 0
    train_records = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    assert all({"loss_plus", "loss_minus", "projected_grad"} <= r.keys() for r in train_records)
    assert all(r["loss"] == pytest.approx((r["loss_plus"] + r["loss_minus"]) / 2) for r in train_records)
    assert [r["forward_passes"] for r in train_records] == [4 * s for s in range(1, 7)]
    assert all(r["backward_passes"] == 0 for r in train_records)


def test_a_diverging_run_stops_and_says_so(tmp_path, tiny_run_args):
    run = tmp_path / "run"
    code = main(["train", "--out", str(run), "--method", "full", "--lr", "1e30", "--max-grad-norm", "0",
                 "--schedule", "constant", *tiny_run_args])
    summary = json.loads((run / "summary.json").read_text())
    assert code == 1
    assert summary["status"] == "diverged"
    assert any("diverged" in w for w in summary["warnings"])


def test_a_collapsed_model_is_flagged(tmp_path, learning_run_args):
    """Measured: a linear head on mean-pooled features predicts both classes at step 0 (97.3% of the test split
    the majority class), and lr 1e-2 drives it to the majority class alone by step 3."""
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--method", "lora", "--pooling", "mean", *learning_run_args]) == 0
    summary = json.loads((run / "summary.json").read_text())
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "eval"]
    collapsed = {r["step"] for r in evals if r["test/majority_share"] == 1.0}
    assert collapsed and collapsed != {r["step"] for r in evals}, "expected collapsed and uncollapsed evaluations"
    flagged = [w for w in summary["warnings"] if "predicts one class" in w]
    assert flagged == [f"step {step}: the model predicts one class for every test example (the majority class is "
                       f"68.38% of the test split)" for step in sorted(collapsed)]


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


@pytest.mark.parametrize("method", ["lora", "full", "mezo"])
def test_the_same_config_and_seed_give_the_same_metrics(tmp_path, learning_run_args, method, assert_trained):
    """Determinism on one machine: two runs differ only in their time fields (LoRA's dropout included)."""
    first, second = tmp_path / "first", tmp_path / "second"
    for out in (first, second):
        assert main(["train", "--out", str(out), "--method", method, *learning_run_args]) == 0
    records = without_timings(read_jsonl(first / "metrics.jsonl"))
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert records == without_timings(read_jsonl(second / "metrics.jsonl"))
    assert_trained(first)
    assert_same_trainable_tensors(first, second)
    assert_same_model(first, second)


def assert_same_trainable_tensors(one, other):
    one_params = load_file(one / "checkpoint" / "trainable.safetensors")
    other_params = load_file(other / "checkpoint" / "trainable.safetensors")
    assert one_params.keys() == other_params.keys()
    assert all(torch.equal(one_params[k], other_params[k]) for k in one_params)


def assert_same_model(one, other):
    """model/ (the best checkpoint) of two runs: the same files, every tensor equal."""
    def tensor_files(run):
        return sorted(path.relative_to(run / "model") for path in (run / "model").rglob("*.safetensors"))

    files = tensor_files(one)
    assert files and files == tensor_files(other)
    for file in files:
        one_tensors, other_tensors = load_file(one / "model" / file), load_file(other / "model" / file)
        assert one_tensors.keys() == other_tensors.keys()
        assert all(torch.equal(one_tensors[k], other_tensors[k]) for k in one_tensors)


# -- real signals to a real `python -m zoft train` process ------------------------------------------------

# Long enough to be hit mid-run (about 15 ms a step on this machine), short enough for a test: evaluations only
# at step 0 and at the end, a periodic checkpoint every 5 steps for the stop-at-once case.
SIGNAL_RUN = ["--steps", "150", "--eval-every", "1000", "--checkpoint-every", "5"]
RESUME_HINT = "a checkpoint was saved: continue with `zoft train --out {out} --resume`"


def start_zoft(out, args, command="train"):
    """`python -m zoft train` in its own process, stderr to a file; one thread, as the in-process runs here
    (the one_thread fixture), so that its arithmetic is the same as theirs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    stderr = (out.parent / f"{out.name}.stderr").open("w")
    process = subprocess.Popen([sys.executable, "-m", "zoft", command, "--out", str(out), *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=stderr)
    stderr.close()
    return process


def stderr_of(out):
    return (out.parent / f"{out.name}.stderr").read_text()


def wait_for_step(process, out, step, timeout=60, run=None):
    """Poll the metrics.jsonl of `run` (default: `out`) until a train record of `step` or later is there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"zoft exited early ({process.returncode}): {stderr_of(out)}"
        metrics = (run or out) / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        if any('"kind": "train"' in line and json.loads(line)["step"] >= step for line in lines[:-1]):
            return
        time.sleep(0.02)
    pytest.fail(f"no step {step} in {timeout} s: {stderr_of(out)}")


def stop_with(signum, out, args):
    """Start a run, let it log some steps, send `signum` once, and wait for it to exit; returns its exit code."""
    process = start_zoft(out, args)
    wait_for_step(process, out, 10)
    os.kill(process.pid, signum)
    return process.wait(timeout=60)


@pytest.mark.parametrize("method", ["lora", "mezo"])
def test_a_run_stopped_by_sigterm_resumes_bit_exactly(tmp_path, learning_run_args, method, assert_trained):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    args = [*learning_run_args, "--method", method, *SIGNAL_RUN]
    if method == "lora":
        args += ["--lora-dropout", "0.1"]  # the dropout RNG must be restored too
    assert main(["train", "--out", str(straight), *args]) == 0

    assert stop_with(signal.SIGTERM, stopped, args) == 128 + signal.SIGTERM
    summary = json.loads((stopped / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 10 <= summary["steps"] < 150
    state = torch.load(stopped / "checkpoint" / "state.pt", weights_only=True)
    assert state["loop"]["step"] == summary["steps"]  # the checkpoint of the last whole step, not a periodic one
    err = stderr_of(stopped)
    assert "zoft: SIGTERM received: stopping after this step (SIGTERM again to stop at once)" in err
    assert err.endswith(f"zoft: interrupted by SIGTERM; {RESUME_HINT.format(out=stopped)}\n")
    if method == "lora":
        assert yaml.safe_load((stopped / "config.yaml").read_text())["model"]["lora_dropout"] == 0.1

    # resumed in this process, which has run the straight run and never this one: all it continues from is what
    # the stopped process left in its folder (a second start-up of zoft would cost seconds and test nothing more)
    assert main(["train", "--out", str(stopped), "--resume", "--quiet"]) == 0
    assert json.loads((stopped / "summary.json").read_text())["status"] == "completed"
    assert without_timings(read_jsonl(stopped / "metrics.jsonl")) == without_timings(
        read_jsonl(straight / "metrics.jsonl")
    )
    assert_same_trainable_tensors(straight, stopped)
    assert_trained(stopped)  # its best checkpoint is step 150, saved by the resumed process
    assert_same_model(straight, stopped)


def test_sighup_stops_a_run_like_ctrl_c(tmp_path, tiny_run_args):
    run = tmp_path / "run"
    assert stop_with(signal.SIGHUP, run, [*tiny_run_args, "--method", "mezo", *SIGNAL_RUN]) == 128 + signal.SIGHUP
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
    assert (run / "checkpoint" / "trainable.safetensors").is_file()
    assert stderr_of(run).endswith(f"zoft: interrupted by SIGHUP; {RESUME_HINT.format(out=run)}\n")


def test_a_second_signal_stops_at_once(tmp_path, tiny_run_args):
    """Two different signals, so that the kernel cannot merge them into one: the first asks for a stop after the
    step, the second stops there and then; no checkpoint is written, the last periodic one stays."""
    run = tmp_path / "run"
    process = start_zoft(run, [*tiny_run_args, "--method", "mezo", *SIGNAL_RUN])
    wait_for_step(process, run, 10)
    os.kill(process.pid, signal.SIGTERM)
    os.kill(process.pid, signal.SIGHUP)
    code = process.wait(timeout=60)
    err = stderr_of(run)
    # Python runs pending handlers in signal-number order: whichever came second stopped the run.
    assert code in {128 + signal.SIGTERM, 128 + signal.SIGHUP}
    second = signal.Signals(code - 128).name
    assert err.endswith(f"zoft: stopped by {second}; a run can be continued from its last checkpoint with --resume\n")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "crashed" and summary["steps"] < 150
    state = torch.load(run / "checkpoint" / "state.pt", weights_only=True)
    assert state["loop"]["step"] % 5 == 0 and state["loop"]["step"] <= summary["steps"]


def test_sigterm_stops_a_comparison_which_the_same_command_continues(tmp_path, tiny_run_args):
    out = tmp_path / "compare"
    args = ["--methods", "mezo-lora,lora", *tiny_run_args, *SIGNAL_RUN]
    process = start_zoft(out, args, command="compare")
    wait_for_step(process, out, 10, run=out / "mezo-lora")
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(timeout=60) == 128 + signal.SIGTERM
    assert stderr_of(out).endswith("zoft: interrupted by SIGTERM; run the same command again to continue the "
                                   "comparison\n")
    assert json.loads((out / "mezo-lora" / "summary.json").read_text())["status"] == "interrupted"
    assert not (out / "lora").exists()  # the comparison stopped, not just its first run


def test_a_killed_run_resumes_from_its_last_periodic_checkpoint(tmp_path, learning_run_args, assert_trained):
    """SIGKILL (the OOM killer, a scheduler's last word) cannot be handled: no summary, perhaps a torn last line;
    --resume continues from the last periodic checkpoint, and the run ends as if never stopped."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = [*learning_run_args, "--method", "mezo", *SIGNAL_RUN]
    assert main(["train", "--out", str(straight), *args]) == 0
    assert stop_with(signal.SIGKILL, killed, args) == -signal.SIGKILL
    assert not (killed / "summary.json").exists()
    assert torch.load(killed / "checkpoint" / "state.pt", weights_only=True)["loop"]["step"] % 5 == 0

    assert main(["train", "--out", str(killed), "--resume", "--quiet"]) == 0
    assert without_timings(read_jsonl(killed / "metrics.jsonl")) == without_timings(
        read_jsonl(straight / "metrics.jsonl")
    )
    assert_same_trainable_tensors(straight, killed)
    assert_trained(killed)
    assert_same_model(straight, killed)




# -- what ends a run: budgets, an exploding loss, a crash; what chooses the best checkpoint ------------------


@pytest.mark.parametrize("budget", [7, 8])
def test_a_run_stops_at_the_step_that_spends_its_forward_pass_budget(tmp_path, tiny_run_args, capsys, budget):
    """MeZO makes 2 forward passes a step: a budget of 7, or exactly 8, is spent at step 4 (8 passes), before
    the 6 planned; the stop is evaluated, and --quiet prints nothing at all."""
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--method", "mezo", "--max-forward-passes", str(budget),
                 *tiny_run_args]) == 0
    assert capsys.readouterr() == ("", "")
    records = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 3, 4]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["stopped_by"]) == ("completed", "max_forward_passes")
    assert (summary["steps"], summary["planned_steps"], summary["passes"]["forward"]) == (4, 6, 8)
    assert summary["final"]["step"] == 4


def scripted_losses(monkeypatch, loss_at):
    """The loop sees loss_at(step) as each step's loss (the model still trains): divergence by loss needs more
    steps than a tiny run's loss would ever explode in."""
    original_step = Trainer.train_step

    def step_with_scripted_loss(self):
        record = original_step(self)
        return {**record, "loss": loss_at(record["step"])}

    monkeypatch.setattr(Trainer, "train_step", step_with_scripted_loss)


# Steps 1-20 at loss 1, then 9: the mean of the last 10 steps (LOSS_WINDOW) is 1 + 0.8 k at step 20 + k, exactly 5
# (the default divergence_factor times the first 10 steps' mean) at step 25, above it from step 26.
EXPLODING = ["--steps", "30", "--eval-every", "1000", "--method", "lora"]


def test_a_loss_that_explodes_past_the_divergence_factor_stops_the_run(tmp_path, tiny_run_args, monkeypatch):
    scripted_losses(monkeypatch, lambda step: 1.0 if step <= 20 else 9.0)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *tiny_run_args, *EXPLODING]) == 1
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("diverged", 26)
    assert "step 26: the loss is 9, diverged from 1 at the start; training stopped" in summary["warnings"]
    last = read_jsonl(run / "metrics.jsonl")[-1]  # the step that diverged is logged
    assert (last["kind"], last["step"], last["loss"]) == ("train", 26, 9.0)


def test_a_loss_that_explodes_early_is_judged_only_once_the_two_windows_are_apart(tmp_path, tiny_run_args,
                                                                                 monkeypatch):
    """Loss 1 for steps 1-10, then 100: the last 10 steps' mean passes 5× the first 10 steps' from step 11, but
    the two windows overlap until step 2·LOSS_WINDOW, so the run stops at step 20 and not before."""
    scripted_losses(monkeypatch, lambda step: 1.0 if step <= 10 else 100.0)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *tiny_run_args, *EXPLODING]) == 1
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("diverged", 20)


def test_divergence_factor_0_lets_an_exploding_loss_run_on(tmp_path, tiny_run_args, monkeypatch):
    scripted_losses(monkeypatch, lambda step: 1.0 if step <= 20 else 9.0)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *tiny_run_args, *EXPLODING, "--divergence-factor", "0"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("completed", 30)
    assert not any("diverged" in w for w in summary["warnings"])


def test_an_error_inside_a_step_ends_the_run_as_crashed_and_is_raised_unchanged(tmp_path, tiny_run_args,
                                                                              monkeypatch):
    original_step = Trainer.train_step

    def fail_at_step_3(self):
        if self.state.step == 2:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return original_step(self)

    monkeypatch.setattr(Trainer, "train_step", fail_at_step_3)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="illegal memory access"):
        main(["train", "--out", str(run), "--method", "lora", *tiny_run_args])
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["passes"]["forward"]) == ("crashed", 2, 2)
    assert summary["final"]["step"] == 0 and summary["time"]["seconds_per_step"] > 0
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"] == [1, 2]


def test_select_metric_chooses_the_best_checkpoint_by_that_metric(tmp_path, tiny_run_args, monkeypatch):
    """Validation scores scripted so that accuracy would choose step 3 and F1 chooses step 6."""
    scripted = {0: {"accuracy": 0.5, "f1": 0.5}, 3: {"accuracy": 0.7, "f1": 0.4}, 6: {"accuracy": 0.6, "f1": 0.8}}
    evaluating: list[Trainer] = []
    original_evaluate = Trainer.evaluate

    def evaluate(self):
        evaluating[:] = [self]
        return original_evaluate(self)

    def split_result(model, encoded, *args):
        result = evaluate_split(model, encoded, *args)
        trainer = evaluating[0]
        if encoded is trainer.encoded["validation"]:
            result.metrics.update(scripted[trainer.state.step])
        return result

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    monkeypatch.setattr("zoft.train.evaluate_split", split_result)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--method", "lora", "--select-metric", "f1", *tiny_run_args]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["select_metric"] == "validation/f1"
    assert summary["best"]["step"] == 6 and summary["best"]["validation/f1"] == 0.8
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "eval"]
    assert summary["best"]["test/accuracy"] == evals[2]["test/accuracy"]


def test_epochs_become_steps_of_batch_size_times_accumulation_rounded_up():
    config = build_config(overrides={"epochs": "1.1", "batch_size": "8", "grad_accumulation": "2"})
    assert planned_steps(config, train_size=64) == 5  # 1.1 * 64 / 16 = 4.4
    assert planned_steps(build_config(overrides={"epochs": "0.01"}), train_size=64) == 1  # at least one step
    assert planned_steps(build_config(overrides={"epochs": "3", "steps": "7"}), train_size=64) == 7  # steps win




# -- pinned by the mutation check (docs/testing.md): behaviours no test above fails without ------------------------

def test_the_summary_follows_the_selection_metric_and_the_records(tmp_path, tiny_run_args):
    # f1 is not MRPC's main metric (accuracy): the checkpoint is chosen by the metric asked for
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--method", "lora", "--select-metric", "f1", *tiny_run_args]) == 0
    summary = json.loads((run / "summary.json").read_text())
    evals = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "eval"]
    assert summary["select_metric"] == "validation/f1"
    best_f1 = max(r["validation/f1"] for r in evals)
    assert summary["best"]["step"] == next(r["step"] for r in evals if r["validation/f1"] == best_f1)
    assert summary["beats_majority"] is (summary["best"]["test/accuracy"] > summary["majority_baseline"]["accuracy"])
    parameters = summary["parameters"]
    assert 0 < parameters["trainable"] < parameters["total"]
    assert parameters["trainable_percent"] == pytest.approx(100 * parameters["trainable"] / parameters["total"])


def test_epochs_plan_the_steps_over_the_training_split_and_the_accumulated_batch():
    config = build_config(overrides={"epochs": "2.5", "batch_size": "8", "grad_accumulation": "2"})
    assert planned_steps(config, 100) == 16  # 2.5 passes over 100 examples, 16 a step: 15.6, rounded up
    assert planned_steps(build_config(overrides={"epochs": "0.01"}), 10) == 1  # at least one step
    assert planned_steps(build_config(overrides={"steps": "7"}), 100) == 7


def test_a_mezo_run_folder_without_a_trajectory_resumes_without_one(tmp_path, tiny_run_args, train_stopped_at):
    # a run folder from before trajectory.bin, or one whose file was deleted: the run goes on, logging none
    run = tmp_path / "run"
    assert train_stopped_at(3, ["--out", str(run), *tiny_run_args, "--method", "mezo", "--params", "lora"]) == 130
    (run / "trajectory.bin").unlink()
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["steps"]) == ("completed", 6)
    assert not (run / "trajectory.bin").exists()


@pytest.mark.parametrize(("checkpoint_step", "continued"), [(300, True), (301, False)])
def test_a_trajectory_is_continued_when_it_reaches_the_checkpoints_step(tmp_path, checkpoint_step, continued):
    # past step 256, where CPython stops sharing int objects: the steps must compare by value, not identity
    folder = tmp_path / "run"
    folder.mkdir()
    trainer = Trainer(build_config(overrides={"method": "mezo"}), RunFolder(folder), Console(quiet=True))
    trainer.logs_trajectory, trainer.trajectory = True, None  # what setup_method decides for MeZO's SPSA
    trainer.state.step = checkpoint_step
    path = trainer.run.trajectory_path
    trajectory.create(path, device="cpu")
    for step in range(1, 301):
        trajectory.append(path, trajectory.StepRecord(step, 1e-3, (step,), (0.5,)))
    trainer.resume_trajectory()
    assert (trainer.trajectory == path) is continued
    assert bool(trainer.state.warnings) is not continued

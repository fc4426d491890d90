"""The comparison report, built from run folders that the real CLI wrote (tiny random BERT, real MRPC slice)."""

import json
import re
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from zoft.cli import main
from zoft.errors import ZoftError
from zoft.report import write_report
from zoft.report.plots import plot_style
from zoft.report.records import label_runs, load_run
from zoft.report.text import format_bytes, format_count, format_metric, format_seconds

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained_runs() -> dict[tuple[str, ...], Path]:
    """Run folders trained so far in this module, by their extra command-line options."""
    return {}


@pytest.fixture
def train_once(trained_runs, tmp_path_factory, tiny_run_args):
    """Train a tiny run with these options the first time they are asked for; reuse it afterwards."""
    def train(*options: str, exit_code: int = 0) -> Path:
        if options not in trained_runs:
            out = tmp_path_factory.mktemp("run") / "-".join(o.lstrip("-") for o in options)
            assert main(["train", "--out", str(out), *tiny_run_args, *options]) == exit_code
            trained_runs[options] = out
        return trained_runs[options]

    return train


@pytest.fixture
def lora_run(train_once) -> Path:
    return train_once("--method", "lora")


@pytest.fixture
def mezo_run(train_once) -> Path:
    return train_once("--method", "mezo")


@pytest.fixture
def stsb_run(train_once) -> Path:
    return train_once("--method", "lora", "--task", "stsb")


@pytest.fixture
def diverged_run(train_once) -> Path:
    """A MeZO run whose absurd learning rate makes the loss NaN at step 2 (zoft train exits with 1)."""
    return train_once("--method", "mezo", "--lr", "1e30", exit_code=1)


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def eval_records(run: Path) -> list[dict]:
    records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    return [r for r in records if r["kind"] == "eval"]


def section(report: str, title: str) -> str:
    """The text of one '## title' section."""
    return report.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_rows(text: str) -> list[dict[str, str]]:
    """The first Markdown table in `text`, as one {header: cell} per row."""
    lines = text[text.index("\n|") + 1:].split("\n\n", 1)[0].splitlines()
    header, *rows = ([cell.strip() for cell in line.strip("|").split(" | ")] for line in lines)
    return [dict(zip(header, row, strict=True)) for row in rows[1:]]


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("model", "checkpoint", "predictions"))
    return to


def test_comparison_table_holds_the_measured_numbers(tmp_path, lora_run, mezo_run):
    report = write_report([lora_run, mezo_run], tmp_path / "report").read_text()
    rows = {row["Run"]: row for row in table_rows(section(report, "Comparison"))}
    assert set(rows) == {"LoRA", "MeZO (LoRA)"}
    for label, run in (("LoRA", lora_run), ("MeZO (LoRA)", mezo_run)):
        summary, row = summary_of(run), rows[label]
        best = summary["best"]
        best_accuracy = format_metric(best["test/accuracy"], "accuracy")
        assert row["Best test accuracy (step)"] == f"{best_accuracy} ({best['step']})"
        assert row["Majority class"] == format_metric(summary["majority_baseline"]["accuracy"], "accuracy") == "68.38%"
        assert row["Test F1 (best)"] == format_metric(best["test/f1"], "f1")
        assert row["Steps"] == str(summary["steps"]) == "6"
        assert row["Forward passes"] == str(summary["passes"]["forward"])
        assert row["Backward passes"] == str(summary["passes"]["backward"])
        assert row["Status"] == "completed"
        assert row["One-class evals"].endswith("of 3")
    assert rows["MeZO (LoRA)"]["Forward passes"] == "12" and rows["MeZO (LoRA)"]["Backward passes"] == "0"
    assert "# MeZO (LoRA)\nzoft train --out " in report  # the exact command that made the run
    assert "loss+" in section(report, "Training dynamics")


def test_plots_are_valid_pngs_linked_from_the_report(tmp_path, lora_run, mezo_run):
    report = write_report([lora_run, mezo_run], tmp_path / "report")
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", report.read_text())
    assert links == ["metrics.png", "loss.png", "cost.png"]
    for link in links:
        path = report.parent / link
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            width, height = image.size
        assert width >= 800 and height >= 400


def test_runs_shorter_than_one_logging_interval_still_get_a_loss_plot(train_once, tmp_path):
    run = train_once("--method", "mezo", "--log-every", "10")  # 6 steps: no training record
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns about a legend with nothing in it
        report = write_report([run], tmp_path / "report")
    assert (report.parent / "loss.png").read_bytes()[:8] == PNG_SIGNATURE


def test_a_run_that_does_not_beat_the_majority_class_is_flagged(tmp_path, lora_run, mezo_run):
    report = write_report([lora_run, mezo_run], tmp_path / "report").read_text()
    findings = section(report, "Findings")
    for label, run in (("LoRA", lora_run), ("MeZO (LoRA)", mezo_run)):
        summary = summary_of(run)
        flagged = f"{label} did not beat the majority class (68.38%)" in findings
        assert flagged == (summary["beats_majority"] is False)
        one_class = sum(r.get("test/majority_share") == 1.0 for r in eval_records(run))
        collapse = f"{label} predicted one class for every test example at {one_class} of 3"
        assert (collapse in findings) == bool(one_class)


def test_a_run_that_beats_the_majority_class_is_not_flagged(tmp_path, lora_run):
    # the tiny model rarely beats the majority class in 6 steps, so a copy of its run is given a better score
    run = copy_run(lora_run, tmp_path / "better")
    summary = summary_of(run)
    summary["best"]["test/accuracy"] = 0.75
    (run / "summary.json").write_text(json.dumps(summary))
    findings = section(write_report([run], tmp_path / "report").read_text(), "Findings")
    assert "Best test accuracy: LoRA, 75.00%" in findings
    assert "did not beat the majority class" not in findings


def test_runs_of_different_tasks_are_refused(tmp_path, lora_run, stsb_run):
    with pytest.raises(ZoftError, match=r"different tasks: .* is mrpc, .* is stsb"):
        write_report([lora_run, stsb_run], tmp_path / "report")


def test_a_folder_that_is_not_a_run_is_named(tmp_path, lora_run):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ZoftError, match=f"{empty} is not a run folder: it has no config.yaml"):
        write_report([lora_run, empty], tmp_path / "report")
    with pytest.raises(ZoftError, match="no such folder"):
        load_run(tmp_path / "missing")


def test_regression_runs_show_correlations_and_nan_as_n_a(tmp_path, stsb_run):
    assert summary_of(stsb_run)["majority_baseline"]["pearson"] != summary_of(stsb_run)["majority_baseline"]["pearson"]
    report = write_report([stsb_run], tmp_path / "report").read_text()
    row = table_rows(section(report, "Comparison"))[0]
    assert "Best test pearson (step)" in row and "Test spearman (best)" in row
    assert "One-class evals" not in row
    assert row["Constant (mean)"] == "n/a"  # a constant prediction has no correlation


def test_a_run_killed_before_its_summary_is_reported_from_its_metrics(tmp_path, lora_run, mezo_run):
    killed = copy_run(mezo_run, tmp_path / "killed")
    (killed / "summary.json").unlink()
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    (killed / "metrics.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])  # a half-written line
    last_step = max(r["step"] for r in map(json.loads, lines[:5]) if r["kind"] == "train")
    report = write_report([lora_run, killed], tmp_path / "report").read_text()
    row = table_rows(section(report, "Comparison"))[1]
    assert row["Status"] == "no summary.json"
    assert row["Steps"] == str(last_step)
    assert "MeZO (LoRA) left no summary.json" in section(report, "Findings")


def test_a_diverged_run_with_nan_losses_is_reported(tmp_path, lora_run, diverged_run):
    report = write_report([lora_run, diverged_run], tmp_path / "report").read_text()
    row = table_rows(section(report, "Comparison"))[1]
    assert row["Status"] == "diverged" and row["Steps"] == "2 of 6"
    findings = section(report, "Findings")
    assert "MeZO (LoRA) diverged at step 2 of 6." in findings
    assert "MeZO (LoRA): the loss is nan, diverged from" in findings  # the run's own warning, condensed
    assert "nan" not in section(report, "Training dynamics").lower()


def test_gpu_memory_is_preferred_and_not_compared_with_cpu_memory(tmp_path, lora_run, mezo_run):
    gpu = copy_run(mezo_run, tmp_path / "gpu")
    summary = summary_of(gpu)
    summary["memory"]["cuda_max_allocated_bytes"] = 1_500_000_000
    summary["device"] = {"type": "cuda", "name": "NVIDIA H200", "threads": 1}
    (gpu / "summary.json").write_text(json.dumps(summary))
    report = write_report([lora_run, gpu], tmp_path / "report").read_text()
    rows = table_rows(section(report, "Comparison"))
    assert rows[1]["Peak memory"] == "1.50 GB (GPU allocated)"
    assert rows[0]["Peak memory"].endswith("MB (process RSS)")
    findings = section(report, "Findings")
    assert "Peak memory: not compared" in findings
    assert "Time and memory not comparable: the runs ran on different machines: device (LoRA cpu" in findings


def test_runs_of_one_method_are_told_apart_by_their_config(lora_run):
    run = load_run(lora_run)
    other = replace(run, config={**run.config, "method": {**run.config["method"], "lr": 0.5}})
    assert [r.label for r in label_runs([run, other])] == [f"LoRA lr={run.config['method']['lr']:g}", "LoRA lr=0.5"]
    assert [r.label for r in label_runs([run, run])] == [f"LoRA {lora_run.name} #1", f"LoRA {lora_run.name} #2"]


def test_plot_styles_stay_distinct_beyond_the_colours():
    # 16 runs (a settings exploration) once drew two runs in the same colour and marker
    assert len({tuple(plot_style(i).values()) for i in range(56)}) == 56
    assert len({(plot_style(i)["color"], plot_style(i)["linestyle"]) for i in range(32)}) == 32  # the loss plot's lines


def test_numbers_are_formatted_for_people():
    assert format_metric(0.6838235, "accuracy") == "68.38%"
    assert format_metric(float("nan"), "accuracy") == format_metric(None, "f1") == "n/a"
    assert format_metric(0.81234, "pearson") == "0.8123"
    assert format_count(2_114) == "2.11K" and format_count(357_600_000) == "357.6M"
    assert format_bytes(566_943_744) == "567 MB" and format_bytes(12.5e9) == "12.50 GB"
    assert format_seconds(0.0170) == "17.0 ms" and format_seconds(3.98) == "3.98 s"
    assert format_seconds(5580) == "1:33:00" and format_seconds(93) == "1:33"


def test_runs_that_differ_only_in_the_seed_get_mean_and_std(train_once, tmp_path):
    seeds = [train_once("--method", "lora", "--seed", seed) for seed in ("13", "21")]
    other = train_once("--method", "mezo")
    text = write_report([*seeds, other], tmp_path / "report").read_text()
    accuracies = [summary_of(run)["best"]["test/accuracy"] for run in seeds]
    over_seeds = section(text, "Over seeds")
    row = next(line for line in over_seeds.splitlines() if line.startswith("| LoRA"))
    assert "13, 21" in row and "| 2 |" in row
    assert f"{100 * np.mean(accuracies):.2f}% ± {100 * np.std(accuracies):.2f}%" in row
    starts = [eval_records(run)[0]["test/accuracy"] for run in seeds]
    assert table_rows(over_seeds)[0]["Test accuracy at step 0: mean ± std"] == (
        f"{100 * np.mean(starts):.2f}% ± {100 * np.std(starts):.2f}%")
    assert "| MeZO" not in over_seeds  # a lone run has no seeds to average over


def test_seed_groups_of_one_method_are_told_apart_by_their_config(train_once, tmp_path):
    runs = [train_once("--method", "lora", "--seed", seed, "--lr", lr) for lr in ("0.01", "0.001") for seed in "12"]
    over_seeds = section(write_report(runs, tmp_path / "report").read_text(), "Over seeds")
    rows = [line for line in over_seeds.splitlines() if line.startswith("| LoRA")]
    assert [row.split("|")[1].strip() for row in rows] == ["LoRA lr=0.01", "LoRA lr=0.001"]
    best_steps = [", ".join(str(summary_of(run)["best"]["step"]) for run in runs[i : i + 2]) for i in (0, 2)]
    assert all(f"| {steps} |" in row for steps, row in zip(best_steps, rows, strict=True))


def test_seeds_that_differ_in_a_speed_only_key_are_one_setting(train_once, tmp_path):
    runs = [train_once("--method", "mezo", "--seed", "13"), train_once("--method", "mezo", "--seed", "21",
                                                                      "--cache-z", "true")]
    over_seeds = section(write_report(runs, tmp_path / "report").read_text(), "Over seeds")
    assert [row["Seeds"] for row in table_rows(over_seeds)] == ["13, 21"]


def test_no_seed_section_without_repeated_seeds(lora_run, mezo_run, tmp_path):
    assert "## Over seeds" not in write_report([lora_run, mezo_run], tmp_path / "report").read_text()


def test_the_setup_table_shows_what_each_run_trains_and_bolds_the_differences(tmp_path, lora_run, mezo_run):
    report = write_report([lora_run, mezo_run], tmp_path / "report").read_text()
    rows = {row["Run"]: row for row in table_rows(section(report, "Setup"))}
    assert rows["LoRA"]["Head"] == rows["MeZO (LoRA)"]["Head"] == "classifier"  # alike: not bold
    assert rows["LoRA"]["Batch"] == rows["MeZO (LoRA)"]["Batch"] == "8"
    assert rows["LoRA"]["ε"] == "n/a" and rows["MeZO (LoRA)"]["ε"] == "0.001"
    assert rows["LoRA"]["lr"].startswith("**") and rows["MeZO (LoRA)"]["lr"] == "**0.0001**"  # the methods' own
    assert rows["MeZO (LoRA)"]["Trainable set"].startswith("LoRA r8 (default modules), ")
    assert "Not like for like" not in section(report, "Findings")


def test_a_setup_that_differs_beyond_the_method_is_flagged(tmp_path, lora_run, mezo_run):
    prompt = copy_run(mezo_run, tmp_path / "prompt")
    config = yaml.safe_load((prompt / "config.yaml").read_text())
    config["model"].update(head="prompt", template="{s1} {mask}, {s2l}", label_words=["No", "Yes"])
    config["train"]["batch_size"] = 64
    (prompt / "config.yaml").write_text(yaml.safe_dump(config))
    report = write_report([lora_run, prompt], tmp_path / "report").read_text()
    rows = {row["Run"]: row for row in table_rows(section(report, "Setup"))}
    assert (rows["LoRA"]["Head"], rows["MeZO (LoRA)"]["Head"]) == ("**classifier**", "**prompt**")
    assert rows["MeZO (LoRA)"]["Batch"] == "**64**"
    assert "Templates (label words in label order): `{s1} {mask}, {s2l}` (No/Yes)." in section(report, "Setup")
    findings = section(report, "Findings")
    assert ("Not like for like: the runs differ beyond the method in their setup: head (LoRA classifier, MeZO (LoRA) "
            "prompt); template (LoRA None, MeZO (LoRA) {s1} {mask}, {s2l})") in findings
    assert "batch_size (LoRA 8, MeZO (LoRA) 64)" in findings
    assert "lr (" not in findings  # a method's own settings are not a flaw of the comparison


def test_a_best_checkpoint_at_step_0_is_credited_to_the_start_not_the_method(tmp_path, lora_run):
    run = copy_run(lora_run, tmp_path / "unimproved")
    summary = summary_of(run)
    summary["best"] = {**eval_records(run)[0], "step": 0}
    (run / "summary.json").write_text(json.dumps(summary))
    findings = section(write_report([run], tmp_path / "report").read_text(), "Findings")
    assert "(step 0, before any training step)" in findings
    assert ("No training step improved on the starting model (validation chose step 0, the model before training): "
            "LoRA") in findings

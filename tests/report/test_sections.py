"""The report's tables (zoft.report.sections), from synthetic run folders."""

import json

from report.fixture_runs import copy_run, section, summary_of, table_rows, write_run
from zoft.report import write_report


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


def test_a_run_stopped_by_a_budget_shows_it_in_either_summary_format(tmp_path, runs_dir):
    # format 0 stored the budget as prose, format 1 as the config key; the report reads the same from both
    runs = [write_run(runs_dir / f"format-{old}", method="mezo", max_forward_passes=12, stopped_by="max_forward_passes",
                      format_0=old) for old in (True, False)]
    assert "format" not in summary_of(runs[0]) and summary_of(runs[1])["stopped_by"] == "max_forward_passes"
    report = write_report(runs, tmp_path / "report").read_text()
    statuses = [row["Status"] for row in table_rows(section(report, "Comparison"))]
    assert statuses == ["completed (budget of 12 forward passes)"] * 2
    assert [row["Status"] for row in table_rows(section(report, "Runs"))] == statuses


def test_run_folders_are_named_relative_to_the_report(tmp_path, lora_run, mezo_run):
    report = write_report([lora_run, mezo_run], tmp_path / "report").read_text()
    folders = [row["Folder (relative to this report)"] for row in table_rows(section(report, "Runs"))]
    assert folders == ["`../runs/method-lora`", "`../runs/method-mezo`"]


def set_test_accuracy(run, *, best: float, start: float) -> None:
    """Give a run's best checkpoint (summary.json) and its step-0 evaluation (metrics.jsonl) these test accuracies."""
    summary = summary_of(run)
    summary["best"]["test/accuracy"] = best
    (run / "summary.json").write_text(json.dumps(summary))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    next(r for r in records if r["kind"] == "eval" and r["step"] == 0)["test/accuracy"] = start
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_runs_that_differ_only_in_the_seed_get_mean_and_std(runs_dir, tmp_path):
    # numbers set by hand, so that the std is not 0 and population (5.00%) and sample std (7.07%) differ
    seeds = [write_run(runs_dir / f"lora-seed-{seed}", method="lora", seed=seed) for seed in (13, 21)]
    for run, best, start in zip(seeds, (0.70, 0.80), (0.60, 0.64), strict=True):
        set_test_accuracy(run, best=best, start=start)
    other = write_run(runs_dir / "mezo", method="mezo")
    over_seeds = section(write_report([*seeds, other], tmp_path / "report").read_text(), "Over seeds")
    [row] = table_rows(over_seeds)  # a lone run has no seeds to average over: no MeZO row
    assert row["Method"] == "LoRA" and row["Seeds"] == "13, 21" and row["Runs"] == "2"
    assert row["Best test accuracy: mean ± std"] == "75.00% ± 5.00%"
    assert row["Test accuracy at step 0: mean ± std"] == "62.00% ± 2.00%"


def test_seed_groups_of_one_method_are_told_apart_by_their_config(runs_dir, tmp_path):
    runs = [write_run(runs_dir / f"lora-seed-{seed}-lr-{lr}", method="lora", seed=seed, lr=lr)
            for lr in (0.01, 0.001) for seed in (1, 2)]
    over_seeds = section(write_report(runs, tmp_path / "report").read_text(), "Over seeds")
    rows = [line for line in over_seeds.splitlines() if line.startswith("| LoRA")]
    assert [row.split("|")[1].strip() for row in rows] == ["LoRA lr=0.01", "LoRA lr=0.001"]
    best_steps = [", ".join(str(summary_of(run)["best"]["step"]) for run in runs[i : i + 2]) for i in (0, 2)]
    assert all(f"| {steps} |" in row for steps, row in zip(best_steps, rows, strict=True))


def test_seeds_that_differ_in_a_speed_only_key_are_one_setting(runs_dir, tmp_path):
    runs = [write_run(runs_dir / "mezo-13", method="mezo", seed=13),
            write_run(runs_dir / "mezo-21-cache-z", method="mezo", seed=21, cache_z=True)]
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

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


def rewrite_records(run, change) -> None:
    """Apply `change` to each of the run's metrics.jsonl records (a dict, changed in place)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        change(record)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_loss_std_is_the_sample_std_of_the_last_tenth_of_logged_steps(tmp_path, lora_run):
    # 6 logged steps: the last 10% rounds up to 1, and at least 2 are taken: steps 5 and 6, losses 1 and 3.
    # Their sample std is sqrt(2) = 1.4142 (their population std, and the sample std of all six steps: 1.0).
    losses = {5: 1.0, 6: 3.0}
    rewrite_records(lora_run, lambda r: r.update(loss=losses.get(r["step"], 0.5)) if r["kind"] == "train" else None)
    row = table_rows(section(write_report([lora_run], tmp_path / "report").read_text(), "Comparison"))[0]
    assert row["Loss std (last 10%)"] == "1.4142"


def test_projected_gradient_statistics_and_outliers(tmp_path, mezo_run):
    # g = 1 at steps 1-5 and -20 at step 6: mean -2.5, population std sqrt(405/6 - 6.25) = 7.8262, mean |g|
    # 25/6 = 4.1667; |g| = 20 is above 5x the median |g| (1), so 1 step of 6 (16.7%) is an outlier.
    def change(record):
        if record["kind"] == "train":
            record["projected_grad"] = -20.0 if record["step"] == 6 else 1.0
            record["loss_plus"] = 9.0 if record["step"] == 3 else 0.5

    rewrite_records(mezo_run, change)
    dynamics = section(write_report([mezo_run], tmp_path / "report").read_text(), "Training dynamics")
    [row] = table_rows(dynamics[dynamics.index("\n| Run | mean g"):])
    assert row == {"Run": "MeZO (LoRA)", "mean g": "-2.5000", "std g": "7.8262", "mean abs(g)": "4.1667",
                   "outlier steps": "16.7%", "highest loss± (step)": "9.0000 (step 3)"}


def test_a_long_evaluation_table_is_spread_over_the_run(tmp_path, lora_run):
    records = [json.loads(line) for line in (lora_run / "metrics.jsonl").read_text().splitlines()]
    last_eval = [r for r in records if r["kind"] == "eval"][-1]
    records += [{**last_eval, "step": step} for step in range(7, 104)]  # 3 + 97 = 100 evaluations
    (lora_run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    dynamics = section(write_report([lora_run], tmp_path / "report").read_text(), "Training dynamics")
    steps = [int(row["Step"]) for row in table_rows(dynamics)]
    assert len(steps) == 40 and steps[0] == 0 and steps[-1] == 103 and steps == sorted(set(steps))
    assert "40 of 100 evaluation steps shown, spread over the run" in dynamics
    short = section(write_report([write_run(tmp_path / "short")], tmp_path / "short-report").read_text(),
                    "Training dynamics")
    assert [row["Step"] for row in table_rows(short)] == ["0", "3", "6"] and "steps shown" not in short

"""The findings and warnings in words (zoft.report.findings), from synthetic run folders."""

import json

import yaml

from report.fixture_runs import copy_run, eval_records, section, summary_of, table_rows
from zoft.report import write_report


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
    assert "MeZO (LoRA) did not beat the majority class" in findings and "LoRA did not beat" not in findings


def test_a_run_that_beats_the_majority_class_is_not_flagged(tmp_path, lora_run):
    # the tiny model rarely beats the majority class in 6 steps, so a copy of its run is given a better score
    run = copy_run(lora_run, tmp_path / "better")
    summary = summary_of(run)
    summary["best"]["test/accuracy"] = 0.75
    (run / "summary.json").write_text(json.dumps(summary))
    findings = section(write_report([run], tmp_path / "report").read_text(), "Findings")
    assert "Best test accuracy: LoRA, 75.00%" in findings
    assert "did not beat the majority class" not in findings


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


def scored_copy(run, to, accuracy: float):
    copy = copy_run(run, to)
    summary = summary_of(copy)
    summary["best"]["test/accuracy"] = accuracy
    (copy / "summary.json").write_text(json.dumps(summary))
    return copy


def test_the_ranking_names_the_closest_run_behind_the_best_as_runner_up(tmp_path, lora_run, mezo_run):
    """Three runs at 80%, 75% and 70%: the best is 5.00 points ahead of the 75% run, not of the last one."""
    runs = [scored_copy(lora_run, tmp_path / "lora", 0.70), scored_copy(mezo_run, tmp_path / "mezo", 0.80),
            scored_copy(mezo_run, tmp_path / "mezo-again", 0.75)]
    config = yaml.safe_load((runs[2] / "config.yaml").read_text())
    config["train"]["lr"] = 3e-3  # a label of its own
    (runs[2] / "config.yaml").write_text(yaml.safe_dump(config))
    findings = section(write_report(runs, tmp_path / "report").read_text(), "Findings")
    assert ("Best test accuracy: MeZO (LoRA) lr=0.0001, 80.00% (step 6), 5.00 points ahead of MeZO (LoRA) lr=0.003 "
            "(75.00%).") in findings


def with_summary(run, **changes):
    """The run with some of its summary.json's sections changed (a dict section is updated, not replaced)."""
    summary = summary_of(run)
    for key, value in changes.items():
        summary[key] = {**summary[key], **value} if isinstance(value, dict) else value
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_memory_and_time_per_step_are_compared_as_ratios_to_the_lowest(tmp_path, lora_run, mezo_run):
    with_summary(lora_run, memory={"train_peak_rss_bytes": 900_000_000}, time={"seconds_per_step": 0.05})
    with_summary(mezo_run, memory={"train_peak_rss_bytes": 300_000_000}, time={"seconds_per_step": 0.02})
    findings = section(write_report([lora_run, mezo_run], tmp_path / "report").read_text(), "Findings")
    assert "Peak memory (process RSS): lowest MeZO (LoRA), 300 MB; LoRA 900 MB (3.00×)." in findings
    assert "Time per step: fastest MeZO (LoRA), 20.0 ms; LoRA 50.0 ms (2.50×)." in findings


def test_passes_used_and_budgets_that_differ(tmp_path, lora_run, diverged_run):
    findings = section(write_report([lora_run, diverged_run], tmp_path / "report").read_text(), "Findings")
    # LoRA: 6 steps of one forward and one backward, best at its last evaluation (step 6: the scores rise);
    # the diverged MeZO run: 2 steps of two forwards, best at step 0 (its only evaluation).
    best_step = summary_of(lora_run)["best"]["step"]
    assert best_step == 6
    assert ("Passes used: LoRA 6 forward + 6 backward (best after 6 forward); MeZO (LoRA) 4 forward + 0 backward "
            "(best after 0 forward).") in findings
    assert "Budgets differ: LoRA 6 steps, MeZO (LoRA) 2 steps; compare equal steps" in findings
    equal = section(write_report([lora_run], tmp_path / "alone").read_text(), "Findings")
    assert "Budgets differ" not in equal


def test_runs_with_the_same_best_score_are_tied(tmp_path, lora_run, mezo_run):
    for run in (lora_run, mezo_run):
        with_summary(run, best={"test/accuracy": 0.70})
    findings = section(write_report([lora_run, mezo_run], tmp_path / "report").read_text(), "Findings")
    assert "Best test accuracy: LoRA, 70.00% (step 6), tied with MeZO (LoRA)." in findings
    assert "ahead of" not in findings


def test_runs_on_different_data_are_flagged(tmp_path, lora_run, mezo_run):
    config = yaml.safe_load((mezo_run / "config.yaml").read_text())
    config["data"]["train_limit"] = 32
    (mezo_run / "config.yaml").write_text(yaml.safe_dump(config))
    with_summary(mezo_run, data={"sizes": {"train": 31, "validation": 1, "test": 408}})
    findings = section(write_report([lora_run, mezo_run], tmp_path / "report").read_text(), "Findings")
    assert ("Not comparable: the runs differ in their data: train size (LoRA 63, MeZO (LoRA) 31); "
            "train_limit (LoRA 64, MeZO (LoRA) 32).") in findings
    same = section(write_report([lora_run, copy_run(lora_run, tmp_path / "again")], tmp_path / "same").read_text(),
                   "Findings")
    assert "differ in their data" not in same

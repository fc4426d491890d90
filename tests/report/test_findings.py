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

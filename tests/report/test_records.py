"""Reading run folders (zoft.report.records): RunRecord, labels, refusals."""

from dataclasses import replace

import pytest

from report.fixture_runs import write_run
from zoft.errors import ZoftError
from zoft.report import write_report
from zoft.report.records import label_by_difference, label_runs, load_run
from zoft.runs import Status


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


def test_runs_of_one_method_are_told_apart_by_their_config(lora_run):
    run = load_run(lora_run)
    other = replace(run, config={**run.config, "method": {**run.config["method"], "lr": 0.5}})
    assert [r.label for r in label_runs([run, other])] == [f"LoRA lr={run.config['method']['lr']:g}", "LoRA lr=0.5"]
    assert [r.label for r in label_runs([run, run])] == [f"LoRA {lora_run.name} #1", f"LoRA {lora_run.name} #2"]


def test_one_labeller_names_runs_by_the_keys_that_differ(runs_dir):
    runs = [load_run(write_run(runs_dir / name, method=method, seed=seed, lr=lr))
            for name, method, seed, lr in (("a", "lora", 1, 0.01), ("b", "lora", 2, 0.001), ("c", "mezo", 1, None))]
    flat = [lambda run: run.flat_config, lambda run: {"lr": run.flat_config["lr"]}]
    assert label_by_difference(runs, flat[0]) == ["LoRA lr=0.01, seed=1", "LoRA lr=0.001, seed=2", "MeZO (LoRA)"]
    assert label_by_difference(runs, flat[1]) == ["LoRA lr=0.01", "LoRA lr=0.001", "MeZO (LoRA)"]
    assert label_by_difference(runs, flat[0], most_keys=1) == ["LoRA a", "LoRA b", "MeZO (LoRA)"]


def test_a_record_reads_its_summary_or_recovers_from_its_metrics(runs_dir):
    finished = load_run(write_run(runs_dir / "finished", method="mezo"))
    assert finished.summary.status is Status.COMPLETED and finished.status == "completed"
    assert (finished.steps, finished.forward_passes, finished.backward_passes) == (6, 12, 0)
    killed = load_run(write_run(runs_dir / "killed", method="mezo", summary=False))
    assert killed.summary is None and killed.status == "no summary.json"
    assert (killed.steps, killed.forward_passes, killed.backward_passes) == (6, 12, 0)  # from metrics.jsonl
    assert killed.select_metric == "validation/accuracy" and killed.best["step"] == finished.best["step"]

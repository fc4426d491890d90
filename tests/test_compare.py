"""zoft compare through the real CLI on the tiny BERT: identical settings, budgets, a complete report."""

import json

import pytest

from zoft.cli import main
from zoft.compare import forwards_per_step, plan
from zoft.errors import ZoftError


def test_budget_in_forward_passes_sets_each_methods_steps():
    configs = plan(["lora", "mezo-lora"], {"n_perturbations": "2"}, [], budget_forwards=400)
    assert configs["lora"].train.steps == 400
    assert configs["mezo-lora"].train.steps == 100
    assert configs["lora"].train.max_forward_passes == configs["mezo-lora"].train.max_forward_passes == 400
    assert forwards_per_step(configs["mezo-lora"]) == 4


def test_unknown_methods_and_stray_presets_are_errors(tmp_path):
    with pytest.raises(ZoftError, match="unknown method 'sgd'"):
        plan(["sgd"], {}, [])
    preset = tmp_path / "full.yaml"
    preset.write_text("method: {method: full, lr: 1.0e-5}\n")
    with pytest.raises(ZoftError, match="not among the methods"):
        plan(["lora"], {}, [preset])
    assert plan(["full"], {}, [preset])["full"].method.lr == 1e-5


def test_compare_runs_each_method_on_identical_data_and_writes_the_report(tmp_path, tiny_run_args):
    out = tmp_path / "compare"
    args = ["compare", "--out", str(out), "--methods", "lora,mezo-lora", *tiny_run_args]
    assert main(args) == 0
    summaries = {name: json.loads((out / name / "summary.json").read_text()) for name in ("lora", "mezo-lora")}
    assert summaries["lora"]["data"] == summaries["mezo-lora"]["data"]
    assert summaries["lora"]["steps"] == summaries["mezo-lora"]["steps"] == 6
    assert summaries["mezo-lora"]["passes"] == {"forward": 12, "backward": 0}
    report = (out / "report" / "report.md").read_text()
    assert "LoRA" in report and "MeZO (LoRA)" in report
    assert report.count("zoft compare --out") == 1 and "# LoRA, MeZO (LoRA)\nzoft compare --out" in report
    for plot in ("metrics.png", "loss.png", "cost.png"):
        assert (out / "report" / plot).is_file()

    # Run again: both runs are kept as they are, the report is rewritten.
    stamps = {name: (out / name / "summary.json").stat().st_mtime_ns for name in summaries}
    assert main(args) == 0
    assert stamps == {name: (out / name / "summary.json").stat().st_mtime_ns for name in summaries}


def test_a_time_budget_stops_each_method(tmp_path, tiny_run_args):
    out = tmp_path / "compare"
    args = ["compare", "--out", str(out), "--methods", "lora", "--budget-minutes", "0.0001", *tiny_run_args]
    assert main(args) == 0
    summary = json.loads((out / "lora" / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["stopped_by"] == "max_minutes"
    assert summary["final"]["step"] == 1


def test_a_quiet_compare_prints_the_report_path_only(tmp_path, tiny_run_args, capsys):
    out = tmp_path / "compare"
    assert main(["compare", "--out", str(out), "--methods", "lora", "--steps", "1", *tiny_run_args]) == 0
    printed = capsys.readouterr()
    assert printed.out == f"report: {out / 'report' / 'report.md'}\n" and printed.err == ""


def test_compare_on_mrpc_with_minilm_starts_mezo_lora_from_the_swept_preset():
    configs = plan(["lora", "mezo-lora"], {"task": "mrpc", "model": "minilm"}, [])
    mezo = configs["mezo-lora"]
    assert (mezo.model.pooling, mezo.model.pair_encoding, mezo.model.head_init) == ("mean", "separate", "linear-probe")
    assert (mezo.method.lr, mezo.method.eps) == (1e-4, 1e-4)
    assert configs["lora"].model.head_init == "random"  # the preset is mezo-lora's alone

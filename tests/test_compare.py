"""zoft compare through the real CLI on the tiny BERT: identical settings, budgets, a complete report."""

import json
import os
import signal

import pytest
import yaml

from zoft.cli import main
from zoft.compare import forwards_per_step, plan
from zoft.errors import ZoftError
from zoft.train import Trainer


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


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
    # The same rows, not only the same source and sizes: the same data settings, and both runs scored the same
    # validation rows (carved from train by the data seed, so the training rows are the same too) and test rows.
    configs = {name: yaml.safe_load((out / name / "config.yaml").read_text()) for name in summaries}
    assert configs["lora"]["data"] == configs["mezo-lora"]["data"]
    for split in ("validation", "test"):
        rows = {name: [(r["index"], r["label"]) for r in read_jsonl(out / name / "predictions" / f"{split}.jsonl")]
                for name in summaries}
        assert rows["lora"] == rows["mezo-lora"] and len(rows["lora"]) == summaries["lora"]["data"]["sizes"][split]
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


def test_a_time_budget_stops_each_method_at_the_step_that_spends_it(tmp_path, tiny_run_args, one_second_clock):
    out = tmp_path / "compare"
    # 0.075 minutes = 4.5 s of training: 4 one-second steps are under it, the 5th spends it
    args = ["compare", "--out", str(out), "--methods", "lora,mezo-lora", "--budget-minutes", "0.075", *tiny_run_args]
    assert main(args) == 0
    for method in ("lora", "mezo-lora"):
        summary = json.loads((out / method / "summary.json").read_text())
        assert (summary["steps"], summary["planned_steps"], summary["stopped_by"]) == (5, 6, "max_minutes")
        assert summary["time"]["train_seconds"] == 5.0 and summary["final"]["step"] == 5
        evals = [r["step"] for r in read_jsonl(out / method / "metrics.jsonl") if r["kind"] == "eval"]
        assert evals == [0, 3, 5]  # the step that spent the budget is evaluated


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


def test_a_forward_pass_budget_sets_each_methods_steps_and_the_report_goes_to_report_dir(tmp_path, tiny_run_args):
    out, report_dir = tmp_path / "compare", tmp_path / "elsewhere"
    assert main(["compare", "--out", str(out), "--methods", "lora,mezo-lora", "--budget-forwards", "8",
                 "--report-dir", str(report_dir), *tiny_run_args]) == 0
    summaries = {name: json.loads((out / name / "summary.json").read_text()) for name in ("lora", "mezo-lora")}
    # the budget's steps win over --steps 6: 8 steps of 1 forward pass, 4 of 2
    assert [(s["steps"], s["planned_steps"], s["passes"]["forward"]) for s in summaries.values()] == [(8, 8, 8),
                                                                                                   (4, 4, 8)]
    assert all(s["stopped_by"] == "max_forward_passes" for s in summaries.values())
    report = (report_dir / "report.md").read_text()
    assert "Budgets differ: LoRA 8 steps, MeZO (LoRA) 4 steps" in report
    assert (report_dir / "cost.png").is_file() and not (out / "report").exists()


def test_a_stopped_comparison_resumes_its_stopped_method_when_run_again(tmp_path, tiny_run_args, monkeypatch,
                                                                          capsys):
    out = tmp_path / "compare"
    args = ["compare", "--out", str(out), "--methods", "lora", *[a for a in tiny_run_args if a != "--quiet"]]
    original_step = Trainer.train_step

    def press_ctrl_c_at_step_4(self):
        record = original_step(self)
        if record["step"] == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return record

    monkeypatch.setattr(Trainer, "train_step", press_ctrl_c_at_step_4)
    assert main(args) == 130
    monkeypatch.setattr(Trainer, "train_step", original_step)
    stopped_lines = (out / "lora" / "metrics.jsonl").read_text().splitlines()
    capsys.readouterr()
    assert main(args) == 0
    assert f"compare: 1/1 lora → {out / 'lora'} (resuming)" in capsys.readouterr().err
    lines = (out / "lora" / "metrics.jsonl").read_text().splitlines()
    assert lines[:len(stopped_lines)] == stopped_lines  # continued, timings and all, not trained again
    assert [json.loads(line)["step"] for line in lines if '"kind": "train"' in line] == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "lora" / "summary.json").read_text())["status"] == "completed"


def test_a_comparison_over_runs_of_another_config_is_refused_unless_overwrite(tmp_path, tiny_run_args, capsys):
    out = tmp_path / "compare"
    args = ["compare", "--out", str(out), "--methods", "lora", *tiny_run_args]
    assert main(args) == 0
    before = (out / "lora" / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main([*args, "--lr", "1e-3"]) == 2
    assert capsys.readouterr().err == (f"zoft: error: {out / 'lora'} holds a run with another config; pass "
                                       "--overwrite to replace it\n")
    assert (out / "lora" / "metrics.jsonl").read_bytes() == before
    assert main([*args, "--lr", "1e-3", "--overwrite"]) == 0
    assert "lr: 0.001" in (out / "lora" / "config.yaml").read_text()
    assert json.loads((out / "lora" / "summary.json").read_text())["status"] == "completed"

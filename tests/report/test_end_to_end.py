"""The one report test on runs that the real CLI trained (tiny random BERT, real MRPC slice): the report reads
what `zoft train` writes. Every other report test reads synthetic folders (tests/report/fixture_runs.py)."""

import pytest

from report.fixture_runs import eval_records, section, summary_of, table_rows
from zoft.cli import main
from zoft.report import write_report
from zoft.report.text import format_metric


@pytest.fixture(scope="module")
def trained_runs() -> dict[str, object]:
    return {}


@pytest.fixture
def train(trained_runs, tmp_path_factory, tiny_run_args):
    def run(method: str):
        if method not in trained_runs:
            out = tmp_path_factory.mktemp("run") / f"method-{method}"
            assert main(["train", "--out", str(out), *tiny_run_args, "--method", method]) == 0
            trained_runs[method] = out
        return trained_runs[method]

    return run


@pytest.fixture
def lora_run(train):
    return train("lora")


@pytest.fixture
def mezo_run(train):
    return train("mezo")


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
        evals = eval_records(run)
        one_class = sum(record["test/majority_share"] == 1.0 for record in evals)
        assert len(evals) == 3 and row["One-class evals"] == f"{one_class} of 3"
    assert rows["MeZO (LoRA)"]["Forward passes"] == "12" and rows["MeZO (LoRA)"]["Backward passes"] == "0"
    assert "# MeZO (LoRA)\nzoft train --out " in report  # the exact command that made the run
    assert "loss+" in section(report, "Training dynamics")

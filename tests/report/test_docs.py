"""The committed example report regenerates from its committed run files, byte for byte but the commit line."""

import shutil
from pathlib import Path

from zoft.report import write_report

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "example-report"


def without_commit_line(report: str) -> list[str]:
    return [line for line in report.splitlines() if not line.startswith("- **Report**: written by zoft")]


def test_docs_example_report_regenerates_from_its_run_files(tmp_path):
    # the runs beside the report, as in docs/example-report: folders read relative to the report
    shutil.copytree(EXAMPLE / "runs", tmp_path / "runs")
    report = write_report([tmp_path / "runs" / "lora", tmp_path / "runs" / "mezo-lora"], tmp_path)
    committed = (EXAMPLE / "report.md").read_text()
    assert without_commit_line(report.read_text()) == without_commit_line(committed)
    assert len(without_commit_line(committed)) == len(committed.splitlines()) - 1
    for plot in ("metrics.png", "loss.png", "cost.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

"""The report's PNG plots and the sweep's heat map (zoft.report.plots)."""

import re
import warnings
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from PIL import Image

from report.fixture_runs import write_run
from zoft.report import write_report
from zoft.report.plots import plot_style

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def test_runs_shorter_than_one_logging_interval_still_get_a_loss_plot(runs_dir, tmp_path):
    run = write_run(runs_dir / "method-mezo-log-every-10", method="mezo", log_every=10)  # 6 steps: no train record
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns about a legend with nothing in it
        report = write_report([run], tmp_path / "report")
    assert (report.parent / "loss.png").read_bytes()[:8] == PNG_SIGNATURE


def test_plot_styles_stay_distinct_beyond_the_colours():
    # 16 runs (a settings exploration) once drew two runs in the same colour and marker
    assert len({tuple(plot_style(i).values()) for i in range(56)}) == 56
    assert len({(plot_style(i)["color"], plot_style(i)["linestyle"]) for i in range(32)}) == 32  # the loss plot's lines


HOLLOW = "hollow: one class predicted for all test examples"
BAND = "shaded: MeZO's loss+ … loss−"


@pytest.fixture
def drawn(monkeypatch) -> dict[str, Figure]:
    """The figures the report saves, by file name (the last one of each name)."""
    figures = {}
    save = Figure.savefig

    def keep(figure, path, **options):
        figures[Path(path).name] = figure
        save(figure, path, **options)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def legend_texts(figure: Figure) -> list[str]:
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def test_the_plots_explain_the_marks_they_draw_and_no_others(tmp_path, lora_run, mezo_run, stsb_run, drawn):
    write_report([lora_run], tmp_path / "lora")  # step 0 predicts one class: a hollow marker; no MeZO band
    assert HOLLOW in legend_texts(drawn["metrics.png"])
    assert BAND not in drawn["loss.png"].axes[0].get_title()
    write_report([lora_run, mezo_run], tmp_path / "both")
    assert BAND in drawn["loss.png"].axes[0].get_title()
    write_report([stsb_run], tmp_path / "stsb")  # a regression task has no class to collapse to
    assert HOLLOW not in legend_texts(drawn["metrics.png"])

"""The comparison report: Markdown tables, PNG plots and generated findings, from run folders alone.

It reads only what `zoft train` leaves behind (config.yaml, metrics.jsonl, summary.json), so it works on
runs made yesterday, on another machine or by a sweep; nothing here loads a model or re-evaluates one.

    records   the run folders as read (RunRecord), their labels and seed groups
    stats     measurements derived from the records
    text      numbers and Markdown tables for people
    sections  the Markdown sections about the runs (header, setup, comparison, seeds)
    dynamics  the sections about training as it went, and the plots' section
    findings  the findings and warnings in words
    plots     the PNG plots (and the sweep's heat map)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from zoft.errors import ZoftError
from zoft.report.dynamics import dynamics_section, plots_section
from zoft.report.findings import findings_section
from zoft.report.plots import PLOTS
from zoft.report.records import check_same_task, label_runs, load_run
from zoft.report.sections import comparison_section, header_section, seeds_section, setup_section


def write_report(run_dirs: Sequence[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Write report.md and its PNG plots into the folder `out`; returns the path of report.md."""
    if not run_dirs:
        raise ZoftError("a report needs at least one run folder")
    runs = label_runs([load_run(path) for path in run_dirs])
    check_same_task(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = {key: f"{key}.png" for key in PLOTS}
    methods = " vs ".join(run.label for run in runs) if len(runs) <= 4 else f"{len(runs)} runs"
    title = title or f"{runs[0].task.upper()}: {methods}"
    # The text first: its header reads the commit, which must not count the plots about to be rewritten (a
    # report kept in git, like docs/example-report) as uncommitted changes.
    sections = [header_section(runs, title, out), findings_section(runs), setup_section(runs), comparison_section(runs),
                seeds_section(runs), dynamics_section(runs), plots_section(names)]
    for key, plot in PLOTS.items():
        plot(runs, out / names[key])
    report = out / "report.md"
    report.write_text("\n\n".join(section for section in sections if section) + "\n")
    return report

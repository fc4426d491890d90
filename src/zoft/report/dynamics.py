"""The report's Markdown sections about training as it went: evaluations, loss, MeZO's perturbed losses; plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from zoft.measure import LOSS_WINDOW
from zoft.report.records import Record, RunRecord
from zoft.report.stats import OUTLIER_FACTOR, highest_perturbed_loss, mean_loss, projected_grad_stats
from zoft.report.text import format_int, format_loss, format_metric, markdown_table, metric_title, spread

MEZO_TABLE_ROWS = 8
MAX_DYNAMICS_ROWS = 40
ONE_CLASS_MARK = "†"
PLOT_CAPTIONS = {
    "metrics": "Test metric against steps, training time and forward passes",
    "loss": "Training loss (smoothed; raw trace faint; MeZO's loss+ / loss− band shaded)",
    "cost": "Peak memory and time per step",
}


def dynamics_section(runs: Sequence[RunRecord]) -> str:
    metric = runs[0].main_metric
    parts = ["## Training dynamics", "", f"### Test / validation {metric_title(metric)} at each evaluation", "",
             _evaluations_table(runs, metric), "", "### Loss", "",
             markdown_table(["Run", f"Loss at start (first {LOSS_WINDOW} logged steps)",
                             f"Loss at end (last {LOSS_WINDOW})", "Logged steps"],
                            [[run.label, format_loss(mean_loss(run.train[:LOSS_WINDOW])),
                              format_loss(mean_loss(run.train[-LOSS_WINDOW:])), format_int(len(run.train))]
                             for run in runs])]
    mezo_runs = [run for run in runs if run.is_mezo and run.train]
    if mezo_runs:
        parts += ["", "### MeZO: loss at +εz and −εz", ""]
        for run in mezo_runs:
            parts += [f"{run.label}:", "", _mezo_loss_table(run), ""]
        parts += [_projected_grad_table(mezo_runs), "",
                  f"- The projected gradient g = (loss+ − loss−) / 2ε is the step's directional derivative along the "
                  f"random direction z. Outliers: steps with |g| above {OUTLIER_FACTOR:g}× the run's median |g|."]
    return "\n".join(parts)


def _evaluations_table(runs: Sequence[RunRecord], metric: str) -> str:
    steps = sorted({r["step"] for run in runs for r in run.evals})
    shown = [steps[i] for i in spread(len(steps), MAX_DYNAMICS_ROWS)]
    by_step = [{r["step"]: r for r in run.evals} for run in runs]
    rows = [[str(step), *(_evaluation_cell(records.get(step), metric) for records in by_step)] for step in shown]
    notes = [f"Cells: test / validation. {ONE_CLASS_MARK}: the model predicted one class for every test example."]
    if len(shown) < len(steps):
        notes.append(f"{len(shown)} of {len(steps)} evaluation steps shown, spread over the run; metrics.jsonl "
                     "holds all.")
    return "\n".join([markdown_table(["Step", *(run.label for run in runs)], rows), "",
                      *(f"- {note}" for note in notes)])


def _evaluation_cell(record: Record | None, metric: str) -> str:
    if record is None:
        return ""
    cell = f"{format_metric(record.get(f'test/{metric}'), metric)} / " \
           f"{format_metric(record.get(f'validation/{metric}'), metric)}"
    return cell + (f" {ONE_CLASS_MARK}" if record.get("test/majority_share") == 1.0 else "")


def _mezo_loss_table(run: RunRecord) -> str:
    chosen = [run.train[i] for i in spread(len(run.train), MEZO_TABLE_ROWS)]
    rows = [[str(r["step"]), format_loss(r.get("loss_plus")), format_loss(r.get("loss_minus")),
             format_loss(r.get("projected_grad"))] for r in chosen]
    return markdown_table(["Step", "loss+", "loss−", "projected grad"], rows)


def _projected_grad_table(runs: Sequence[RunRecord]) -> str:
    rows = []
    for run in runs:
        stats = projected_grad_stats(run)
        peak, peak_step = highest_perturbed_loss(run)
        rows.append([run.label, format_loss(stats["mean"]), format_loss(stats["std"]), format_loss(stats["mean_abs"]),
                     "n/a" if stats["outlier_share"] is None else f"{100 * stats['outlier_share']:.1f}%",
                     "n/a" if peak is None else f"{format_loss(peak)} (step {peak_step})"])
    return markdown_table(["Run", "mean g", "std g", "mean abs(g)", "outlier steps", "highest loss± (step)"], rows)


def plots_section(names: dict[str, Path | str]) -> str:
    return "\n\n".join(["## Plots", *(f"![{PLOT_CAPTIONS[key]}]({name})" for key, name in names.items())])

"""zoft sweep through the real CLI on the tiny BERT: the table, the heat map, best.yaml, continuing."""

import csv
import json
import os
import shutil
import signal
import sys
import threading
import time

import pytest
import yaml
from PIL import Image

from zoft.cli import main
from zoft.compare import plan
from zoft.errors import ZoftError
from zoft.report.records import load_run
from zoft.runs import Status
from zoft.sweep import (
    SweepResult,
    finish,
    grid_points,
    parse_grid,
    point_name,
    rank,
    write_heat_map,
    write_table,
)


def test_parse_grid_and_points():
    grid = parse_grid(["lr=1e-5,1e-4", "eps=1e-3"])
    assert grid == {"lr": ["1e-5", "1e-4"], "eps": ["1e-3"]}
    assert grid_points(grid) == [{"lr": "1e-5", "eps": "1e-3"}, {"lr": "1e-4", "eps": "1e-3"}]
    for bad in (["lr"], ["lr="], ["nosuch=1,2"], ["lr=1", "lr=2"]):
        with pytest.raises(ZoftError):
            parse_grid(bad)


def test_ties_go_to_the_steadier_run(tmp_path):
    def result(name: str, status: str, score: float | None, final: float | None) -> SweepResult:
        return SweepResult(point={"lr": name}, folder=tmp_path / name, status=status,
                           select_metric="validation/accuracy", score=score, best_step=0, final_score=final, steps=9)

    results = [result("a", "completed", 0.7, 0.6), result("b", "diverged", None, None),
               result("c", "completed", 0.7, 0.7), result("d", "completed", 0.8, 0.5)]
    assert [r.point["lr"] for r in rank(results)] == ["d", "c", "a", "b"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_run_args):
    """Three points whose scores differ: lr 1e-2 learns (see LEARNING_LR), 1e-4 keeps its step-0 model, 1e30
    diverges."""
    out = tmp_path_factory.mktemp("sweep")
    args = ["sweep", "--out", str(out), *tiny_run_args, "--method", "mezo-lora",
            "--grid", "lr=1e-4,1e-2,1e30", "eps=1e-3"]
    assert main(args) == 0
    return out, args


def test_a_quiet_sweep_prints_its_result_paths_only(tmp_path, tiny_bert, real_glue, capsys):
    assert main(["sweep", "--out", str(tmp_path), "--model", str(tiny_bert), "--data-dir", str(real_glue), "--task",
                 "mrpc", "--train-limit", "64", "--validation-fraction", "0.02", "--steps", "1", "--eval-every", "1",
                 "--batch-size", "8", "--max-length", "64", "--quiet", "--method", "mezo-lora",
                 "--grid", "lr=1e-4"]) == 0
    printed = capsys.readouterr()
    assert printed.out == f"sweep table: {tmp_path / 'sweep.md'}\nbest settings: {tmp_path / 'best.yaml'}\n"
    assert printed.err == ""


def test_the_sweep_ranks_its_points_and_writes_its_table_heat_map_and_best(swept, assert_trained):
    out, _ = swept
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(row["lr"], row["status"]) for row in rows] == [("1e-2", "completed"), ("1e-4", "completed"),
                                                            ("1e30", "diverged")]
    scores = [float(row["validation/accuracy"]) for row in rows[:2]]
    assert scores[0] > scores[1]  # a real order, not a tie that any ranking passes
    for row in rows[:2]:  # each score is the best validation value of its run, never a test value
        run = load_run(out / row["run"])
        assert float(row["validation/accuracy"]) == pytest.approx(run.summary.best["validation/accuracy"],
                                                                  abs=5e-5)
    assert_trained(out / rows[0]["run"])
    assert (out / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "validation split" in (out / "sweep.md").read_text()

    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["method"]["method"] == "mezo" and best["method"]["params"] == "lora"
    assert best["method"]["lr"] == 1e-2 and best["method"]["eps"] == 1e-3


def test_compare_accepts_the_best_point_as_its_preset(swept):
    out, _ = swept
    configs = plan(["lora", "mezo-lora"], {"task": "mrpc"}, [out / "best.yaml"])
    assert configs["mezo-lora"].method.lr == 1e-2
    assert configs["lora"].method.method == "lora"


def test_a_sweep_run_again_continues_where_it_stopped(swept, tmp_path, capsys):
    out, args = swept
    again = shutil.copytree(out, tmp_path / "sweep")
    runs = {lr: again / "runs" / f"lr={lr},eps=1e-3" for lr in ("1e-4", "1e-2", "1e30")}
    # the point that won keeps a summary edited to rank last of the completed ones: kept, not trained again
    summary = json.loads((runs["1e-2"] / "summary.json").read_text())
    summary["best"]["validation/accuracy"] = 0.01
    (runs["1e-2"] / "summary.json").write_text(json.dumps(summary))
    # a point killed after its last checkpoint: its checkpoint is there, its summary.json is not
    resumed = runs["1e-4"]
    finished_summary = json.loads((resumed / "summary.json").read_text())
    (resumed / "summary.json").unlink()
    lines_before = (resumed / "metrics.jsonl").read_text().splitlines()
    kept = {lr: (run / "summary.json").stat().st_mtime_ns for lr, run in runs.items() if run != resumed}
    capsys.readouterr()

    argv = [str(again) if a == str(out) else a for a in args if a != "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"sweep: 1/3 lr=1e-4,eps=1e-3 → {resumed} (resuming)" in err
    assert f"sweep: 2/3 lr=1e-2,eps=1e-3: {runs['1e-2']} already holds this run; keeping it" in err
    assert f"sweep: 3/3 lr=1e30,eps=1e-3: {runs['1e30']} already holds this run; keeping it" in err
    assert {lr: (run / "summary.json").stat().st_mtime_ns for lr, run in runs.items() if run != resumed} == kept
    assert (resumed / "metrics.jsonl").read_text().splitlines()[:len(lines_before)] == lines_before
    summary = json.loads((resumed / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["best"] == finished_summary["best"]

    rows = list(csv.DictReader((again / "sweep.csv").open()))
    assert [row["lr"] for row in rows] == ["1e-4", "1e-2", "1e30"]  # ranked by the summaries as they now are
    assert yaml.safe_load((again / "best.yaml").read_text())["method"]["lr"] == 1e-4


def sweep_results(tmp_path) -> list[SweepResult]:
    def result(lr: str, eps: str, status: Status, score: float | None) -> SweepResult:
        return SweepResult(point={"lr": lr, "eps": eps}, folder=tmp_path / "runs" / f"lr={lr},eps={eps}",
                           status=status, select_metric="validation/accuracy", score=score, best_step=3,
                           final_score=score, steps=6)

    return [result("1e-4", "1e-3", Status.COMPLETED, 0.71), result("1e-4", "1e-2", Status.COMPLETED, 0.7),
            result("1e30", "1e-3", Status.DIVERGED, None), result("1e30", "1e-2", Status.DIVERGED, None)]


def test_the_sweep_table_is_the_report_s_markdown_table(tmp_path):
    write_table(sweep_results(tmp_path), tmp_path)
    lines = (tmp_path / "sweep.md").read_text().splitlines()
    assert lines[4:7] == ["| lr | eps | validation/accuracy | best step | final | steps | status | run |",
                          "|:---|:---|:---|:---|:---|:---|:---|:---|",
                          "| 1e-4 | 1e-3 | 0.7100 | 3 | 0.7100 | 6 | completed | runs/lr=1e-4,eps=1e-3 |"]
    assert lines[-1] == "| 1e30 | 1e-2 | diverged | 3 |  | 6 | diverged | runs/lr=1e30,eps=1e-2 |"
    assert (tmp_path / "sweep.csv").read_text().splitlines()[3].endswith(',diverged,"runs/lr=1e30,eps=1e-3"')


def test_the_sweep_heat_map_is_drawn_without_pyplot(tmp_path):
    path = write_heat_map(sweep_results(tmp_path), {"lr": ["1e-4", "1e30"], "eps": ["1e-3", "1e-2"]}, tmp_path)
    assert path == tmp_path / "heatmap.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.size[0] > image.size[1] > 200
    assert "matplotlib.pyplot" not in sys.modules  # no global figure state: nothing in zoft imports pyplot


def test_a_sweep_with_no_completed_point_writes_its_table_to_report_dir_and_no_best(tmp_path, tiny_bert, real_glue,
                                                                                    capsys):
    out, tables = tmp_path / "sweep", tmp_path / "tables"
    assert main(["sweep", "--out", str(out), "--report-dir", str(tables), "--model", str(tiny_bert), "--data-dir",
                 str(real_glue), "--task", "mrpc", "--train-limit", "64", "--validation-fraction", "0.02", "--steps",
                 "2", "--eval-every", "2", "--batch-size", "8", "--max-length", "64", "--quiet", "--method",
                 "mezo-lora", "--grid", "lr=1e30"]) == 0
    assert capsys.readouterr().out == f"sweep table: {tables / 'sweep.md'}\nno grid point completed: no best settings\n"
    rows = list(csv.DictReader((tables / "sweep.csv").open()))
    assert [(row["lr"], row["status"]) for row in rows] == [("1e30", "diverged")]
    assert sorted(p.name for p in tables.iterdir()) == ["sweep.csv", "sweep.md"]  # one key: no heat map
    assert sorted(p.name for p in out.iterdir()) == ["runs"]


@pytest.mark.parametrize("keys", [1, 2, 3])
def test_only_a_grid_of_two_keys_gets_a_heat_map(tmp_path, keys):
    names = ["lr", "eps", "batch_size"][:keys]
    values = {"lr": ["1e-4", "1e30"], "eps": ["1e-3"], "batch_size": ["8"]}
    grid = {name: values[name] for name in names}
    results = [SweepResult(point=point, folder=tmp_path / "runs" / point_name(point), status=Status.DIVERGED,
                           select_metric="validation/accuracy", score=None, best_step=None, final_score=None, steps=1)
               for point in grid_points(grid)]
    assert finish(results, grid, tmp_path / "out") is None
    assert (tmp_path / "out" / "heatmap.png").is_file() == (keys == 2)
    assert (tmp_path / "out" / "sweep.md").is_file()


def test_a_sweep_of_jobs_stopped_by_a_signal_continues_and_marks_its_failed_point(tmp_path, tiny_run_args, capsys):
    """--jobs 2: each point a child `zoft train` with its log; SIGTERM reaches the one training, which checkpoints;
    run again, it resumes and finishes, while the other fails (its target module does not exist), named with its
    log, and ranks last, crashed."""
    out = tmp_path / "sweep"
    args = ["sweep", "--out", str(out), *[a for a in tiny_run_args if a != "--quiet"], "--steps", "200",
            "--eval-every", "200", "--test-limit", "16", "--method", "mezo-lora", "--jobs", "2",
            "--grid", "target_modules=query,nosuch"]
    good, bad = out / "runs" / "target_modules=query", out / "runs" / "target_modules=nosuch"
    returned = threading.Event()

    def stop_once_training() -> None:
        deadline = time.monotonic() + 120
        while not ((good / "metrics.jsonl").is_file() and '"kind": "train"' in (good / "metrics.jsonl").read_text()):
            if time.monotonic() > deadline or returned.is_set():
                return
            time.sleep(0.05)
        if not returned.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_once_training, daemon=True)
    stopper.start()
    try:
        assert main(args) == 128 + signal.SIGTERM
    finally:
        returned.set()
        stopper.join()
    err = capsys.readouterr().err  # the failing point may have failed already, or been stopped while it loaded
    assert "sweep: SIGTERM received: passed to the" in err and "run the same command again" in err
    summary = json.loads((good / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 0 < summary["steps"] < 200 and (good / "checkpoint").is_dir()
    assert summary["device"]["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)  # the cores split
    assert "SIGTERM received: stopping after this step" in (good / "train.log").read_text()
    lines_before = (good / "metrics.jsonl").read_text().splitlines()

    assert main(args) == 1
    err = capsys.readouterr().err
    assert (f"zoft: error: sweep: 2/2 target_modules=nosuch failed (exit status 2; its log: {bad / 'train.log'}): "
            "zoft: error: target_modules ['nosuch']: not found in the model") in err
    assert f"sweep: 1/2 target_modules=query → {good} (resuming)" in err
    assert "sweep: 1/2 target_modules=query: completed" in err
    assert err.splitlines()[-1] == ("zoft: error: sweep: 1 of 2 run(s) failed: target_modules=nosuch "
                                    f"(log: {bad / 'train.log'})")
    summary = json.loads((good / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 200
    assert (good / "metrics.jsonl").read_text().splitlines()[:len(lines_before)] == lines_before
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(row["target_modules"], row["status"]) for row in rows] == [("query", "completed"), ("nosuch", "crashed")]

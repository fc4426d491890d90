"""The `zoft` command in-process: every user mistake is one `zoft: error:` line and exit status 2."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from report.fixture_runs import section, table_rows, write_run
from zoft.cli import main
from zoft.train import Interrupted


@pytest.fixture(autouse=True)
def no_glue_dir(monkeypatch, tmp_path):
    """No GLUE_DIR from the environment, and a scratch working folder (default run folders go there)."""
    monkeypatch.delenv("GLUE_DIR", raising=False)
    monkeypatch.chdir(tmp_path)



def run_error(capsys, argv: list[str]) -> str:
    """Run `zoft argv`, expect exit status 2 and a single error line; return that line."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("zoft: error: ")
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


_TRAINED: dict[str, Path] = {}


@pytest.fixture
def trained_run(tiny_run_args, tmp_path_factory, tmp_path, capsys) -> Path:
    """tmp_path/run holding a finished 6-step run of the tiny BERT (trained once, copied for each test)."""
    if "run" not in _TRAINED:
        source = tmp_path_factory.mktemp("trained") / "run"
        assert main(["train", *tiny_run_args, "--out", str(source)]) == 0, capsys.readouterr().err
        capsys.readouterr()
        _TRAINED["run"] = source
    target = tmp_path / "run"
    shutil.copytree(_TRAINED["run"], target)
    return target


# -- help --------------------------------------------------------------------------------------------------


def test_train_help(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--lr", "--data-dir", "--method", "--out", "--overwrite", "--resume", "--config"):
        assert option in out


def test_python_dash_m_zoft():
    result = subprocess.run([sys.executable, "-m", "zoft", "train", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "--lr" in result.stdout and "--data-dir" in result.stdout


# -- usage and config errors -------------------------------------------------------------------------------


def test_unknown_task(capsys, real_glue):
    line = run_error(capsys, ["train", "--task", "nosuch", "--data-dir", str(real_glue), "--out", "r"])
    assert "'nosuch'" in line and "mrpc" in line


def test_unknown_config_key(capsys):
    line = run_error(capsys, ["train", "nosuch=3"])
    assert "'nosuch'" in line and "known keys" in line and "lr" in line


def test_unknown_option(capsys):
    line = run_error(capsys, ["train", "--nosuch", "3"])
    assert "--nosuch" in line


def test_option_without_value(capsys):
    line = run_error(capsys, ["train", "--lr"])
    assert "--lr" in line


def test_missing_command(capsys):
    run_error(capsys, [])


def test_override_without_equals(capsys):
    line = run_error(capsys, ["train", "lr"])
    assert "KEY=VALUE" in line and "'lr'" in line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--lr", "abc"], "'lr'"),
        (["--steps", "1.5"], "'steps'"),
        (["--method", "sgd"], "lora, full, mezo"),
        (["--lr", "-1"], "must be > 0"),
        (["--validation-fraction", "1.5"], "'validation_fraction'"),
        (["--params", "all"], "'params'"),
    ],
)
def test_bad_value(capsys, argv, expected):
    line = run_error(capsys, ["train", *argv])
    assert expected in line


def test_bad_config_file(capsys, tmp_path):
    (tmp_path / "c.yaml").write_text("lr: [\n")
    line = run_error(capsys, ["train", "--config", str(tmp_path / "c.yaml")])
    assert "c.yaml" in line


# -- data and model errors ---------------------------------------------------------------------------------


def test_missing_glue_folder(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = run_error(capsys, ["train", "--data-dir", str(empty), "--out", "r"])
    assert str(empty / "MRPC") in line
    assert not (tmp_path / "r").exists()


def test_malformed_mrpc_row(capsys, tmp_path):
    folder = tmp_path / "glue" / "MRPC"
    folder.mkdir(parents=True)
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    good = "1\t1\t2\tone sentence\tanother sentence\n"
    (folder / "train.tsv").write_text(header + good + good + "0\t3\t4\ta short row\n")
    (folder / "dev.tsv").write_text(header + good)
    line = run_error(capsys, ["train", "--data-dir", str(tmp_path / "glue"), "--out", "r"])
    assert "train.tsv" in line
    assert "line 4" in line
    assert "expected 5" in line


def test_unknown_model_folder(capsys, real_glue):
    line = run_error(capsys, ["train", "--model", "./no-such-model", "--data-dir", str(real_glue),
                              "--train-limit", "16", "--out", "r"])
    assert "no-such-model" in line and "does not exist" in line


def test_model_folder_without_config(capsys, real_glue, tmp_path):
    (tmp_path / "not-a-model").mkdir()
    line = run_error(capsys, ["train", "--model", str(tmp_path / "not-a-model"), "--data-dir", str(real_glue),
                              "--train-limit", "16", "--out", "r"])
    assert "not-a-model" in line and "config.json" in line


def test_missing_target_modules(capsys, tiny_run_args, tmp_path):
    line = run_error(capsys, ["train", *tiny_run_args, "--method", "lora", "--target-modules", "nosuch",
                              "--out", str(tmp_path / "r")])
    assert "nosuch" in line
    assert "query" in line and "value" in line
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_mezo_params_matching_nothing(capsys, tiny_run_args, tmp_path):
    line = run_error(capsys, ["train", *tiny_run_args, "--method", "mezo", "--params", "^nothing$",
                              "--out", str(tmp_path / "r")])
    assert "'^nothing$'" in line


# -- run folders -------------------------------------------------------------------------------------------


def test_training_writes_a_run(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "model", "predictions", "checkpoint"} <= names


def test_a_folder_holding_a_run_is_refused(capsys, trained_run, tiny_run_args):
    before = snapshot(trained_run)
    line = run_error(capsys, ["train", *tiny_run_args, "--out", str(trained_run)])
    assert str(trained_run) in line and "--overwrite" in line and "--resume" in line
    assert snapshot(trained_run) == before


def test_overwrite_replaces_the_run_but_keeps_user_files(capsys, trained_run, tiny_run_args):
    (trained_run / "notes.txt").write_text("my notes")
    (trained_run / "model" / "stale.bin").write_bytes(b"stale")
    with (trained_run / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"kind": "stale", "step": 999}\n')
    assert main(["train", *tiny_run_args, "--lr", "1e-3", "--out", str(trained_run), "--overwrite"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert (trained_run / "notes.txt").read_text() == "my notes"
    assert not (trained_run / "model" / "stale.bin").exists()
    assert "stale" not in (trained_run / "metrics.jsonl").read_text()
    assert "lr: 0.001" in (trained_run / "config.yaml").read_text()


def test_resume_without_checkpoint(capsys, trained_run):
    shutil.rmtree(trained_run / "checkpoint")
    before = snapshot(trained_run)
    line = run_error(capsys, ["train", "--out", str(trained_run), "--resume"])
    assert "checkpoint" in line and str(trained_run) in line
    assert snapshot(trained_run) == before


def test_resume_of_an_empty_folder(capsys, tmp_path):
    (tmp_path / "nothing").mkdir()
    line = run_error(capsys, ["train", "--out", str(tmp_path / "nothing"), "--resume"])
    assert "nothing" in line


def test_resume_needs_out(capsys):
    line = run_error(capsys, ["train", "--resume"])
    assert "--out" in line


@pytest.mark.parametrize("extra", [["--lr", "1e-3"], ["steps=10"]])
def test_resume_with_config_options(capsys, trained_run, extra):
    before = snapshot(trained_run)
    line = run_error(capsys, ["train", "--out", str(trained_run), "--resume", *extra])
    assert "--resume" in line and "config" in line
    assert snapshot(trained_run) == before


def test_overwrite_and_resume_together(capsys, trained_run):
    before = snapshot(trained_run)
    line = run_error(capsys, ["train", "--out", str(trained_run), "--resume", "--overwrite"])
    assert "--overwrite" in line and "--resume" in line
    assert snapshot(trained_run) == before


@pytest.mark.parametrize(("command", "hint"), [
    ("train", "a checkpoint was saved: continue with `zoft train --out {out} --resume`"),
    ("compare", "run the same command again to continue the comparison"),
    ("sweep", "run the same command again to continue the sweep"),
])
def test_a_stopped_command_says_how_to_continue(tmp_path, monkeypatch, capsys, command, hint):
    def stopped(config, out, **kw):
        raise Interrupted(Path(out))

    monkeypatch.setattr("zoft.cli.train", stopped)
    out = tmp_path / "out"
    extra = ["--grid", "lr=1e-4"] if command == "sweep" else []
    assert main([command, "--out", str(out), "--task", "mrpc", "--model", "minilm", "--quiet", *extra]) == 130
    stopped_in = out if command == "train" else out / ("runs/lr=1e-4" if command == "sweep" else "lora")
    assert capsys.readouterr().err == f"zoft: interrupted; {hint.format(out=stopped_in)}\n"


# -- zoft report -------------------------------------------------------------------------------------------


def test_report_skips_report_folders_and_takes_its_title(tmp_path, capsys):
    """Synthetic run folders (tests/report/fixture_runs.py); a shell glob over a compare folder takes in its
    report folder too, which the command skips."""
    runs = [write_run(tmp_path / "compare" / method, method=method) for method in ("lora", "mezo")]
    old_report = tmp_path / "compare" / "report"
    old_report.mkdir()
    (old_report / "report.md").write_text("# an earlier report\n")
    out = tmp_path / "out"
    assert main(["report", *map(str, runs), str(old_report), "--out", str(out), "--title", "Six steps, two ways"]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"report: skipping {old_report}, a report rather than a run\n"
    assert captured.out == f"report: {out / 'report.md'}\n"
    report = (out / "report.md").read_text()
    assert report.startswith("# Six steps, two ways\n")
    assert [row["Run"] for row in table_rows(section(report, "Runs"))] == ["LoRA", "MeZO (LoRA)"]


def test_report_without_a_title_names_the_task_and_runs_and_writes_to_report(capsys):
    run = write_run(Path("runs") / "lora", method="lora")  # the working folder is this test's tmp_path
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out == f"report: {Path('report') / 'report.md'}\n"
    assert (Path("report") / "report.md").read_text().startswith("# MRPC: LoRA\n")

"""Report tests read synthetic run folders (tests/report/fixture_runs.py): milliseconds each, no training."""

from pathlib import Path

import pytest

from report.fixture_runs import write_run


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def lora_run(runs_dir) -> Path:
    return write_run(runs_dir / "method-lora", method="lora")


@pytest.fixture
def mezo_run(runs_dir) -> Path:
    return write_run(runs_dir / "method-mezo", method="mezo")


@pytest.fixture
def stsb_run(runs_dir) -> Path:
    return write_run(runs_dir / "method-lora-task-stsb", method="lora", task="stsb")


@pytest.fixture
def diverged_run(runs_dir) -> Path:
    """A MeZO run whose loss became NaN at step 2 (an absurd learning rate): status diverged, 2 of 6 steps."""
    return write_run(runs_dir / "method-mezo-lr-1e30", method="mezo", lr=1e30, diverge_at=2)

"""The README's layout section names every module and package of src/zoft, and nothing that is not there; its
Python examples run."""

import re
from pathlib import Path

import zoft

SOURCE = Path(zoft.__file__).parent
README = SOURCE.parents[1] / "README.md"


def layout_block() -> str:
    text = README.read_text()
    return re.search(r"## Layout\n\n```\n(.*?)```", text, re.S).group(1)


def test_the_layout_names_every_module_and_package():
    block = layout_block()
    modules = {path.name for path in SOURCE.glob("*.py") if path.name not in ("__init__.py", "__main__.py")}
    packages = {f"{path.name}/" for path in SOURCE.iterdir() if (path / "__init__.py").is_file()}
    named = set(re.findall(r"\b[a-z_]+\.py\b|\b[a-z_]+/", block))
    assert modules | packages <= named, sorted((modules | packages) - named)


def test_every_file_the_layout_names_exists():
    entries = re.findall(r"^  (\S.*?) {2,}", layout_block(), re.M)  # the first column of src/zoft's lines
    names = [name for entry in entries for name in entry.split(", ")]
    assert "train.py" in names and "report/" in names
    assert [name for name in names if not (SOURCE / name.rstrip("/")).exists()] == []


def test_the_python_examples_run_in_order(tmp_path, monkeypatch):
    """The library section's blocks (the Trainer, the plain PyTorch loop, its trajectory replayed), as one script."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert [("ZerothOrderTrainer(" in block, "trajectory_record()" in block) for block in blocks] == [
        (True, False), (False, False), (False, True)]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 20 and {"loss_plus", "projected_grad"} <= trainer.state.log_history[1].keys()
    assert (tmp_path / "runs" / "hf-mezo" / "checkpoint-20" / "optimizer.pt").is_file()
    assert namespace["stats"].projected_grad != 0
    assert (tmp_path / "trajectory.bin").stat().st_size == 29 + 10 * 30

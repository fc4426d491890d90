"""End to end on real weights: the installed `zoft compare` of prompt-based LoRA and MeZO (LoRA) on the packaged
masked LM (bert-tiny-mlm) and real SST-2, both learning above their zero-shot start, then the saved model
reloaded."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoTokenizer

from zoft.data.batches import encode
from zoft.data.splits import load_task_data
from zoft.evaluate import evaluate_split
from zoft.models import input_format
from zoft.prompt import PromptClassifier
from zoft.runs import RunFolder

pytestmark = pytest.mark.e2e

ZOFT = Path(sys.executable).parent / "zoft"  # the console script pip installed, not `python -m zoft`

# Test-sized budgets (the documented study runs far longer: docs/results.md): 64 examples a class, batch 64.
SHARED = {"k_shot": 64, "seed": 13, "batch_size": 64, "checkpoint_every": 0}
METHODS = {
    "lora": {"method": {"method": "lora", "lr": 3e-3}, "train": {"steps": 40, "eval_every": 20}},
    "mezo-lora": {"method": {"method": "mezo", "params": "lora", "lr": 5e-3, "eps": 1e-3},
                  "train": {"steps": 400, "eval_every": 200, "log_every": 20}},
}


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, real_glue) -> Path:
    assert ZOFT.is_file(), f"no console script at {ZOFT}: install zoft (pip install -e .)"
    folder = tmp_path_factory.mktemp("compare")
    presets = []
    for name, keys in METHODS.items():
        presets += ["--preset", str(folder / f"{name}.yaml")]
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(keys))
    shared = [item for key, value in SHARED.items() for item in (f"--{key.replace('_', '-')}", str(value))]
    command = [str(ZOFT), "compare", "--task", "sst2", "--model", "bert-tiny-mlm", "--data-dir",
               str(real_glue), "--out", str(folder / "runs"), "--methods", ",".join(METHODS), *presets, *shared,
               "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    return folder / "runs"


@pytest.mark.parametrize("method", list(METHODS))
def test_prompt_based_runs_learn_above_their_zero_shot_start(comparison, method):
    run = RunFolder(comparison / method)
    summary = run.read_summary().to_json()
    evals = [r for r in run.read_metrics() if r["kind"] == "eval"]
    zero_shot = evals[0]
    assert zero_shot["step"] == 0 and summary["status"] == "completed"
    assert summary["best"]["step"] > 0
    assert summary["best"]["validation/accuracy"] >= zero_shot["validation/accuracy"] + 0.05
    assert summary["best"]["test/accuracy"] >= zero_shot["test/accuracy"] + 0.02
    assert summary["beats_majority"] is True
    if method == "mezo-lora":
        assert summary["passes"] == {"forward": 800, "backward": 0}


def test_both_methods_read_the_same_prompt_with_the_real_tokenizer(comparison):
    configs = {name: RunFolder(comparison / name).read_config() for name in METHODS}
    assert {c.model.head for c in configs.values()} == {"prompt"}
    assert {(c.model.template, tuple(c.model.label_words)) for c in configs.values()} == {
        ("{s1} It was {mask}.", ("terrible", "great"))}
    tokenizer = AutoTokenizer.from_pretrained(comparison / "lora" / "model")
    assert tokenizer.convert_ids_to_tokens(tokenizer(" terrible great", add_special_tokens=False)["input_ids"]) == [
        "terrible", "great"]  # single tokens of the real vocabulary
    report = (comparison / "report" / "report.md").read_text()
    assert "Not like for like" not in report  # same head, template, batch and LoRA set-up


def test_the_saved_mezo_model_reloads_and_predicts_alike(comparison):
    run = comparison / "mezo-lora"
    config = RunFolder(run).read_config()
    data = load_task_data(config.data, seed=config.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    encoded = encode(data.splits["test"], tokenizer, config.data.max_length, **input_format(config.model, data.task))
    base = json.loads((run / "model" / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = PromptClassifier.from_pretrained(run / "model", base)
    result = evaluate_split(model, encoded, tokenizer, data.task, 64, torch.device("cpu"))
    saved = [json.loads(line) for line in (run / "predictions" / "test.jsonl").read_text().splitlines()]
    assert result.predictions.tolist() == [row["prediction"] for row in saved]
    assert result.metrics["accuracy"] == RunFolder(run).read_summary().best["test/accuracy"]

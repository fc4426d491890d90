"""End to end: the installed `zoft` command trains LoRA on real MRPC with the packaged MiniLM, and beats the
majority class.

The run is test-sized: 30 steps on 320 examples, a linear head on mean-pooled MiniLM features of each sentence
(u, v, |u-v|, u*v: the features MiniLM was trained to compare; the model's own BERT pooler was never trained
and needs hundreds of steps, docs/results.md), 184 validation examples, evaluated at steps 0 and 30.
Measured at lr 3e-3: the random head starts at 53.9% test accuracy (58.7% validation), then scores 71.6% at
step 30 (68.5% validation) against the majority class's 68.38%; the mean train loss of the first ten steps is
0.59, of the last ten 0.51 (the label prior's entropy is 0.63: a head that learns only the class bias stays
within about 0.03 of it over ten batches of 16). About 35 s on 2 CPU cores.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

from zoft.config import DataConfig
from zoft.data.splits import load_task_data

pytestmark = pytest.mark.e2e

ZOFT = Path(sys.executable).parent / "zoft"  # the console script pip installed, not `python -m zoft`
DATA = {"train_limit": 320, "validation_fraction": 0.05}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, real_glue):
    assert ZOFT.is_file(), f"no console script at {ZOFT}: install zoft (pip install -e .)"
    run = tmp_path_factory.mktemp("e2e") / "mrpc-lora"
    options = [f"--{key.replace('_', '-')}={value}" for key, value in DATA.items()]
    command = [str(ZOFT), "train", "--task", "mrpc", "--model", "minilm", "--method", "lora", "--pooling", "mean",
               "--pair-encoding", "separate", "--data-dir", str(real_glue), *options, "--steps", "30", "--lr", "3e-3",
               "--warmup-ratio", "0", "--eval-every", "30", "--log-every", "1", "--out", str(run)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert finished.returncode == 0, finished.stderr
    return run, finished


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_installed_command_writes_a_complete_run_folder(lora_run):
    run, finished = lora_run
    assert "best by validation/accuracy" in finished.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["command"][:2] == ["zoft", "train"]
    assert summary["model"] == "minilm" and summary["data"]["sizes"]["train"] == 320
    for entry in ("config.yaml", "metrics.jsonl", "model/backbone/adapter_config.json", "model/head.safetensors",
                  "model/backbone/adapter_model.safetensors", "predictions/test.jsonl",
                  "predictions/validation.jsonl", "checkpoint/state.pt"):
        assert (run / entry).exists(), entry


def test_lora_learns_past_the_majority_class(lora_run, real_glue):
    run, _ = lora_run
    summary = json.loads((run / "summary.json").read_text())
    records = read_jsonl(run / "metrics.jsonl")
    evals = {r["step"]: r for r in records if r["kind"] == "eval"}
    majority = summary["majority_baseline"]["accuracy"]
    assert majority == pytest.approx(279 / 408)
    assert evals[0]["test/accuracy"] < majority  # the random head: what follows is training's doing
    assert summary["best"]["step"] > 0 and summary["beats_majority"] is True
    assert summary["best"]["test/accuracy"] > majority + 0.01  # at least 4 of the 408 test examples more
    assert summary["best"]["test/majority_share"] < 1  # both classes predicted

    # The train loss ends well below the entropy of the training labels' prior, which a head that learns only
    # the class bias would reach and not pass.
    labels = load_task_data(DataConfig(task="mrpc", data_dir=str(real_glue), **DATA), seed=42).splits["train"].labels
    share = sum(labels) / len(labels)
    prior_entropy = -(share * math.log(share) + (1 - share) * math.log(1 - share))
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 30
    assert sum(losses[-10:]) / 10 < prior_entropy - 0.1


def test_the_adapter_and_head_rebuilt_by_hand_reproduce_the_test_predictions(lora_run, minilm_path, real_glue):
    """Built from the saved files with PEFT and torch alone (not zoft's loader): MiniLM with the adapter, each
    sentence mean-pooled over its tokens, the head on (u, v, |u-v|, u*v)."""
    run, _ = lora_run
    adapter = load_file(run / "model" / "backbone" / "adapter_model.safetensors")
    assert max(t.abs().max() for name, t in adapter.items() if "lora_B" in name) > 0  # trained, not LoRA's B = 0
    backbone = PeftModel.from_pretrained(AutoModel.from_pretrained(minilm_path), run / "model" / "backbone").eval()
    head = load_file(run / "model" / "head.safetensors")
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    test = load_task_data(DataConfig(task="mrpc", data_dir=str(real_glue), **DATA), seed=42).splits["test"]

    def mean_pooled(sentences: list[str]) -> torch.Tensor:
        batch = tokenizer(sentences, truncation=True, max_length=128, padding=True, return_tensors="pt")
        states = backbone(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return (states * mask).sum(1) / mask.sum(1)

    logits = []
    with torch.inference_mode():
        for start in range(0, len(test.labels), 64):
            first, second = zip(*test.texts[start : start + 64], strict=True)
            u, v = mean_pooled(list(first)), mean_pooled(list(second))
            features = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)
            logits.append(torch.nn.functional.linear(features, head["weight"], head["bias"]))
    recorded = read_jsonl(run / "predictions" / "test.jsonl")
    assert torch.cat(logits).argmax(-1).tolist() == [row["prediction"] for row in recorded]
    torch.testing.assert_close(torch.cat(logits), torch.tensor([row["logits"] for row in recorded]),
                               rtol=1e-4, atol=1e-5)

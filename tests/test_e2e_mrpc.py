"""End to end: the installed `zoft` command trains LoRA on real MRPC with the packaged MiniLM."""

import json
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, real_glue):
    run = tmp_path_factory.mktemp("e2e") / "mrpc-lora"
    command = [sys.executable, "-m", "zoft", "train", "--task", "mrpc", "--model", "minilm", "--method", "lora",
               "--data-dir", str(real_glue), "--train-limit", "320", "--steps", "40", "--lr", "1e-3",
               "--warmup-ratio", "0", "--eval-every", "20", "--log-every", "1", "--out", str(run)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr
    return run, finished


def test_the_run_folder_is_complete(lora_run):
    run, finished = lora_run
    assert "best by validation/accuracy" in finished.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["model"] == "minilm" and summary["data"]["sizes"]["train"] == 320
    assert summary["best"]["step"] in (0, 20, 40)
    for entry in ("config.yaml", "metrics.jsonl", "model/adapter_config.json", "model/adapter_model.safetensors",
                  "predictions/test.jsonl", "predictions/validation.jsonl", "checkpoint/state.pt"):
        assert (run / entry).exists(), entry


def test_the_loss_went_down(lora_run):
    run, _ = lora_run
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert len(losses) == 40
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10


def test_the_adapter_reloads_and_reproduces_the_test_predictions(lora_run, minilm_path, real_glue):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from zoft.config import DataConfig
    from zoft.data.batches import encode, eval_batches
    from zoft.data.splits import load_task_data

    run, _ = lora_run
    base = AutoModelForSequenceClassification.from_pretrained(minilm_path, num_labels=2)
    model = PeftModel.from_pretrained(base, run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    test = load_task_data(DataConfig(task="mrpc", data_dir=str(real_glue)), seed=42).splits["test"]
    logits = []
    with torch.inference_mode():
        for batch in eval_batches(encode(test, tokenizer, 128), tokenizer, 16):
            batch.pop("labels")
            logits.append(model(**batch).logits)
    predictions = torch.cat(logits).argmax(-1).tolist()
    recorded = [json.loads(line) for line in (run / "predictions" / "test.jsonl").read_text().splitlines()]
    assert predictions == [row["prediction"] for row in recorded]
    torch.testing.assert_close(torch.cat(logits), torch.tensor([row["logits"] for row in recorded]),
                               rtol=1e-4, atol=1e-5)

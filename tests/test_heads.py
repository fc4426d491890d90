"""zoft's linear head on pooled features: pooling, separate pair encoding, saving and reloading."""

import json

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from zoft.cli import main
from zoft.config import DataConfig
from zoft.data.batches import collate, encode
from zoft.data.sources import Examples
from zoft.data.splits import load_task_data
from zoft.evaluate import SplitResult
from zoft.heads import PooledClassifier

PAIRS = Examples([("the cat sat on the mat", "a cat was sitting"), ("stocks fell sharply today", "rain")], [1, 0])


@pytest.fixture
def tokenizer(tiny_bert):
    return AutoTokenizer.from_pretrained(tiny_bert)


def pooled(tiny_bert, pooling="mean", separate=True) -> PooledClassifier:
    torch.manual_seed(0)
    return PooledClassifier(AutoModel.from_pretrained(tiny_bert), 2, pooling, separate).eval()


def test_mean_pooling_ignores_padding(tiny_bert, tokenizer):
    model = pooled(tiny_bert, separate=False)
    alone = [encode(Examples([text], [0]), tokenizer, 32) for text in (("short",), ("a much longer sentence here",))]
    together = collate(alone[0].features + alone[1].features, tokenizer)
    with torch.no_grad():
        batched = model.features(**{k: v for k, v in together.items() if k != "labels"})
        single = model.features(**{k: v for k, v in collate(alone[0].features, tokenizer).items() if k != "labels"})
    torch.testing.assert_close(batched[0], single[0], rtol=1e-5, atol=1e-6)


def test_separate_pairs_give_u_v_difference_and_product(tiny_bert, tokenizer):
    model = pooled(tiny_bert)
    batch = collate(encode(PAIRS, tokenizer, 32, separate_pairs=True).features, tokenizer)
    assert {"input_ids_b", "attention_mask_b"} <= batch.keys()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        features = model.features(**inputs)
        u = model.pool(batch["input_ids"], batch["attention_mask"], token_type_ids=batch["token_type_ids"])
        v = model.pool(batch["input_ids_b"], batch["attention_mask_b"], token_type_ids=batch["token_type_ids_b"])
    torch.testing.assert_close(features, torch.cat([u, v, (u - v).abs(), u * v], dim=-1))
    assert model.head.in_features == 4 * model.config.hidden_size


def test_cli_trains_and_saves_a_pooled_lora_model_that_reloads(tmp_path, learning_run_args, tiny_bert, real_glue,
                                                              assert_trained):
    run = tmp_path / "run"
    # Seed 13: this head starts on the minority class there (at seed 42 on the majority class, which training
    # keeps: best step 0), so the best checkpoint is a trained one and its adapter is not LoRA's zero start.
    assert main(["train", "--out", str(run), "--method", "lora", "--pooling", "mean", "--pair-encoding", "separate",
                 "--seed", "13", *learning_run_args]) == 0
    assert (run / "model" / "backbone" / "adapter_config.json").is_file()
    assert_trained(run)  # lora_B off zero: an adapter lost on reload changes the logits compared below
    model = PooledClassifier.from_pretrained(run / "model", tiny_bert).eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    test = load_task_data(DataConfig(data_dir=str(real_glue), train_limit=64, validation_fraction=0.02),
                          seed=13).splits["test"]
    batch = collate(encode(test, tokenizer, 64, separate_pairs=True).features, tokenizer)
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    recorded = [json.loads(line) for line in (run / "predictions" / "test.jsonl").read_text().splitlines()]
    result = SplitResult(metrics={}, logits=logits, labels=batch["labels"])
    assert result.predictions.tolist() == [row["prediction"] for row in recorded]
    torch.testing.assert_close(logits, torch.tensor([row["logits"] for row in recorded]), rtol=1e-4, atol=1e-5)


def test_separate_pair_encoding_needs_a_pooled_head(tmp_path, tiny_run_args, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "--pair-encoding", "separate", *tiny_run_args]) == 2
    assert "needs pooling cls or mean" in capsys.readouterr().err


def test_cls_pooling_reads_the_first_token_state(tiny_bert, tokenizer):
    model = pooled(tiny_bert, pooling="cls", separate=False)
    batch = tokenizer(["the cat sat on the mat", "rain"], padding=True, return_tensors="pt")
    with torch.no_grad():
        states = model.backbone(**batch).last_hidden_state
        features = model.features(**batch)
        mean = pooled(tiny_bert, pooling="mean", separate=False).features(**batch)
    torch.testing.assert_close(features, states[:, 0])
    assert not torch.allclose(features, mean)


def test_a_pooled_model_with_a_full_backbone_reloads_its_trained_weights(tmp_path, tiny_bert, tokenizer):
    # Full fine-tuning saves the whole encoder (no adapter): the reload must read the saved encoder, not
    # the base model, so the encoder is moved off its pretrained weights first.
    model = pooled(tiny_bert, pooling="cls", separate=True)
    with torch.no_grad():
        for parameter in model.backbone.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path / "model")
    assert not (tmp_path / "model" / "backbone" / "adapter_config.json").exists()
    reloaded = PooledClassifier.from_pretrained(tmp_path / "model", base_model=tiny_bert).eval()
    assert (reloaded.pooling, reloaded.separate_pairs) == ("cls", True)
    batch = collate(encode(PAIRS, tokenizer, 32, separate_pairs=True).features, tokenizer)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits)
        assert not torch.allclose(pooled(tiny_bert, pooling="cls").backbone(**batch_inputs(batch)).last_hidden_state,
                                  reloaded.backbone(**batch_inputs(batch)).last_hidden_state)


def batch_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids")}

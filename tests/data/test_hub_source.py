"""The hub source: fails fast without network, and maps the hub's label ids onto the file labels."""

import time

import pytest
from datasets import Dataset

from zoft.config import DataConfig
from zoft.data import sources
from zoft.data.sources import read_glue_hub
from zoft.data.splits import load_task_data
from zoft.data.tasks import get_task
from zoft.errors import ZoftError


def test_offline_hub_fails_fast_and_says_how_to_use_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ZoftError) as error:
        load_task_data(DataConfig(task="mrpc"), seed=0)
    assert time.monotonic() - start < 1
    message = str(error.value)
    assert "\n" not in message
    assert "download GLUE mrpc from nyu-mll/glue" in message
    assert "--data-dir" in message and "GLUE_DIR" in message


def test_hub_splits_and_mnli_label_order(monkeypatch):
    monkeypatch.setattr(sources, "require_hub", lambda purpose, hint: None)
    # nyu-mll/glue numbers MNLI classes entailment=0, neutral=1, contradiction=2
    columns = {"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"], "label": [0, 1, 2]}
    split = Dataset.from_dict(columns)
    hub = {"train": split, "validation_matched": split, "validation_mismatched": split}
    monkeypatch.setattr(sources, "_load_hub_dataset", lambda name: hub)
    splits = read_glue_hub(get_task("mnli"))
    assert set(splits) == {"train", "test", "test_mismatched"}
    assert splits["train"].texts == [("p0", "h0"), ("p1", "h1"), ("p2", "h2")]
    assert splits["train"].labels == [1, 2, 0]  # ours: contradiction, entailment, neutral


def test_hub_regression_scores(monkeypatch):
    monkeypatch.setattr(sources, "require_hub", lambda purpose, hint: None)
    split = Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "label": [3.8]})
    monkeypatch.setattr(sources, "_load_hub_dataset", lambda name: {"train": split, "validation": split})
    assert read_glue_hub(get_task("stsb"))["test"].labels == [3.8]


def test_a_failed_download_is_one_line(monkeypatch):
    import datasets

    def refuse(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)\ndetails")

    monkeypatch.setattr(sources, "require_hub", lambda purpose, hint: None)
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(ZoftError) as error:
        read_glue_hub(get_task("rte"))
    assert str(error.value) == (
        "could not load nyu-mll/glue rte from the hub: "
        "Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)"
    )

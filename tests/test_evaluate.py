"""Evaluation: batches sorted by length, results back in the split's order, and the collapse measure."""

from types import SimpleNamespace

import pytest
import torch

from zoft.config import ModelConfig
from zoft.data import batches as batches_module
from zoft.data.batches import EncodedSplit, encode
from zoft.data.sources import Examples
from zoft.data.tasks import get_task
from zoft.evaluate import SplitResult, evaluate_split, majority_share
from zoft.metrics import compute_metrics
from zoft.models import load_model

CPU = torch.device("cpu")

# lengths deliberately out of order, so that sorting by length moves examples around
SENTENCES = [
    ("a much longer first sentence with many more words than the others", "and a pair"),
    ("short", "one"),
    ("medium length sentence here", "with its partner sentence"),
    ("tiny", "x"),
    ("the longest sentence of them all, going on and on about nothing in particular", "and on"),
    ("two words", "three more words"),
    ("a sentence", "another sentence of a different length entirely"),
    ("hello", "world"),
    ("yet another example whose length sits in the middle", "of the pack"),
    ("last", "one here"),
    ("one more to make the count awkward for a batch of seven", "end"),
]
LABELS = [1, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1]



@pytest.fixture(scope="module")
def tiny_model(tiny_bert):
    torch.manual_seed(0)
    model, tokenizer = load_model(ModelConfig(model=str(tiny_bert)), num_labels=2)
    return model, tokenizer


@pytest.fixture(scope="module")
def encoded(tiny_model):
    _, tokenizer = tiny_model
    return encode(Examples(SENTENCES, LABELS), tokenizer, max_length=64)


class LengthModel(torch.nn.Module):
    """Logits that say which example they belong to: its number of real tokens and its first word id."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask, **kwargs):
        lengths = attention_mask.sum(-1).float()
        return SimpleNamespace(logits=torch.stack([lengths, input_ids[:, 1].float()], dim=-1))


def test_results_come_back_in_the_split_order(encoded, tiny_model):
    _, tokenizer = tiny_model
    lengths = [len(feature["input_ids"]) for feature in encoded.features]
    assert lengths != sorted(lengths)  # the test needs a split that sorting reorders
    for batch_size in (1, 3, 64):
        result = evaluate_split(LengthModel(), encoded, tokenizer, get_task("mrpc"), batch_size, CPU)
        assert result.logits[:, 0].tolist() == lengths
        assert result.logits[:, 1].tolist() == [feature["input_ids"][1] for feature in encoded.features]
        assert result.labels.tolist() == LABELS


def test_batch_size_does_not_change_predictions_or_order(tiny_model, encoded):
    model, tokenizer = tiny_model
    task = get_task("mrpc")
    one = evaluate_split(model, encoded, tokenizer, task, 1, CPU)
    seven = evaluate_split(model, encoded, tokenizer, task, 7, CPU)
    assert torch.allclose(one.logits, seven.logits, atol=1e-4)
    assert one.predictions.tolist() == seven.predictions.tolist()
    assert one.labels.tolist() == seven.labels.tolist() == LABELS
    # each example scored alone, with no padding at all, gives the same logits in the same order
    with torch.inference_mode():
        alone = torch.cat([
            model(**{key: torch.tensor([value]) for key, value in feature.items() if key != "labels"}).logits
            for feature in encoded.features
        ])
    assert torch.allclose(one.logits, alone, atol=1e-4)


def test_a_split_is_collated_once_and_evaluated_again_from_its_kept_batches(tiny_model, encoded, monkeypatch):
    model, tokenizer = tiny_model
    task = get_task("mrpc")
    collated: list[int] = []
    collate = batches_module.collate

    def counting_collate(features, tokenizer):
        collated.append(len(features))
        return collate(features, tokenizer)

    monkeypatch.setattr(batches_module, "collate", counting_collate)
    split = EncodedSplit(list(encoded.features))  # a fresh split: nothing kept from the other tests
    first = evaluate_split(model, split, tokenizer, task, 4, CPU)
    assert collated == [4, 4, 3]
    second = evaluate_split(model, split, tokenizer, task, 4, CPU)
    assert collated == [4, 4, 3]  # nothing collated again
    assert torch.equal(first.logits, second.logits) and second.labels.tolist() == LABELS
    # the kept batches still hold their labels: an evaluation reads them without taking them out
    assert all("labels" in batch for batch in split.length_sorted(tokenizer, 4).batches)
    other = evaluate_split(model, split, tokenizer, task, 5, CPU)  # another batch size collates afresh
    assert collated == [4, 4, 3, 5, 5, 1]
    assert torch.allclose(first.logits, other.logits, atol=1e-4) and other.labels.tolist() == LABELS


def test_metrics_match_compute_metrics(tiny_model, encoded):
    model, tokenizer = tiny_model
    task = get_task("mrpc")
    result = evaluate_split(model, encoded, tokenizer, task, 4, CPU)
    predictions = result.predictions.tolist()
    expected = compute_metrics(task, predictions, LABELS)
    assert {key: result.metrics[key] for key in expected} == pytest.approx(expected)
    assert set(result.metrics) == {"accuracy", "f1", "majority_share"}
    # the share of the commonest predicted class, counted here without zoft's helper
    commonest = max(map(predictions.count, set(predictions)))
    assert result.metrics["majority_share"] == pytest.approx(commonest / len(predictions))
    assert not model.training  # evaluation switched dropout off


def test_rows_are_json_ready_in_order(tiny_model, encoded):
    model, tokenizer = tiny_model
    rows = evaluate_split(model, encoded, tokenizer, get_task("mrpc"), 5, CPU).rows()
    assert [row["index"] for row in rows] == list(range(len(LABELS)))
    assert [row["label"] for row in rows] == LABELS
    assert all(row["prediction"] == max(range(2), key=lambda c: row["logits"][c]) for row in rows)


def test_regression_split(tiny_bert, tiny_model):
    _, tokenizer = tiny_model
    model, _ = load_model(ModelConfig(model=str(tiny_bert)), num_labels=1)
    scores = [float(i) / 2 for i in range(len(SENTENCES))]
    split = encode(Examples(SENTENCES, scores), tokenizer, max_length=64)
    result = evaluate_split(model, split, tokenizer, get_task("stsb"), 4, CPU)
    assert result.predictions.shape == (len(scores),)
    assert result.labels.tolist() == scores
    assert set(result.metrics) == {"pearson", "spearman"}
    assert "majority_share" not in result.metrics


def test_majority_share():
    assert majority_share(torch.ones(10, dtype=torch.long)) == 1.0
    assert majority_share(torch.zeros(3, dtype=torch.long)) == 1.0
    assert majority_share(torch.tensor([0, 1, 1, 1])) == 0.75
    assert majority_share(torch.tensor([0, 1, 2, 2, 0, 2])) == 0.5


def test_split_result_predictions():
    classes = SplitResult({}, torch.tensor([[0.1, 0.9], [2.0, -1.0]]), torch.tensor([1, 0]))
    assert classes.predictions.tolist() == [1, 0]
    scores = SplitResult({}, torch.tensor([[0.5], [3.0]]), torch.tensor([0.4, 2.9]))
    assert scores.predictions.tolist() == [0.5, 3.0]

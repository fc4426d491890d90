"""Tokenisation, padding, the resumable training stream and evaluation batches (offline MiniLM tokenizer)."""

import json

import pytest
import torch

from zoft.data.batches import BatchStream, collate, encode, eval_batches
from zoft.data.sources import Examples
from zoft.errors import ZoftError

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def _numbered(n: int) -> Examples:
    """Examples whose float label is their own index, so a batch tells which examples it holds."""
    texts = [(" ".join(WORDS[: 1 + i % len(WORDS)]),) for i in range(n)]
    return Examples(texts, [float(i) for i in range(n)])


def _ids(batch) -> list[int]:
    return [int(label) for label in batch["labels"].tolist()]


@pytest.fixture
def encoded(tokenizer):
    return encode(_numbered(10), tokenizer, max_length=16)


def test_encode_pairs_truncates_and_keeps_labels(tokenizer):
    examples = Examples([("a short premise", "a hypothesis"), (" ".join(WORDS * 5), "x")], [1, 0])
    split = encode(examples, tokenizer, max_length=12)
    assert len(split) == 2 and split.labels == [1, 0]
    first = split.features[0]
    assert first["input_ids"] == tokenizer("a short premise", "a hypothesis")["input_ids"]
    assert 1 in first["token_type_ids"]  # the second text is marked as such
    assert len(split.features[1]["input_ids"]) == 12


def test_collate_pads_per_batch_with_label_dtypes(tokenizer):
    classes = encode(Examples([("a",), ("a b c d e",)], [0, 1]), tokenizer, max_length=32)
    batch = collate(classes.features, tokenizer)
    assert batch["input_ids"].shape == (2, 7)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert batch["labels"].dtype == torch.long
    scores = encode(Examples([("a",), ("b",)], [0.5, 4.0]), tokenizer, max_length=32)
    assert collate(scores.features, tokenizer)["labels"].dtype == torch.float32


def test_eval_batches_keep_order_and_the_short_last_batch(tokenizer, encoded):
    batches = list(eval_batches(encoded, tokenizer, batch_size=4))
    assert [_ids(batch) for batch in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_stream_covers_every_example_once_per_epoch(tokenizer, encoded):
    stream = BatchStream(encoded, tokenizer, batch_size=3, seed=42)
    epochs = []
    for _ in range(2):
        batches = [_ids(stream.next()) for _ in range(4)]
        assert [len(b) for b in batches] == [3, 3, 3, 1]  # drop_last=False
        epochs.append([i for batch in batches for i in batch])
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(10))
    assert epochs[0] != epochs[1]  # reshuffled
    assert stream.examples_seen == 20 and stream.epoch == 2.0


def test_stream_order_depends_on_the_seed_only(tokenizer, encoded):
    def first_batches(seed):
        stream = BatchStream(encoded, tokenizer, batch_size=3, seed=seed)
        return [_ids(next(stream)) for _ in range(6)]

    assert first_batches(7) == first_batches(7)
    assert first_batches(7) != first_batches(8)


@pytest.mark.parametrize("group_by_length", [False, True])
@pytest.mark.parametrize("consumed", [0, 2, 4, 5, 9])
def test_state_dict_round_trip_yields_the_same_next_batches(tokenizer, encoded, consumed, group_by_length):
    stream = BatchStream(encoded, tokenizer, batch_size=3, seed=42, group_by_length=group_by_length)
    for _ in range(consumed):
        stream.next()
    state = json.loads(json.dumps(stream.state_dict()))  # plain values survive JSON too
    expected = [stream.next() for _ in range(6)]

    resumed = BatchStream(encoded, tokenizer, batch_size=3, seed=999, group_by_length=group_by_length)
    resumed.load_state_dict(state)
    assert resumed.examples_seen == consumed * 3 - (consumed // 4) * 2
    for want in expected:
        got = resumed.next()
        assert got.keys() == want.keys()
        assert all(torch.equal(got[key], want[key]) for key in want)


def test_length_grouping_pads_less_and_still_visits_every_example_once(tokenizer):
    lengths = [1 + (7 * i) % 40 for i in range(400)]  # lengths spread over 1..40 words
    encoded = encode(Examples([(" ".join(["w"] * n),) for n in lengths], [float(i) for i in range(400)]),
                     tokenizer, max_length=64)

    def epoch(group_by_length: bool) -> tuple[list[int], int]:
        stream = BatchStream(encoded, tokenizer, batch_size=8, seed=0, group_by_length=group_by_length)
        batches = [stream.next() for _ in range(50)]
        return [i for b in batches for i in _ids(b)], sum(b["input_ids"].numel() for b in batches)

    grouped_ids, grouped_tokens = epoch(True)
    plain_ids, plain_tokens = epoch(False)
    assert sorted(grouped_ids) == sorted(plain_ids) == list(range(400))
    assert grouped_tokens < 0.8 * plain_tokens
    assert grouped_ids != sorted(grouped_ids, key=lambda i: lengths[i])  # shuffled, not sorted by length


def test_state_from_other_data_is_refused(tokenizer, encoded):
    state = BatchStream(encoded, tokenizer, batch_size=3, seed=42).state_dict()
    other = BatchStream(encode(_numbered(11), tokenizer, 16), tokenizer, batch_size=3, seed=42)
    with pytest.raises(ZoftError, match="had 10 training examples, this one has 11"):
        other.load_state_dict(state)


def test_empty_training_split_is_refused(tokenizer):
    with pytest.raises(ZoftError, match="the training split is empty"):
        BatchStream(encode(Examples([], []), tokenizer, 16), tokenizer, batch_size=3, seed=0)

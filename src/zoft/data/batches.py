"""Tokenise each split once, then pad batches: an endless shuffled stream for training, in order for eval.

Batches are dicts of CPU tensors (``input_ids``, ``attention_mask``, ``token_type_ids`` when the tokenizer
makes them, ``labels``); the training loop moves them to its device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from zoft.data.sources import Examples
from zoft.errors import ZoftError

Batch = dict[str, torch.Tensor]


@dataclass
class LengthSorted:
    """A split's evaluation batches, examples sorted by length (batches of similar length waste little on
    padding) and collated, with the permutation that puts results back in the split's order."""

    batches: list[Batch]
    restore: torch.Tensor  # for each example of the split, its position in the sorted order
    tokenizer: PreTrainedTokenizerBase
    batch_size: int


@dataclass
class EncodedSplit:
    features: list[dict[str, Any]]  # token ids (unpadded) and "labels" per example; never changed once encoded
    _length_sorted: LengthSorted | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.features)

    def length_sorted(self, tokenizer: PreTrainedTokenizerBase, batch_size: int) -> LengthSorted:
        """The split's length-sorted evaluation batches, collated on the first call and kept: a run evaluates
        the same splits every eval_every steps, and collating took ~10% of an evaluation pass of bert-tiny-mlm
        (benchmarks/eval_throughput.py). Another tokenizer or batch size collates afresh."""
        cached = self._length_sorted
        if cached is not None and cached.tokenizer is tokenizer and cached.batch_size == batch_size:
            return cached
        order = sorted(range(len(self)), key=lambda i: len(self.features[i]["input_ids"]))
        by_length = EncodedSplit([self.features[i] for i in order])
        restore = torch.empty(len(order), dtype=torch.long)
        restore[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
        self._length_sorted = LengthSorted(list(eval_batches(by_length, tokenizer, batch_size)), restore, tokenizer,
                                           batch_size)
        return self._length_sorted

    @property
    def labels(self) -> list[int] | list[float]:
        return [feature["labels"] for feature in self.features]


SECOND = "_b"  # suffix of the keys that hold the second sentence when pairs are encoded separately


def encode(examples: Examples, tokenizer: PreTrainedTokenizerBase, max_length: int, *,
           separate_pairs: bool = False, template: Any = None) -> EncodedSplit:
    """Tokenise every example once, truncated to `max_length`, not padded.

    Pairs go in as text / text_pair, or, with `separate_pairs`, each sentence alone (its keys suffixed
    ``_b`` for the second); a prompt `template` (zoft.prompt.Template) renders the example around a mask.
    """
    if not len(examples):
        return EncodedSplit([])
    if template is not None:
        return EncodedSplit(template.encode(examples, tokenizer, max_length))
    columns = [list(column) for column in zip(*examples.texts, strict=True)]
    if separate_pairs:
        first, second = (_tokenised_rows(tokenizer(column, truncation=True, max_length=max_length))
                         for column in columns)
        rows = [{**a, **{key + SECOND: value for key, value in b.items()}} for a, b in zip(first, second, strict=True)]
    else:
        pair = columns[1] if len(columns) > 1 else None
        rows = _tokenised_rows(tokenizer(columns[0], pair, truncation=True, max_length=max_length))
    return EncodedSplit([{**row, "labels": label} for row, label in zip(rows, examples.labels, strict=True)])


def _tokenised_rows(encoded: Any) -> list[dict[str, Any]]:
    return [{key: encoded[key][i] for key in encoded} for i in range(len(encoded["input_ids"]))]


def collate(features: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> Batch:
    """Pad `features` to the longest among them (each sentence of a separately encoded pair to its own
    longest); labels become long (classes) or float (regression)."""
    pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    batch = dict(pad([{k: v for k, v in f.items() if not k.endswith(SECOND)} for f in features]))
    if any(key.endswith(SECOND) for key in features[0]):
        second = pad([{k[: -len(SECOND)]: v for k, v in f.items() if k.endswith(SECOND)} for f in features])
        batch.update({key + SECOND: value for key, value in second.items()})
    return batch


def eval_batches(
    encoded: EncodedSplit, tokenizer: PreTrainedTokenizerBase, batch_size: int
) -> Iterator[Batch]:
    """The split in its own order, `batch_size` examples at a time (the last batch may be smaller)."""
    for start in range(0, len(encoded), batch_size):
        yield collate(encoded.features[start : start + batch_size], tokenizer)


class BatchStream:
    """An endless stream of shuffled training batches that can be saved and resumed exactly.

    Every epoch visits each example once in a fresh permutation drawn from the stream's own generator.
    With ``group_by_length`` (the HF Trainer's trick) the permutation is cut into megabatches of
    ``MEGABATCH`` batches, each megabatch is sorted by length and cut into batches, and the batches are
    shuffled: a batch holds examples of similar length and wastes little on padding, while the epoch
    stays random. The last batch of a megabatch keeps the leftover examples (drop_last=False).
    The state is the generator state at the start of the current epoch plus the batch index in it:
    replaying the epoch from there gives the very batches an uninterrupted stream would have given.
    """

    MEGABATCH = 50

    def __init__(self, encoded: EncodedSplit, tokenizer: PreTrainedTokenizerBase, batch_size: int, seed: int,
                 group_by_length: bool = False):
        if not len(encoded):
            raise ZoftError("the training split is empty: no batches to draw")
        self._encoded = encoded
        self._tokenizer = tokenizer
        self._batch_size = batch_size
        self._group_by_length = group_by_length
        self._generator = torch.Generator().manual_seed(seed)
        self._examples_seen = 0
        self._start_epoch()

    @property
    def epoch(self) -> float:
        """Passes over the training split so far (examples seen / examples), as the HF Trainer counts."""
        return self._examples_seen / len(self._encoded)

    @property
    def examples_seen(self) -> int:
        return self._examples_seen

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        return self.next()

    def next(self) -> Batch:
        if self._position >= len(self._batches):
            self._start_epoch()
        indices = self._batches[self._position]
        self._position += 1
        self._examples_seen += len(indices)
        return collate([self._encoded.features[i] for i in indices], self._tokenizer)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON- and torch.save-friendly)."""
        return {
            "num_examples": len(self._encoded),
            "epoch_generator_state": self._epoch_start_state.tolist(),
            "batch_in_epoch": self._position,
            "examples_seen": self._examples_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_examples"] != len(self._encoded):
            raise ZoftError(f"the saved data stream had {state['num_examples']} training examples, this one "
                            f"has {len(self._encoded)}; resuming needs the same data and data settings")
        self._generator.set_state(torch.tensor(state["epoch_generator_state"], dtype=torch.uint8))
        self._start_epoch()
        self._position = state["batch_in_epoch"]
        self._examples_seen = state["examples_seen"]

    def _start_epoch(self) -> None:
        self._epoch_start_state = self._generator.get_state()
        order: list[int] = torch.randperm(len(self._encoded), generator=self._generator).tolist()
        if self._group_by_length:
            self._batches = self._length_grouped_batches(order)
        else:
            self._batches = [order[i : i + self._batch_size] for i in range(0, len(order), self._batch_size)]
        self._position = 0

    def _length_grouped_batches(self, order: list[int]) -> list[list[int]]:
        size = self.MEGABATCH * self._batch_size
        batches = []
        for start in range(0, len(order), size):
            megabatch = sorted(order[start : start + size], key=lambda i: -len(self._encoded.features[i]["input_ids"]))
            batches += [megabatch[i : i + self._batch_size] for i in range(0, len(megabatch), self._batch_size)]
        shuffled = torch.randperm(len(batches), generator=self._generator).tolist()
        return [batches[i] for i in shuffled]


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}

"""Tokenise each split once, then pad batches: an endless shuffled stream for training, in order for eval.

Batches are dicts of CPU tensors (``input_ids``, ``attention_mask``, ``token_type_ids`` when the tokenizer
makes them, ``labels``); the training loop moves them to its device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from zoft.data.sources import Examples
from zoft.errors import ZoftError

Batch = dict[str, torch.Tensor]


@dataclass
class EncodedSplit:
    features: list[dict[str, Any]]  # token ids (unpadded) and "labels" per example

    def __len__(self) -> int:
        return len(self.features)

    @property
    def labels(self) -> list[int] | list[float]:
        return [feature["labels"] for feature in self.features]


def encode(examples: Examples, tokenizer: PreTrainedTokenizerBase, max_length: int) -> EncodedSplit:
    """Tokenise every example once (pairs as text / text_pair), truncated to `max_length`, not padded."""
    if not len(examples):
        return EncodedSplit([])
    columns = [list(column) for column in zip(*examples.texts, strict=True)]
    second = columns[1] if len(columns) > 1 else None
    encoded = tokenizer(columns[0], second, truncation=True, max_length=max_length)
    keys = list(encoded.keys())
    features = [
        {**{key: encoded[key][i] for key in keys}, "labels": label} for i, label in enumerate(examples.labels)
    ]
    return EncodedSplit(features)


def collate(features: Sequence[dict[str, Any]], tokenizer: PreTrainedTokenizerBase) -> Batch:
    """Pad `features` to the longest among them; labels become long (classes) or float (regression)."""
    return dict(DataCollatorWithPadding(tokenizer, return_tensors="pt")(list(features)))


def eval_batches(
    encoded: EncodedSplit, tokenizer: PreTrainedTokenizerBase, batch_size: int
) -> Iterator[Batch]:
    """The split in its own order, `batch_size` examples at a time (the last batch may be smaller)."""
    for start in range(0, len(encoded), batch_size):
        yield collate(encoded.features[start : start + batch_size], tokenizer)


class BatchStream:
    """An endless stream of shuffled training batches that can be saved and resumed exactly.

    Every epoch visits each example once in a fresh permutation drawn from the stream's own generator.
    The last batch of an epoch keeps the leftover examples (drop_last=False), so it may be smaller.
    The state is the generator state at the start of the current epoch plus the position in it: replaying
    the permutation from there gives the very batches an uninterrupted stream would have given.
    """

    def __init__(self, encoded: EncodedSplit, tokenizer: PreTrainedTokenizerBase, batch_size: int, seed: int):
        if not len(encoded):
            raise ZoftError("the training split is empty: no batches to draw")
        self._encoded = encoded
        self._tokenizer = tokenizer
        self._batch_size = batch_size
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
        if self._position >= len(self._order):
            self._start_epoch()
        indices = self._order[self._position : self._position + self._batch_size]
        self._position += len(indices)
        self._examples_seen += len(indices)
        return collate([self._encoded.features[i] for i in indices], self._tokenizer)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON- and torch.save-friendly)."""
        return {
            "num_examples": len(self._encoded),
            "epoch_generator_state": self._epoch_start_state.tolist(),
            "position": self._position,
            "examples_seen": self._examples_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_examples"] != len(self._encoded):
            raise ZoftError(f"the saved data stream had {state['num_examples']} training examples, this one "
                            f"has {len(self._encoded)}; resuming needs the same data and data settings")
        self._generator.set_state(torch.tensor(state["epoch_generator_state"], dtype=torch.uint8))
        self._start_epoch()
        self._position = state["position"]
        self._examples_seen = state["examples_seen"]

    def _start_epoch(self) -> None:
        self._epoch_start_state = self._generator.get_state()
        self._order: list[int] = torch.randperm(len(self._encoded), generator=self._generator).tolist()
        self._position = 0

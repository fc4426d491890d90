"""A tiny random sequence classifier and its micro-batches, for the methods' unit tests (no data, no hub)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

VOCAB = 30


@pytest.fixture
def tiny_classifier() -> BertForSequenceClassification:
    """A 1-layer BERT classifier with random weights and no dropout: its loss is deterministic in train mode too."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


@pytest.fixture
def make_batch() -> Callable[[int, int], dict[str, torch.Tensor]]:
    """make_batch(size, seed): `size` random sequences of 6 tokens with random labels."""

    def make(size: int, seed: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return {"input_ids": torch.randint(VOCAB, (size, 6), generator=generator),
                "attention_mask": torch.ones(size, 6, dtype=torch.long),
                "labels": torch.randint(2, (size,), generator=generator)}

    return make

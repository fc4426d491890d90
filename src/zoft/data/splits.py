"""From a source to the splits a run uses: train, validation (held out of train), test (never touched).

Two protocols:

- the hold-out: a seeded, stratified share of the training data becomes validation (``train_limit`` may
  then trim train). Its draws come from ``numpy.random.default_rng(seed)`` through :func:`_shuffled` only,
  so that a split depends on the seed alone: not on the platform, nor on a library's shuffle that may change.
- k-shot, exactly as the MeZO paper's data script draws it (princeton-nlp/MeZO,
  medium_models/tools/generate_k_shot_data.py, from LM-BFF): ``np.random.seed(seed)``, one shuffle of the
  training file's lines, then per class (in order of first appearance) the first K lines are train and the
  next K validation. NumPy's legacy ``RandomState`` stream is frozen, so the same seed gives the very
  examples the paper trained on. ``test_limit`` caps the test splits the way its ``k-shot-1k-test`` mode
  does (a shuffle with seed 42, then the first N).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zoft.config import DataConfig
from zoft.data.sources import Examples, read_files, read_glue_folder, read_glue_hub, task_folder
from zoft.data.tasks import HUB_DATASET, TaskSpec, custom_task, get_task
from zoft.errors import ZoftError

# generate_k_shot_data.py loops over its default seeds in this order. It shuffles a file without a header
# (CoLA) in place, so there each seed's shuffle starts from the order the seeds before it left.
REFERENCE_SEEDS = (100, 13, 21, 42, 87)
TEST_LIMIT_SEED = 42  # the seed generate_k_shot_data.py shuffles a test file with before keeping its first 1,000


@dataclass
class TaskData:
    task: TaskSpec
    label_names: list[str] | None
    splits: dict[str, Examples]  # "train", "validation", "test" (+ "test_mismatched" for MNLI)
    source: str  # where the examples came from, in words


def load_task_data(cfg: DataConfig, seed: int) -> TaskData:
    """Read the task's source, then carve train and validation out of its training data: K-shot (K per
    class each, the MeZO protocol) or the hold-out (``validation_fraction``, then ``train_limit``). The test
    splits are returned as read, or capped at ``test_limit`` examples.
    """
    if cfg.k_shot is not None and cfg.train_limit is not None:
        raise ZoftError("config keys 'k_shot' and 'train_limit' exclude each other; set one of them")
    task, splits, source = _read_source(cfg)
    if cfg.k_shot is not None:
        if task.is_regression:
            raise ZoftError(f"config key 'k_shot' needs a classification task; {task.name} is regression")
        train, validation = k_shot(splits["train"], cfg.k_shot, train_file_seeds(task, seed))
    else:
        train, validation = holdout(splits["train"], cfg.validation_fraction, seed, stratify=not task.is_regression)
        if cfg.train_limit is not None:
            train = limit(train, cfg.train_limit, seed)
    tests = {name: cap(examples, cfg.test_limit, dev_file_seeds(task, seed))
             for name, examples in splits.items() if name != "train"}
    label_names = None if task.label_names is None else list(task.label_names)
    return TaskData(task, label_names, {"train": train, "validation": validation, **tests}, source)


def reference_rounds(task: TaskSpec, seed: int) -> int:
    """How often generate_k_shot_data.py has shuffled a file of `task` by the time it writes `seed`'s
    sample: once, or for a file without a header, which it shuffles in place, once per seed up to `seed`
    in its default order (CoLA seed 13: after seed 100's shuffle)."""
    return REFERENCE_SEEDS.index(seed) + 1 if not task.has_header and seed in REFERENCE_SEEDS else 1


def train_file_seeds(task: TaskSpec, seed: int) -> list[int]:
    rounds = reference_rounds(task, seed)
    return list(REFERENCE_SEEDS[:rounds]) if rounds > 1 else [seed]


def dev_file_seeds(task: TaskSpec, seed: int) -> list[int]:
    return [TEST_LIMIT_SEED] * reference_rounds(task, seed)


def reference_order(size: int, seeds: Sequence[int]) -> list[int]:
    """The order ``np.random.seed(s); np.random.shuffle(lines)`` leaves `size` lines in, for each s in turn."""
    order = np.arange(size)
    for seed in seeds:
        np.random.RandomState(seed).shuffle(order)
    return order.tolist()


def k_shot(examples: Examples, k: int, seeds: Sequence[int]) -> tuple[Examples, Examples]:
    """(train, validation): K examples of every class each, disjoint, drawn as the MeZO paper's script draws
    them (the lines in :func:`reference_order`, grouped by class in order of first appearance, the first K
    of each class for train, the next K for validation)."""
    by_label: dict[int | float, list[int]] = {}
    for index in reference_order(len(examples), seeds):
        by_label.setdefault(examples.labels[index], []).append(index)
    for label, indices in sorted(by_label.items()):
        if len(indices) < 2 * k:
            raise ZoftError(f"k_shot={k}: class {label} has {len(indices)} training examples; K-shot needs "
                            f"{2 * k} ({k} for train and {k} for validation)")
    train = [i for indices in by_label.values() for i in indices[:k]]
    validation = [i for indices in by_label.values() for i in indices[k : 2 * k]]
    return examples.subset(train), examples.subset(validation)


def cap(examples: Examples, size: int | None, seeds: Sequence[int]) -> Examples:
    """At most `size` examples: the first `size` in :func:`reference_order` (generate_k_shot_data.py's
    k-shot-1k-test mode), else all of them in the file's order."""
    if size is None or len(examples) <= size:
        return examples
    return examples.subset(reference_order(len(examples), seeds)[:size])


def _read_source(cfg: DataConfig) -> tuple[TaskSpec, dict[str, Examples], str]:
    if cfg.task.strip().lower() == "custom":
        splits, label_names = read_files(cfg.train_file, cfg.test_file, cfg.text_columns, cfg.label_column)
        assert cfg.text_columns is not None  # read_files refuses files without them
        task = custom_task(label_names, cfg.text_columns, cfg.label_column)
        return task, splits, f"files {cfg.train_file} (train), {cfg.test_file} (test)"
    task = get_task(cfg.task)
    if cfg.train_file is not None or cfg.test_file is not None:
        raise ZoftError(f"config keys 'train_file' and 'test_file' need task=custom, not '{cfg.task}'")
    if cfg.data_dir:
        data_dir = Path(cfg.data_dir).expanduser()
        return task, read_glue_folder(task, data_dir), f"glue folder {task_folder(task, data_dir)}"
    return task, read_glue_hub(task), f"hub {HUB_DATASET} {task.hub_name}"


def holdout(examples: Examples, fraction: float, seed: int, stratify: bool) -> tuple[Examples, Examples]:
    """Split `examples` into (train, validation) with `fraction` of them in validation.

    Stratified: every label keeps its share on both sides (rounded per label), and a label with at least
    two examples has at least one on each side. Both sides keep the order of the file.
    """
    if len(examples) < 2:
        raise ZoftError(f"cannot hold a validation split out of {len(examples)} training example(s)")
    rng = np.random.default_rng(seed)
    groups = _groups_by_label(examples) if stratify else [list(range(len(examples)))]
    held_out: list[int] = []
    for group in groups:
        if len(group) < 2:
            continue  # a lone example has to stay in train, where it can be learnt from
        size = min(max(round(fraction * len(group)), 1), len(group) - 1)
        held_out += _shuffled(group, rng)[:size]
    if not held_out:
        raise ZoftError("the validation split would be empty: no label has two training examples")
    held = set(held_out)
    train = [i for i in range(len(examples)) if i not in held]
    return examples.subset(train), examples.subset(sorted(held))


def limit(examples: Examples, n: int, seed: int) -> Examples:
    """A subsample of `n` examples, stratified by label for classification (largest remainders)."""
    if n >= len(examples):
        return examples
    rng = np.random.default_rng(seed)
    if examples.is_regression:
        return examples.subset(sorted(_shuffled(range(len(examples)), rng)[:n]))
    groups = _groups_by_label(examples)
    chosen: list[int] = []
    for group, size in zip(groups, _allocate(n, [len(g) for g in groups]), strict=True):
        chosen += _shuffled(group, rng)[:size]
    return examples.subset(sorted(chosen))


def _allocate(n: int, sizes: list[int]) -> list[int]:
    """Split `n` over groups in proportion to `sizes`; the remainder goes to the largest fractional parts."""
    total = sum(sizes)
    quotas = [n * size / total for size in sizes]
    counts = [math.floor(quota) for quota in quotas]
    by_remainder = sorted(range(len(sizes)), key=lambda i: counts[i] - quotas[i])  # stable: ties by label
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _labels(examples: Examples) -> list[int | float]:
    return sorted(set(examples.labels))


def _groups_by_label(examples: Examples) -> list[list[int]]:
    """Indices of the examples of each label, labels in ascending order."""
    groups: dict[int | float, list[int]] = {label: [] for label in _labels(examples)}
    for i, label in enumerate(examples.labels):
        groups[label].append(i)
    return list(groups.values())


def _shuffled(indices: Sequence[int] | range, rng: np.random.Generator) -> list[int]:
    # Sorting uniform draws only relies on the bit generator and its doubles, which NumPy keeps stable;
    # Generator.permutation's algorithm is not covered by that promise.
    order = np.argsort(rng.random(len(indices)), kind="stable")
    return [indices[i] for i in order]

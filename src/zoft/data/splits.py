"""From a source to the splits a run uses: train, validation (held out of train), test (never touched).

All sampling here draws from ``numpy.random.default_rng(seed)`` through :func:`_shuffled` only, so that a
split depends on the seed alone: not on the platform, nor on a library's shuffle that may change.
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


@dataclass
class TaskData:
    task: TaskSpec
    label_names: list[str] | None
    splits: dict[str, Examples]  # "train", "validation", "test" (+ "test_mismatched" for MNLI)
    source: str  # where the examples came from, in words


def load_task_data(cfg: DataConfig, seed: int) -> TaskData:
    """Read the task's source, hold validation out of train, then apply k_shot or train_limit.

    k_shot keeps K examples per class in both train and validation (the MeZO protocol, where the dev
    set used for model selection is K-shot too); train_limit trims train only. The test splits are
    returned as read.
    """
    if cfg.k_shot is not None and cfg.train_limit is not None:
        raise ZoftError("config keys 'k_shot' and 'train_limit' exclude each other; set one of them")
    task, splits, source = _read_source(cfg)
    stratify = not task.is_regression
    train, validation = holdout(splits["train"], cfg.validation_fraction, seed, stratify=stratify)
    if cfg.k_shot is not None:
        if task.is_regression:
            raise ZoftError(f"config key 'k_shot' needs a classification task; {task.name} is regression")
        train = k_shot(train, cfg.k_shot, seed, split="train")
        validation = k_shot(validation, cfg.k_shot, seed, split="validation")
    elif cfg.train_limit is not None:
        train = limit(train, cfg.train_limit, seed)
    tests = {name: examples for name, examples in splits.items() if name != "train"}
    label_names = None if task.label_names is None else list(task.label_names)
    return TaskData(task, label_names, {"train": train, "validation": validation, **tests}, source)


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


def k_shot(examples: Examples, k: int, seed: int, split: str = "train") -> Examples:
    """K examples of every class, drawn at random; a class with fewer than K is an error."""
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for label, group in zip(_labels(examples), _groups_by_label(examples), strict=True):
        if len(group) < k:
            raise ZoftError(f"k_shot={k}: class {label} has only {len(group)} examples in the {split} split; "
                            f"lower k_shot, or raise validation_fraction if it is the validation split")
        chosen += _shuffled(group, rng)[:k]
    return examples.subset(sorted(chosen))


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

"""The GLUE metrics of a task, and the majority-class baseline every accuracy should be read against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as sk

from zoft.data.tasks import TaskSpec

ArrayLike = Sequence[Any] | np.ndarray


def compute_metrics(task: TaskSpec, predictions: ArrayLike, labels: ArrayLike) -> dict[str, float]:
    """{metric: value} for each of `task.metrics`.

    `predictions` are class indices (or logits of shape (n, classes), argmaxed here) for classification,
    scores for regression. A correlation of a constant vector is undefined: Matthews gives 0.0 (sklearn's
    convention), Pearson and Spearman give nan.
    """
    predicted = _as_predictions(task, predictions)
    truth = np.asarray(labels, dtype=float if task.is_regression else int).reshape(-1)
    if predicted.shape != truth.shape or truth.size == 0:
        raise ValueError(f"need as many predictions as labels (>= 1): {predicted.size} vs {truth.size}")
    return {name: float(METRICS[name](predicted, truth)) for name in task.metrics}


def majority_baseline(task: TaskSpec, test_labels: ArrayLike) -> dict[str, float]:
    """The metrics of predicting the most frequent test label everywhere (regression: the mean score).

    Classification adds "label" (the class index, the lowest on a tie) and "share" (its fraction);
    regression adds "mean" and "mse".
    """
    if task.is_regression:
        scores = np.asarray(test_labels, dtype=float)
        mean = float(scores.mean())
        constant = np.full_like(scores, mean)
        mse = float(np.mean((scores - mean) ** 2))
        return {**compute_metrics(task, constant, scores), "mean": mean, "mse": mse}
    classes = np.asarray(test_labels, dtype=int)
    counts = np.bincount(classes, minlength=task.num_labels)
    label = int(np.argmax(counts))
    constant = np.full_like(classes, label)
    share = float(counts[label] / classes.size)
    return {**compute_metrics(task, constant, classes), "label": label, "share": share}


def _as_predictions(task: TaskSpec, predictions: ArrayLike) -> np.ndarray:
    values = np.asarray(predictions, dtype=float)
    if task.is_regression:
        return values.reshape(-1)
    if values.ndim == 2:
        return values.argmax(axis=1)
    return values.astype(int)


def _accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    return sk.accuracy_score(truth, predicted)


def _f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    return sk.f1_score(truth, predicted, pos_label=1, average="binary", zero_division=0.0)


def _matthews(predicted: np.ndarray, truth: np.ndarray) -> float:
    return sk.matthews_corrcoef(truth, predicted)


def _is_constant(values: np.ndarray) -> bool:
    return bool(np.all(values == values[0]))


def _pearson(predicted: np.ndarray, truth: np.ndarray) -> float:
    # scipy warns on a constant input; a model that predicts one score is common early on, so no warning
    if _is_constant(predicted) or _is_constant(truth):
        return float("nan")
    return stats.pearsonr(predicted, truth).statistic


def _spearman(predicted: np.ndarray, truth: np.ndarray) -> float:
    if _is_constant(predicted) or _is_constant(truth):
        return float("nan")
    return stats.spearmanr(predicted, truth).statistic


METRICS = {
    "accuracy": _accuracy,
    "f1": _f1,
    "matthews": _matthews,
    "pearson": _pearson,
    "spearman": _spearman,
}

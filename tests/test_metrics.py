"""Metrics against values worked out by hand, and the majority-class baseline."""

import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from zoft.data.sources import read_glue_folder
from zoft.data.tasks import get_task
from zoft.metrics import compute_metrics, majority_baseline

REAL_GLUE = (Path(__file__).resolve().parents[1] / "../shared/glue_data").resolve()

# labels 1 1 1 0 0 0, predictions 1 1 0 0 0 1: TP 2, FN 1, TN 2, FP 1
LABELS = [1, 1, 1, 0, 0, 0]
PREDICTIONS = [1, 1, 0, 0, 0, 1]


def test_accuracy_and_f1_by_hand():
    result = compute_metrics(get_task("mrpc"), PREDICTIONS, LABELS)
    assert result == pytest.approx({"accuracy": 4 / 6, "f1": 2 / 3})  # precision = recall = 2/3
    assert all(type(value) is float for value in result.values())


def test_matthews_by_hand():
    # (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 − 1) / sqrt(3·3·3·3) = 1/3
    assert compute_metrics(get_task("cola"), PREDICTIONS, LABELS) == pytest.approx({"matthews": 1 / 3})


def test_logits_are_argmaxed():
    logits = np.array([[0.1, 0.9], [2.0, -1.0], [0.0, 0.5]])
    assert compute_metrics(get_task("sst2"), logits, [1, 0, 0])["accuracy"] == pytest.approx(2 / 3)


def test_pearson_and_spearman_by_hand():
    # deviations x: −1.5 −0.5 0.5 1.5, y: −3 −1 0 4 → r = 11 / sqrt(5 · 26)
    result = compute_metrics(get_task("stsb"), [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0])
    assert result == pytest.approx({"pearson": 11 / math.sqrt(130), "spearman": 1.0})
    # ranks 1 3 2 4 against 1 2 3 4: rho = 1 − 6·2 / (4·15) = 0.8
    swapped = compute_metrics(get_task("stsb"), [1.0, 2.0, 3.0, 4.0], [2.0, 5.0, 4.0, 9.0])
    assert swapped["spearman"] == pytest.approx(0.8)


def test_constant_predictions_give_defined_values_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compute_metrics(get_task("cola"), [1] * 6, LABELS) == {"matthews": 0.0}
        assert compute_metrics(get_task("mrpc"), [0] * 6, LABELS) == {"accuracy": 0.5, "f1": 0.0}
        result = compute_metrics(get_task("stsb"), [2.5] * 4, [1.0, 2.0, 3.0, 4.0])
    assert math.isnan(result["pearson"]) and math.isnan(result["spearman"])


def test_mismatched_lengths_are_a_bug():
    with pytest.raises(ValueError, match="as many predictions as labels"):
        compute_metrics(get_task("rte"), [0, 1], [0])


def test_majority_baseline_picks_the_most_frequent_label():
    result = majority_baseline(get_task("mrpc"), [*LABELS, 1])
    assert result == pytest.approx({"accuracy": 4 / 7, "f1": 8 / 11, "label": 1, "share": 4 / 7})


def test_majority_baseline_of_regression_predicts_the_mean():
    result = majority_baseline(get_task("stsb"), [1.0, 2.0, 3.0, 4.0])
    assert result["mean"] == 2.5 and result["mse"] == 1.25
    assert math.isnan(result["pearson"])


def test_majority_baseline_of_mrpc_dev_is_279_of_408():
    if not (REAL_GLUE / "MRPC" / "dev.tsv").is_file():
        pytest.skip(f"real GLUE data not found at {REAL_GLUE}")
    test = read_glue_folder(get_task("mrpc"), REAL_GLUE)["test"]
    result = majority_baseline(get_task("mrpc"), test.labels)
    assert result["label"] == 1
    assert result["accuracy"] == result["share"] == 279 / 408
    assert round(result["accuracy"] * 100, 2) == 68.38

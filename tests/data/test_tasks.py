import pytest

from zoft.data.tasks import TASKS, custom_task, get_task
from zoft.errors import ZoftError


def test_all_nine_glue_tasks_are_described():
    assert set(TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}


@pytest.mark.parametrize(
    ("name", "expected"),
    [("MRPC", "mrpc"), ("sst-2", "sst2"), ("SST-2", "sst2"), ("sts-b", "stsb"), ("STS-B", "stsb"),
     ("Rte", "rte")],
)
def test_get_task_accepts_glue_spellings(name, expected):
    assert get_task(name).name == expected


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ZoftError, match="unknown task 'mrcp'; known tasks: cola, sst2, mrpc"):
        get_task("mrcp")


def test_metrics_and_main_metric():
    assert get_task("mrpc").metrics == ("accuracy", "f1")
    assert get_task("qqp").metrics == ("accuracy", "f1")
    assert get_task("cola").main_metric == "matthews"
    assert get_task("stsb").metrics == ("pearson", "spearman")
    assert get_task("stsb").main_metric == "pearson"
    assert {TASKS[name].main_metric for name in ("sst2", "mnli", "qnli", "rte", "wnli")} == {"accuracy"}


def test_label_shapes():
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert get_task("mnli").num_labels == 3
    assert get_task("rte").label_names == ("entailment", "not_entailment")
    assert not get_task("sst2").is_pair and get_task("mrpc").is_pair


def test_hub_labels_map_onto_file_labels():
    for task in TASKS.values():
        if task.is_regression:
            assert task.hub_label_names is None
        else:
            assert sorted(task.hub_label_names) == sorted(task.label_names), task.name


def test_mnli_has_two_test_splits():
    assert get_task("mnli").test_splits == ("test", "test_mismatched")


def test_custom_task_metrics_depend_on_the_number_of_classes():
    assert custom_task(["neg", "pos"], ["text"], "label").metrics == ("accuracy", "f1")
    assert custom_task(["a", "b", "c"], ["text"], "label").metrics == ("accuracy",)

"""The users' own CSV / TSV / JSONL files (task=custom)."""

import json

import pytest

from zoft.data.sources import read_files
from zoft.errors import ZoftError


def _csv(path, text):
    path.write_text(text)
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_csv_with_quoted_commas_and_string_labels(tmp_path):
    train = _csv(tmp_path / "train.csv", 'text,label\n"good, really",pos\nbad,neg\nfine,pos\n')
    test = _csv(tmp_path / "test.csv", "text,label\nawful,neg\n")
    splits, label_names = read_files(train, test, ["text"], "label")
    assert label_names == ["neg", "pos"]
    assert splits["train"].texts == [("good, really",), ("bad",), ("fine",)]
    assert splits["train"].labels == [1, 0, 1]
    assert splits["test"].labels == [0]


def test_tsv_pairs(tmp_path):
    train = _csv(tmp_path / "train.tsv", "a\tb\ty\nx1\tx2\t0\ny1\ty2\t1\n")
    splits, label_names = read_files(train, train, ["a", "b"], "y")
    assert label_names == ["0", "1"]
    assert splits["train"].texts == [("x1", "x2"), ("y1", "y2")]


def test_jsonl_integer_labels_sort_numerically(tmp_path):
    rows = [{"q": "a", "label": 10}, {"q": "b", "label": 2}, {"q": "c", "label": 1.0}]
    train = _jsonl(tmp_path / "train.jsonl", rows)
    splits, label_names = read_files(train, train, ["q"], "label")
    assert label_names == ["1", "2", "10"]
    assert splits["train"].labels == [2, 1, 0]


def test_jsonl_skips_blank_lines_and_counts_lines(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"t": "a", "label": "x"}\n\n{"t": "b", "label": "y"}\n{"t": "c"\n')
    with pytest.raises(ZoftError, match=r"train\.jsonl line 4: not valid JSON"):
        read_files(train, train, ["t"], "label")


def test_missing_column_names_file_and_columns(tmp_path):
    train = _csv(tmp_path / "train.csv", "sentence,label\nhi,a\nho,b\n")
    with pytest.raises(ZoftError) as error:
        read_files(train, train, ["text"], "label")
    assert str(error.value) == f"{train} line 2: no column 'text'; it has sentence, label"


def test_missing_text_columns_lists_the_file_columns(tmp_path):
    train = _csv(tmp_path / "train.csv", "sentence,label\nhi,a\nho,b\n")
    with pytest.raises(ZoftError, match=r"needs text_columns \(one or two of: sentence, label\)"):
        read_files(train, train, None, "label")


def test_test_label_must_occur_in_train(tmp_path):
    train = _csv(tmp_path / "train.csv", "text,label\na,pos\nb,neg\n")
    test = _csv(tmp_path / "test.csv", "text,label\nc,pos\nd,neutral\n")
    with pytest.raises(ZoftError) as error:
        read_files(train, test, ["text"], "label")
    assert str(error.value) == (
        f"{test} line 3: label 'neutral' does not occur in {train}; known labels: neg, pos"
    )


def test_malformed_csv_row(tmp_path):
    train = _csv(tmp_path / "train.csv", "text,label\na,pos\nb,neg,extra\n")
    with pytest.raises(ZoftError, match=r"train\.csv line 3: expected 2 columns \(text, label\), found 3"):
        read_files(train, train, ["text"], "label")


def test_fractional_labels_are_refused(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"t": "a", "label": 0.5}, {"t": "b", "label": 1}])
    with pytest.raises(ZoftError, match=r"line 1: label 0\.5 is not a class name; task=custom supports"):
        read_files(train, train, ["t"], "label")


def test_a_single_class_is_refused(tmp_path):
    train = _csv(tmp_path / "train.csv", "text,label\na,pos\nb,pos\n")
    with pytest.raises(ZoftError, match="has a single value"):
        read_files(train, train, ["text"], "label")


def test_both_files_are_required(tmp_path):
    with pytest.raises(ZoftError, match="task=custom needs both train_file and test_file"):
        read_files(tmp_path / "train.csv", None, ["text"], "label")


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(ZoftError, match="not found"):
        read_files(tmp_path / "nope.csv", tmp_path / "nope.csv", ["text"], "label")
    parquet = _csv(tmp_path / "train.parquet", "")
    with pytest.raises(ZoftError, match=r"unsupported file type '\.parquet'; use \.csv, \.tsv or \.jsonl"):
        read_files(parquet, parquet, ["text"], "label")

"""Fuzzed readers: the GLUE TSV reader and the CSV / TSV / JSONL reader of task=custom, on random bytes and on
random rows that look well formed, either parse or raise a ZoftError (one line, naming the file), never
another exception. Derandomized, so a CI run tries the same examples every time."""

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoft.data.sources import read_files, read_glue_folder
from zoft.data.tasks import get_task
from zoft.errors import ZoftError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# cells that come close to what breaks a reader: separators, quotes, line ends, NUL, a byte-order mark,
# labels and numbers in odd spellings
TRICKY = st.sampled_from(["\t", ",", '"', "'", "\n", "\r", "\r\n", "\x00", "\ufeff", " ", "", "1", "-1", "0.5",
                          "1e400", "nan", "inf", "²", "٣", "entailment", "not_entailment", "label", "text"])
CELL = st.one_of(st.text(max_size=12), TRICKY, st.lists(TRICKY, max_size=4).map("".join))


def glue_folder(root: Path, task_name: str, content: bytes) -> Path:
    task = get_task(task_name)
    folder = root / task.glue_dir
    folder.mkdir()
    for name in [task.train_file, *(name for _, name in task.test_files)]:
        (folder / name).write_bytes(content)
    return root


GLUE_TASKS = ["rte", "stsb", "cola", "mnli"]


@pytest.mark.parametrize("task_name", GLUE_TASKS)
@FUZZ
@given(content=st.binary(max_size=600))
def test_glue_reader_on_random_bytes(task_name, content, parses_or_one_line_error):
    task = get_task(task_name)
    with tempfile.TemporaryDirectory() as root:
        parses_or_one_line_error(lambda: read_glue_folder(task, glue_folder(Path(root), task_name, content)))


def tsv(rows: list[list[str]]) -> bytes:
    return "".join("\t".join(row) + "\n" for row in rows).encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("task_name", GLUE_TASKS)
@FUZZ
@given(data=st.data())
def test_glue_reader_on_rows_that_look_right(task_name, data, parses_or_one_line_error):
    task = get_task(task_name)
    width = task.expected_columns or 4
    header = [[str(c) for c in range(width)]]
    if task.has_header:  # the real header, or one a column short or renamed
        real = {"rte": ["index", "sentence1", "sentence2", "label"],
                "stsb": ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1",
                         "sentence2", "score"]}.get(task_name)
        if real is None:
            real = [str(task.label_column), *map(str, task.text_columns)]
        header = [data.draw(st.one_of(st.just(real), st.lists(st.one_of(st.sampled_from(real), CELL),
                                                                   max_size=len(real) + 1)))]
    columns = len(header[0]) if task.has_header else width
    row = st.lists(CELL, min_size=max(columns - 1, 0), max_size=columns + 1)
    rows = data.draw(st.lists(row, max_size=6))
    content = tsv((header if task.has_header else []) + rows)
    with tempfile.TemporaryDirectory() as root:
        parses_or_one_line_error(lambda: read_glue_folder(task, glue_folder(Path(root), task_name, content)))


SUFFIXES = [".csv", ".tsv", ".jsonl"]


def custom_files(root: Path, suffix: str, train: bytes, test: bytes) -> tuple[Path, Path]:
    paths = root / f"train{suffix}", root / f"test{suffix}"
    paths[0].write_bytes(train)
    paths[1].write_bytes(test)
    return paths


@pytest.mark.parametrize("suffix", SUFFIXES)
@FUZZ
@given(train=st.binary(max_size=400), test=st.binary(max_size=200))
def test_custom_reader_on_random_bytes(suffix, train, test, parses_or_one_line_error):
    with tempfile.TemporaryDirectory() as root:
        train_path, test_path = custom_files(Path(root), suffix, train, test)
        parses_or_one_line_error(lambda: read_files(train_path, test_path, ["text"], "label"))


def delimited(rows: list[list[str]], delimiter: str) -> bytes:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter).writerows(rows)
    return out.getvalue().encode("utf-8", "surrogatepass")


JSON_VALUE = st.one_of(CELL, st.integers(), st.integers(min_value=10**300, max_value=10**4000),
                       st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
                       st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                            max_size=2))
KEYS = st.one_of(st.sampled_from(["text", "label", "a", "b"]), st.text(max_size=4))


@pytest.mark.parametrize("suffix", SUFFIXES)
@FUZZ
@given(data=st.data())
def test_custom_reader_on_rows_that_look_right(suffix, data, parses_or_one_line_error):
    text_columns = data.draw(st.sampled_from([["text"], ["a", "b"]]))
    if suffix == ".jsonl":
        record = st.dictionaries(KEYS, JSON_VALUE, max_size=4)
        too_long = st.just('{"text": "a", "label": ' + "9" * 5000 + "}")  # past Python's int-string limit
        lines = st.lists(st.one_of(record.map(json.dumps), st.just(""), CELL, JSON_VALUE.map(json.dumps), too_long,
                                   st.just("[" * 100_000)), max_size=6)
        train, test = ("\n".join(data.draw(lines)).encode("utf-8", "surrogatepass") for _ in range(2))
    else:
        header = data.draw(st.one_of(st.just([*text_columns, "label"]), st.lists(KEYS, max_size=4)))
        row = st.lists(CELL, min_size=max(len(header) - 1, 0), max_size=len(header) + 1)
        delimiter = "," if suffix == ".csv" else "\t"
        train, test = (delimited([header, *data.draw(st.lists(row, max_size=6))], delimiter) for _ in range(2))
    with tempfile.TemporaryDirectory() as root:
        train_path, test_path = custom_files(Path(root), suffix, train, test)
        parses_or_one_line_error(lambda: read_files(train_path, test_path, text_columns, "label"))


# -- what the fuzzing found, each pinned as its own case --------------------------------------------------


def test_labels_of_unicode_digits_sort_as_text(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,²\nb,1\n")  # "²".isdigit() holds, int("²") fails
    _, names = read_files(train, train, ["text"], "label")
    assert names == ["1", "²"]


def test_an_integer_label_too_large_for_a_float_is_a_class_name(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"text": "a", "label": 10**400}) + "\n" + json.dumps({"text": "b", "label": 1}) + "\n")
    _, names = read_files(train, train, ["text"], "label")
    assert names == ["1", str(10**400)]


@pytest.mark.parametrize(("line", "reason"), [('{"label": ' + "9" * 5000 + "}", "Exceeds the limit"),
                                              ("[" * 100_000, "nested too deeply")])
def test_json_that_python_cannot_read_names_the_line(tmp_path, line, reason):
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "a", "label": 1}\n' + line + "\n")
    with pytest.raises(ZoftError, match=rf"train\.jsonl line 2: not valid JSON here \({reason}"):
        read_files(train, train, ["text"], "label")


def test_a_csv_field_past_the_csv_modules_limit_names_the_line(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\na,1\n" + "x" * 200_000 + ",0\n")
    with pytest.raises(ZoftError, match=r"train\.csv line 3: field larger than field limit"):
        read_files(train, train, ["text"], "label")


def test_a_glue_field_past_the_csv_modules_limit_names_the_line(tmp_path):
    content = ("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\t" + "x" * 200_000
               + "\tb\tentailment\n").encode()
    with pytest.raises(ZoftError, match=r"train\.tsv line 3: field larger than field limit"):
        read_glue_folder(get_task("rte"), glue_folder(tmp_path, "rte", content))


@pytest.mark.parametrize(("content", "message"), [(b"", "no column 'sentence1' in the header; it has none"),
                                                  (b"index\tsentence1\xff\n", "not UTF-8 text")],
                         ids=["empty", "not-utf8"])
def test_an_empty_or_non_utf8_glue_file_is_one_line(tmp_path, content, message):
    with pytest.raises(ZoftError, match=rf"train\.tsv:? {message}"):
        read_glue_folder(get_task("rte"), glue_folder(tmp_path, "rte", content))


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize(("content", "message"), [(b"", "holds no examples"), (b"\xfftext,label\n", "not UTF-8 text")],
                         ids=["empty", "not-utf8"])
def test_an_empty_or_non_utf8_custom_file_is_one_line(tmp_path, suffix, content, message):
    train, test = custom_files(tmp_path, suffix, content, content)
    with pytest.raises(ZoftError, match=rf"train{suffix}:? {message}"):
        read_files(train, test, ["text"], "label")

"""Three sources of examples behind one container: a GLUE folder, the Hugging Face hub, the user's files."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import datasets

from zoft.data.tasks import HUB_DATASET, Column, TaskSpec
from zoft.errors import ZoftError, first_line
from zoft.hub import require_hub


@dataclass
class Examples:
    texts: list[tuple[str, ...]]  # one or two strings per example
    labels: list[int] | list[float]  # class index into label_names, or a float for regression

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def is_regression(self) -> bool:
        return any(isinstance(label, float) for label in self.labels)

    def subset(self, indices: Sequence[int]) -> Examples:
        return Examples([self.texts[i] for i in indices], [self.labels[i] for i in indices])


# ---------------------------------------------------------------------------------------------------------
# GLUE folder


def read_glue_folder(task: TaskSpec, data_dir: str | Path) -> dict[str, Examples]:
    """{"train", "test"} (MNLI: also "test_mismatched") from `data_dir` in the GLUE layout.

    The test splits are GLUE's dev files, the ones with public labels. `data_dir` may also be the task's
    own folder (``.../MRPC``).
    """
    folder = task_folder(task, Path(data_dir))
    files = [("train", task.train_file), *task.test_files]
    return {split: _read_glue_file(task, folder / name) for split, name in files}


def task_folder(task: TaskSpec, data_dir: Path) -> Path:
    if task.glue_dir is None:
        raise ZoftError(f"task {task.name} has no GLUE folder")
    if data_dir.name == task.glue_dir and (data_dir / task.train_file).is_file():
        return data_dir
    folder = data_dir / task.glue_dir
    if not folder.is_dir():
        raise ZoftError(f"{folder} not found; expected the GLUE layout {folder / task.train_file}")
    return folder


def _read_glue_file(task: TaskSpec, path: Path) -> Examples:
    if not path.is_file():
        raise ZoftError(f"{path} not found; the GLUE {task.glue_dir} folder should hold "
                        f"{', '.join([task.train_file, *(name for _, name in task.test_files)])}")
    # utf-8-sig drops the byte-order mark that starts MRPC's files; QUOTE_NONE keeps bare quotes as text.
    with _utf8(path) as handle:
        rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        examples = _parse_rows(task, path, _numbered(rows, path))
    if not examples:
        raise ZoftError(f"{path} holds no examples")
    return examples


@contextmanager
def _utf8(path: Path) -> Iterator[TextIO]:
    """The file as text, byte-order mark dropped; bytes that are not UTF-8 become a one-line error."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            yield handle
    except UnicodeDecodeError as error:
        raise ZoftError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _numbered(rows: Any, path: Path) -> Iterator[tuple[int, list[str]]]:
    """The rows of a csv reader with their line numbers; what the csv module refuses (a field past its size
    limit) is a one-line error naming the line."""
    iterator = iter(rows)
    while True:
        try:
            row = next(iterator)
        except StopIteration:
            return
        except csv.Error as error:
            raise ZoftError(f"{path} line {rows.line_num}: {error}") from None
        yield rows.line_num, row


def _parse_rows(task: TaskSpec, path: Path, rows: Iterator[tuple[int, list[str]]]) -> Examples:
    if task.has_header:
        header = [cell.strip() for cell in next(rows, (0, []))[1]]
        width = len(header)
        text_indices = [_column_index(path, header, column) for column in task.text_columns]
        label_index = _column_index(path, header, task.label_column)
    else:
        width = task.expected_columns or 0
        text_indices = [int(column) for column in task.text_columns]
        label_index = int(task.label_column)
    texts: list[tuple[str, ...]] = []
    labels: list[Any] = []
    for line, row in rows:
        if len(row) != width:
            raise ZoftError(f"{path} line {line}: expected {width} tab-separated columns, found {len(row)}")
        texts.append(tuple(row[i] for i in text_indices))
        labels.append(_glue_label(task, path, line, row[label_index]))
    return Examples(texts, labels)


def _column_index(path: Path, header: list[str], column: Column) -> int:
    if column not in header:
        raise ZoftError(f"{path}: no column '{column}' in the header; it has {', '.join(header) or 'none'}")
    return header.index(str(column))


def _glue_label(task: TaskSpec, path: Path, line: int, raw: str) -> int | float:
    value = raw.strip()
    if task.label_names is None:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise ZoftError(f"{path} line {line}: score {raw!r} is not a number")
        return score
    if value not in task.label_names:
        raise ZoftError(f"{path} line {line}: unknown label {raw!r}; expected one of "
                        f"{', '.join(task.label_names)}")
    return task.label_names.index(value)


# ---------------------------------------------------------------------------------------------------------
# Hugging Face hub


def read_glue_hub(task: TaskSpec) -> dict[str, Examples]:
    """The same splits as :func:`read_glue_folder`, downloaded from ``nyu-mll/glue``."""
    if task.hub_name is None:
        raise ZoftError(f"task {task.name} is not on the hub")
    require_hub(f"download GLUE {task.name} from {HUB_DATASET}",
                "pass --data-dir <folder in the GLUE layout> or set GLUE_DIR")
    dataset = _load_hub_dataset(task.hub_name)
    splits = [("train", "train"), *task.hub_test_splits]
    return {split: _hub_examples(task, dataset[hub_split]) for split, hub_split in splits}


def _load_hub_dataset(hub_name: str) -> Any:
    try:
        return datasets.load_dataset(HUB_DATASET, hub_name)
    except Exception as error:  # any failure of the download is the user's to see, in one line
        raise ZoftError(f"could not load {HUB_DATASET} {hub_name} from the hub: {first_line(error)}") from None


def _hub_examples(task: TaskSpec, split: Any) -> Examples:
    columns = split.to_dict()  # one Arrow conversion; iterating a datasets Column is ~100x slower
    texts = [tuple(values) for values in zip(*(columns[name] for name in task.hub_text_columns), strict=True)]
    if task.label_names is None:
        return Examples(texts, [float(score) for score in columns["label"]])
    assert task.hub_label_names is not None
    ours = [task.label_names.index(name) for name in task.hub_label_names]
    return Examples(texts, [ours[label] for label in columns["label"]])


# ---------------------------------------------------------------------------------------------------------
# the user's CSV / TSV / JSONL files

DELIMITERS = {".csv": ",", ".tsv": "\t"}
JSON_LINES = (".jsonl", ".json")


def read_files(
    train_file: str | Path | None,
    test_file: str | Path | None,
    text_columns: Sequence[str] | None,
    label_column: str,
) -> tuple[dict[str, Examples], list[str]]:
    """{"train", "test"} and the label names from the user's own files (classification only).

    Label names are the distinct training labels as strings, sorted (numerically when they are all
    integers); every test label must be one of them.
    """
    if train_file is None or test_file is None:
        raise ZoftError("task=custom needs both train_file and test_file")
    train_path, test_path = Path(train_file), Path(test_file)
    train_rows = _read_records(train_path, text_columns, label_column)
    label_names = _sorted_labels({label for _, _, label in train_rows})
    if len(label_names) < 2:
        raise ZoftError(f"{train_path}: column '{label_column}' has a single value {label_names}; "
                        f"classification needs at least two")
    test_rows = _read_records(test_path, text_columns, label_column)
    for line, _, label in test_rows:
        if label not in label_names:
            raise ZoftError(f"{test_path} line {line}: label {label!r} does not occur in {train_path}; "
                            f"known labels: {', '.join(label_names)}")
    splits = {
        "train": _to_examples(train_rows, label_names),
        "test": _to_examples(test_rows, label_names),
    }
    return splits, label_names


Record = tuple[int, tuple[str, ...], str]  # (line number, texts, label)


def _read_records(path: Path, text_columns: Sequence[str] | None, label_column: str) -> list[Record]:
    if not path.is_file():
        raise ZoftError(f"{path} not found")
    suffix = path.suffix.lower()
    if suffix in DELIMITERS:
        rows, columns = _csv_rows(path, DELIMITERS[suffix])
    elif suffix in JSON_LINES:
        rows, columns = _json_rows(path)
    else:
        raise ZoftError(f"{path}: unsupported file type '{suffix}'; use .csv, .tsv or .jsonl")
    if not text_columns:
        raise ZoftError(f"task=custom needs text_columns (one or two of: {', '.join(columns)})")
    records = []
    for line, row in rows:
        for column in [*text_columns, label_column]:
            if column not in row:
                raise ZoftError(f"{path} line {line}: no column '{column}'; it has {', '.join(row)}")
        texts = tuple(_text(path, line, column, row[column]) for column in text_columns)
        records.append((line, texts, _label_text(path, line, row[label_column])))
    if not records:
        raise ZoftError(f"{path} holds no examples")
    return records


def _csv_rows(path: Path, delimiter: str) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    with _utf8(path) as handle:
        numbered = _numbered(csv.reader(handle, delimiter=delimiter), path)
        columns = [cell.strip() for cell in next(numbered, (0, []))[1]]
        rows = []
        for line, row in numbered:
            if not row:
                continue  # a blank line holds no example
            if len(row) != len(columns):
                raise ZoftError(f"{path} line {line}: expected {len(columns)} columns "
                                f"({', '.join(columns)}), found {len(row)}")
            rows.append((line, dict(zip(columns, row, strict=True))))
    return rows, columns


def _json_rows(path: Path) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    rows = []
    with _utf8(path) as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue  # blank lines separate nothing in JSON Lines; they hold no example
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                raise ZoftError(f"{path} line {line}: not valid JSON ({error.msg})") from None
            except ValueError as error:  # an integer of more digits than Python converts (4300)
                raise ZoftError(f"{path} line {line}: not valid JSON here ({first_line(error)})") from None
            except RecursionError:
                raise ZoftError(f"{path} line {line}: not valid JSON here (nested too deeply)") from None
            if not isinstance(row, dict):
                raise ZoftError(f"{path} line {line}: expected a JSON object, got {type(row).__name__}")
            rows.append((line, row))
    return rows, list(rows[0][1]) if rows else []


def _text(path: Path, line: int, column: str, value: Any) -> str:
    if value is None or isinstance(value, (dict, list)):
        raise ZoftError(f"{path} line {line}: column '{column}' holds {value!r}, not a text")
    return str(value)


def _label_text(path: Path, line: int, value: Any) -> str:
    """A class name: strings as written, integers (also 1.0) as digits; fractional numbers are refused."""
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        raise ZoftError(f"{path} line {line}: label {value!r} is not a class name")
    if isinstance(value, int):
        return str(value)  # exactly, however large (float() of a 400-digit integer overflows)
    if isinstance(value, float):
        number = value
    else:
        value = str(value).strip()
        try:
            number = float(value)
        except ValueError:
            if not value:
                raise ZoftError(f"{path} line {line}: empty label") from None
            return value
    if not number.is_integer():  # also inf and nan
        raise ZoftError(f"{path} line {line}: label {value!r} is not a class name; "
                        f"task=custom supports classification only")
    return str(int(number))


def _sorted_labels(labels: set[str]) -> list[str]:
    # ASCII digits only: str.isdigit() also holds for "²", which int() refuses
    if all(re.fullmatch(r"-?[0-9]+", label) for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _to_examples(records: list[Record], label_names: list[str]) -> Examples:
    index = {name: i for i, name in enumerate(label_names)}
    return Examples([texts for _, texts, _ in records], [index[label] for _, _, label in records])

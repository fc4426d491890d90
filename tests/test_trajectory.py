"""trajectory.bin: the record layout, a torn last record, truncation for a resume, damaged files."""

import pytest

from zoft import trajectory
from zoft.errors import ZoftError
from zoft.trajectory import StepRecord

RECORDS = [StepRecord(1, 1e-3, (2**53 - 1,), (0.25,)), StepRecord(2, 9.5e-4, (7, 8), (-1.5, 1e-300)),
           StepRecord(3, 9e-4, (9,), (3.0,))]


def written(tmp_path, records=RECORDS):
    path = tmp_path / "trajectory.bin"
    trajectory.create(path, device="cpu")
    for record in records:
        trajectory.append(path, record)
    return path


def test_records_round_trip_exactly_in_14_plus_16_n_bytes(tmp_path):
    path = written(tmp_path)
    read = trajectory.read(path)
    assert read.records == RECORDS and read.device == "cpu" and read.torn_bytes == 0 and read.last_step == 3
    assert [trajectory.record_size(n) for n in (1, 2)] == [30, 46]
    assert path.stat().st_size == read.header_size + 30 + 46 + 30


def test_a_torn_last_record_is_left_out(tmp_path):
    path = written(tmp_path)
    size = path.stat().st_size
    with path.open("r+b") as file:
        file.truncate(size - 5)
    read = trajectory.read(path)
    assert read.records == RECORDS[:2] and read.torn_bytes == 25


def test_truncate_keeps_the_steps_up_to_a_checkpoint_and_drops_a_torn_record(tmp_path):
    path = written(tmp_path)
    with path.open("ab") as file:
        file.write(RECORDS[0].encode()[:7])
    assert trajectory.truncate(path, 2) == 2
    assert trajectory.read(path).records == RECORDS[:2] and trajectory.read(path).torn_bytes == 0
    assert trajectory.truncate(path, 5) == 2  # fewer steps than the checkpoint: says how many it holds


@pytest.mark.parametrize(("content", "message"), [
    (b"", "too short"), (b"NOTATRAJECTORYFILE", "not a trajectory file"),
    (b"ZOFTTRAJ\x09\x00\x02\x00{}", "newer zoft"), (b"ZOFTTRAJ\x01\x00\x02\x00{x", "header is damaged"),
])
def test_a_file_that_is_no_trajectory_is_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "trajectory.bin"
    path.write_bytes(content)
    with pytest.raises(ZoftError, match=message):
        trajectory.read(path)


def test_a_record_out_of_sequence_is_a_damaged_file(tmp_path):
    path = written(tmp_path, [RECORDS[0], RECORDS[2]])
    with pytest.raises(ZoftError, match="record 2 is for step 3: a damaged file"):
        trajectory.read(path)

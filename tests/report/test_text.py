"""Numbers and tables for people (zoft.report.text)."""

from zoft.report.text import format_bytes, format_count, format_metric, format_seconds, markdown_table


def test_numbers_are_formatted_for_people():
    assert format_metric(0.6838235, "accuracy") == "68.38%"
    assert format_metric(float("nan"), "accuracy") == format_metric(None, "f1") == "n/a"
    assert format_metric(0.81234, "pearson") == "0.8123"
    assert format_count(2_114) == "2.11K" and format_count(357_600_000) == "357.6M"
    assert format_bytes(566_943_744) == "567 MB" and format_bytes(12.5e9) == "12.50 GB"
    assert format_seconds(0.0170) == "17.0 ms" and format_seconds(3.98) == "3.98 s"
    assert format_seconds(5580) == "1:33:00" and format_seconds(93) == "1:33"


def test_a_markdown_table_aligns_names_left_and_numbers_right_and_escapes_bars():
    assert markdown_table(["Run", "Steps"], [["a|b", "6"]]) == "| Run | Steps |\n|:---|---:|\n| a\\|b | 6 |"
    assert markdown_table(["Run", "Status"], [["a", "ok"]], numbers=False).splitlines()[1] == "|:---|:---|"

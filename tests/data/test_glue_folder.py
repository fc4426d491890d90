"""Reading the GLUE folder layout: the real files of five tasks, fixtures for the other four, and errors."""

import shutil
from pathlib import Path

import pytest

from zoft.data.sources import read_glue_folder
from zoft.data.tasks import get_task
from zoft.errors import ZoftError

REAL_COUNTS = {
    "mrpc": (3667, 408),
    "sst2": (67349, 872),
    "cola": (8551, 1043),
    "rte": (2490, 277),
    "stsb": (5749, 1500),
}


@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_real_row_counts(real_glue, name):
    splits = read_glue_folder(get_task(name), real_glue)
    assert (len(splits["train"]), len(splits["test"])) == REAL_COUNTS[name]
    assert set(splits) == {"train", "test"}


def test_real_mrpc_with_its_byte_order_mark(real_glue):
    assert (real_glue / "MRPC" / "dev.tsv").read_bytes().startswith(b"\xef\xbb\xbf")
    splits = read_glue_folder(get_task("mrpc"), real_glue)
    train = splits["train"]
    assert train.texts[0] == (
        'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his '
        "evidence .",
        'Referring to him as only " the witness " , Amrozi accused his brother of deliberately distorting '
        "his evidence .",
    )
    assert train.labels[0] == 1
    assert splits["test"].labels.count(1) == 279


def test_real_sst2_single_sentence(real_glue):
    train = read_glue_folder(get_task("sst2"), real_glue)["train"]
    assert train.texts[0] == ("hide new secretions from the parental units ",)
    assert train.labels[:2] == [0, 0]


def test_real_cola_has_no_header(real_glue):
    splits = read_glue_folder(get_task("cola"), real_glue)
    first = "Our friends won't buy this analysis, let alone the next one we propose."
    assert splits["train"].texts[0] == (first,)
    assert splits["train"].labels[0] == 1
    assert set(splits["test"].labels) == {0, 1}


def test_real_rte_string_labels(real_glue):
    splits = read_glue_folder(get_task("rte"), real_glue)
    assert splits["train"].texts[0] == (
        "No Weapons of Mass Destruction Found in Iraq Yet.",
        "Weapons of Mass Destruction Found in Iraq.",
    )
    assert splits["train"].labels[:2] == [1, 0]  # not_entailment, entailment


def test_real_stsb_float_scores(real_glue):
    splits = read_glue_folder(get_task("stsb"), real_glue)
    assert splits["train"].texts[0] == ("A plane is taking off.", "An air plane is taking off.")
    assert splits["train"].labels[:2] == [5.0, 3.8]
    assert all(isinstance(score, float) and 0 <= score <= 5 for score in splits["test"].labels)


def test_the_task_folder_itself_is_accepted(real_glue):
    assert len(read_glue_folder(get_task("rte"), real_glue / "RTE")["test"]) == 277


def test_qqp_fixture(fixture_glue):
    splits = read_glue_folder(get_task("qqp"), fixture_glue)
    assert len(splits["train"]) == 6 and len(splits["test"]) == 3
    assert splits["train"].texts[0] == (
        "How do I learn to cook rice without a rice cooker?",
        "What is the best way to cook rice on a stove?",
    )
    assert splits["train"].labels == [1, 0, 1, 0, 1, 0]
    assert '"best"' in splits["train"].texts[2][0]


def test_mnli_fixture_matched_and_mismatched(fixture_glue):
    splits = read_glue_folder(get_task("mnli"), fixture_glue)
    assert set(splits) == {"train", "test", "test_mismatched"}
    assert splits["train"].texts[0] == (
        "The committee approved the budget on Monday.",
        "The budget was approved.",
    )
    # contradiction, entailment, neutral = 0, 1, 2; dev files take gold_label, not label1
    assert splits["train"].labels == [1, 0, 2, 0, 1, 2]
    assert splits["test"].labels == [1, 0, 2]
    assert splits["test_mismatched"].labels == [1, 0]


def test_qnli_fixture(fixture_glue):
    splits = read_glue_folder(get_task("qnli"), fixture_glue)
    assert splits["train"].texts[2] == (
        "What is the capital of Norway?",
        "Oslo is the capital and most populous city of Norway.",
    )
    assert splits["train"].labels == [1, 1, 0, 0]
    assert len(splits["test"]) == 2


def test_wnli_fixture(fixture_glue):
    splits = read_glue_folder(get_task("wnli"), fixture_glue)
    assert splits["train"].labels == [1, 1, 0, 0]
    assert splits["test"].texts[1] == ("Kate called her sister but she was asleep.", "Her sister was asleep.")


# --- errors -----------------------------------------------------------------------------------------------

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def _rte_folder(tmp_path: Path, train: str, dev: str = RTE_HEADER + "0\ta\tb\tentailment\n") -> Path:
    folder = tmp_path / "RTE"
    folder.mkdir()
    (folder / "train.tsv").write_text(train)
    (folder / "dev.tsv").write_text(dev)
    return tmp_path


def test_missing_folder_names_the_expected_layout(tmp_path):
    with pytest.raises(ZoftError) as error:
        read_glue_folder(get_task("mrpc"), tmp_path)
    expected = f"{tmp_path}/MRPC not found; expected the GLUE layout {tmp_path}/MRPC/train.tsv"
    assert str(error.value) == expected


def test_missing_file_is_named(tmp_path, fixture_glue):
    shutil.copytree(fixture_glue / "MNLI", tmp_path / "MNLI")
    (tmp_path / "MNLI" / "dev_mismatched.tsv").unlink()
    with pytest.raises(ZoftError, match=r"MNLI/dev_mismatched\.tsv not found"):
        read_glue_folder(get_task("mnli"), tmp_path)


def test_malformed_row_names_file_and_line(tmp_path):
    train = RTE_HEADER + "0\ta\tb\tentailment\n1\tonly two\tentailment\n"
    with pytest.raises(ZoftError) as error:
        read_glue_folder(get_task("rte"), _rte_folder(tmp_path, train))
    assert str(error.value) == f"{tmp_path}/RTE/train.tsv line 3: expected 4 tab-separated columns, found 3"


def test_blank_line_is_not_skipped_silently(tmp_path):
    train = RTE_HEADER + "0\ta\tb\tentailment\n\n1\tc\td\tentailment\n"
    with pytest.raises(ZoftError, match=r"train\.tsv line 3: expected 4 tab-separated columns, found 0"):
        read_glue_folder(get_task("rte"), _rte_folder(tmp_path, train))


def test_unknown_label_names_line_label_and_allowed(tmp_path):
    dev = RTE_HEADER + "0\ta\tb\tentailment\n1\tc\td\tmaybe\n"
    with pytest.raises(ZoftError) as error:
        read_glue_folder(get_task("rte"), _rte_folder(tmp_path, RTE_HEADER + "0\ta\tb\tentailment\n", dev))
    assert str(error.value) == (
        f"{tmp_path}/RTE/dev.tsv line 3: unknown label 'maybe'; expected one of entailment, not_entailment"
    )


def test_missing_header_column(tmp_path):
    with pytest.raises(ZoftError, match=r"train\.tsv: no column 'sentence1' in the header; it has index, s1"):
        read_glue_folder(get_task("rte"), _rte_folder(tmp_path, "index\ts1\ts2\tlab\n0\ta\tb\tentailment\n"))


def test_non_numeric_stsb_score(tmp_path):
    folder = tmp_path / "STS-B"
    folder.mkdir()
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    (folder / "train.tsv").write_text(header + "0\tg\tf\t2012\t0\tnone\tnone\tA\tB\tfive\n")
    with pytest.raises(ZoftError, match=r"train\.tsv line 2: score 'five' is not a number"):
        read_glue_folder(get_task("stsb"), tmp_path)


def test_header_only_file_holds_no_examples(tmp_path):
    with pytest.raises(ZoftError, match=r"train\.tsv holds no examples"):
        read_glue_folder(get_task("rte"), _rte_folder(tmp_path, RTE_HEADER))

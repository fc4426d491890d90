"""Each GLUE task described once: its files, the columns of its texts and label, its metrics.

Label order (the class index a model predicts) is the order of ``label_names``:

- cola, sst2, mrpc, qqp, wnli: ``("0", "1")`` as written in the files (1 = acceptable / positive /
  paraphrase / duplicate / entailment).
- rte, qnli: ``("entailment", "not_entailment")``.
- mnli: ``("contradiction", "entailment", "neutral")``, alphabetical, the order of the original GLUE
  processors (the hub numbers them differently; ``hub_label_names`` maps its ids onto ours).
- stsb: regression (``label_names is None``), the score is a float in [0, 5].

Each classification task also carries its prompt (a template and one label word per class, in label
order) and its input length as the MeZO paper's code runs them (princeton-nlp/MeZO,
medium_models/run_fewshot.sh, LM-BFF's templates): see :mod:`zoft.prompt` for the template syntax.
"""

from __future__ import annotations

from dataclasses import dataclass

from zoft.errors import ZoftError

Column = str | int  # a header name, or a 0-based index for files without a header row

HUB_DATASET = "nyu-mll/glue"
MAX_LENGTH = 128  # tokens; run_fewshot.sh passes --max_seq_length 128 to every task but RTE and MNLI (256)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    text_columns: tuple[Column, ...]
    label_column: Column
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    main_metric: str
    glue_dir: str | None = None
    has_header: bool = True
    expected_columns: int | None = None  # only checked for files without a header row
    train_file: str = "train.tsv"
    test_files: tuple[tuple[str, str], ...] = (("test", "dev.tsv"),)  # (split, file name)
    hub_name: str | None = None
    hub_text_columns: tuple[str, ...] = ()
    hub_test_splits: tuple[tuple[str, str], ...] = (("test", "validation"),)  # (split, hub split)
    hub_label_names: tuple[str, ...] | None = None  # our label name for each hub class id, in hub order
    max_length: int = MAX_LENGTH  # the default input length in tokens
    template: str | None = None  # the prompt (zoft.prompt's syntax), None for regression
    label_words: tuple[str, ...] | None = None  # one word per class, in label order
    causal_template: str | None = None  # the prompt for a decoder-only model: it ends where the label word goes

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def test_splits(self) -> tuple[str, ...]:
        return tuple(split for split, _ in self.test_files)

    @property
    def lm_bff_metric(self) -> str:
        """The validation metric that LM-BFF's and MeZO's code select checkpoints on (their
        default_dev_objective): F1 where the task reports it (MRPC, QQP), else the task's main metric."""
        return "f1" if "f1" in self.metrics else self.main_metric


def require_classification(task: TaskSpec, setting: str) -> None:
    """Refuse a regression task for `setting`, which needs classes; the message names the setting."""
    if task.is_regression:
        raise ZoftError(f"{setting} needs a classification task; {task.name} is a regression task")


BINARY = ("0", "1")
ENTAILMENT = ("entailment", "not_entailment")
ACCURACY = ("accuracy",)
ACCURACY_F1 = ("accuracy", "f1")
# LM-BFF's templates as run_fewshot.sh writes them, in zoft's syntax: MRPC and QQP
# *cls**sent_0**mask*,*+sentl_1**sep+*; RTE, QNLI and MNLI *cls**sent-_0*?*mask*,*+sentl_1**sep+*
# ({s1-}: the first sentence without its last character, {s2l}: the second with its first letter lower-cased).
PARAPHRASE = "{s1} {mask}, {s2l}"
INFERENCE = "{s1-}? {mask}, {s2l}"
# Decoder-only models read the label word as the next token after the prompt, so their templates end at {mask}.
# SST-2's and RTE's are the MeZO paper's large-model templates (large_models/templates.py: SST2Template,
# RTETemplate); the others are zoft's, written in the style of RTE's (the paper ran no other GLUE task on OPT).
CAUSAL_PARAPHRASE = '{s1}\nDoes this mean the same as "{s2}"? Yes or No?\n{mask}'
CAUSAL_INFERENCE = '{s1}\nDoes this mean that "{s2}" is true? Yes or No?\n{mask}'

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="cola", glue_dir="CoLA", has_header=False, expected_columns=4,
            text_columns=(3,), label_column=1, label_names=BINARY,
            metrics=("matthews",), main_metric="matthews",
            hub_name="cola", hub_text_columns=("sentence",), hub_label_names=BINARY,
            template="{s1} This is {mask}.", label_words=("incorrect", "correct"),
            causal_template="{s1} This is {mask}",
        ),
        TaskSpec(
            name="sst2", glue_dir="SST-2",
            text_columns=("sentence",), label_column="label", label_names=BINARY,
            metrics=ACCURACY, main_metric="accuracy",
            hub_name="sst2", hub_text_columns=("sentence",), hub_label_names=BINARY,
            template="{s1} It was {mask}.", label_words=("terrible", "great"),
            causal_template="{s1} It was {mask}",
        ),
        TaskSpec(
            name="mrpc", glue_dir="MRPC",
            text_columns=("#1 String", "#2 String"), label_column="Quality", label_names=BINARY,
            metrics=ACCURACY_F1, main_metric="accuracy",
            hub_name="mrpc", hub_text_columns=("sentence1", "sentence2"), hub_label_names=BINARY,
            template=PARAPHRASE, label_words=("No", "Yes"), causal_template=CAUSAL_PARAPHRASE,
        ),
        TaskSpec(
            name="qqp", glue_dir="QQP",
            text_columns=("question1", "question2"), label_column="is_duplicate", label_names=BINARY,
            metrics=ACCURACY_F1, main_metric="accuracy",
            hub_name="qqp", hub_text_columns=("question1", "question2"), hub_label_names=BINARY,
            template=PARAPHRASE, label_words=("No", "Yes"), causal_template=CAUSAL_PARAPHRASE,
        ),
        TaskSpec(
            name="stsb", glue_dir="STS-B",
            text_columns=("sentence1", "sentence2"), label_column="score", label_names=None,
            metrics=("pearson", "spearman"), main_metric="pearson",
            hub_name="stsb", hub_text_columns=("sentence1", "sentence2"),
        ),
        TaskSpec(
            name="mnli", glue_dir="MNLI",
            text_columns=("sentence1", "sentence2"), label_column="gold_label",
            label_names=("contradiction", "entailment", "neutral"),
            metrics=ACCURACY, main_metric="accuracy",
            test_files=(("test", "dev_matched.tsv"), ("test_mismatched", "dev_mismatched.tsv")),
            hub_name="mnli", hub_text_columns=("premise", "hypothesis"),
            hub_test_splits=(("test", "validation_matched"), ("test_mismatched", "validation_mismatched")),
            hub_label_names=("entailment", "neutral", "contradiction"),
            max_length=256, template=INFERENCE, label_words=("No", "Yes", "Maybe"),
            causal_template='{s1}\nCan we infer that "{s2}"? Yes, No, or Maybe?\n{mask}',
        ),
        TaskSpec(
            name="qnli", glue_dir="QNLI",
            text_columns=("question", "sentence"), label_column="label", label_names=ENTAILMENT,
            metrics=ACCURACY, main_metric="accuracy",
            hub_name="qnli", hub_text_columns=("question", "sentence"), hub_label_names=ENTAILMENT,
            template=INFERENCE, label_words=("Yes", "No"), causal_template=CAUSAL_INFERENCE,
        ),
        TaskSpec(
            name="rte", glue_dir="RTE",
            text_columns=("sentence1", "sentence2"), label_column="label", label_names=ENTAILMENT,
            metrics=ACCURACY, main_metric="accuracy",
            hub_name="rte", hub_text_columns=("sentence1", "sentence2"), hub_label_names=ENTAILMENT,
            max_length=256, template=INFERENCE, label_words=("Yes", "No"), causal_template=CAUSAL_INFERENCE,
        ),
        TaskSpec(
            name="wnli", glue_dir="WNLI",
            text_columns=("sentence1", "sentence2"), label_column="label", label_names=BINARY,
            metrics=ACCURACY, main_metric="accuracy",
            # the hub calls its classes (not_entailment, entailment); the files write 0 and 1
            hub_name="wnli", hub_text_columns=("sentence1", "sentence2"), hub_label_names=BINARY,
            # not among the paper's tasks: RTE's templates
            template=INFERENCE, label_words=("No", "Yes"), causal_template=CAUSAL_INFERENCE,
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    """The GLUE task called `name`, case-insensitive; "sst-2" and "sts-b" are accepted too."""
    key = name.strip().lower().replace("-", "")
    if key not in TASKS:
        raise ZoftError(f"unknown task '{name}'; known tasks: {', '.join(TASKS)}, custom")
    return TASKS[key]


def custom_task(label_names: list[str], text_columns: list[str], label_column: str) -> TaskSpec:
    """A classification task over the user's own files."""
    metrics = ACCURACY_F1 if len(label_names) == 2 else ACCURACY
    return TaskSpec(
        name="custom", text_columns=tuple(text_columns), label_column=label_column,
        label_names=tuple(label_names), metrics=metrics, main_metric="accuracy",
    )

"""The config schema: method defaults, the three override spellings, YAML layouts, and refused values."""

import re

import pytest
import yaml

from zoft.config import (
    NON_NEGATIVE,
    OPTIONAL_POSITIVE,
    POSITIVE,
    RunConfig,
    apply_overrides,
    build_config,
    config_keys,
    from_dict,
    resolve,
    to_yaml,
)
from zoft.errors import ZoftError


@pytest.fixture(autouse=True)
def no_glue_dir(monkeypatch):
    """Results must not depend on the GLUE_DIR of whoever runs the tests."""
    monkeypatch.delenv("GLUE_DIR", raising=False)


# -- defaults per method -----------------------------------------------------------------------------------


# The values a user gets without naming them, written out rather than read back from METHOD_DEFAULTS (which
# resolve() itself reads): changing a default must be a decision that changes this table too.
# method, params -> lr, schedule, warm-up, weight decay, steps, params after resolving
RESOLVED_DEFAULTS = {
    ("lora", None): (5e-4, "linear", 0.06, 0.01, 1000, None),
    ("full", None): (5e-5, "linear", 0.06, 0.01, 800, None),
    ("mezo", None): (1e-4, "constant", 0.0, 0.0, 3000, "lora"),
    ("mezo", "all"): (1e-6, "constant", 0.0, 0.0, 3000, "all"),
}


@pytest.mark.parametrize(("method", "params"), list(RESOLVED_DEFAULTS))
def test_method_defaults(method, params):
    overrides = {"method": method} | ({"params": params} if params else {})
    config = build_config(overrides=overrides)
    m = config.method
    assert (m.lr, m.schedule, m.warmup_ratio, m.weight_decay, config.train.steps, m.params) == \
        RESOLVED_DEFAULTS[method, params]


def test_explicit_values_beat_method_defaults():
    config = build_config(overrides={"method": "mezo", "params": "all", "lr": "3e-7", "schedule": "linear"})
    assert config.method.lr == 3e-7
    assert config.method.schedule == "linear"


def test_epochs_without_steps_leaves_steps_unset():
    config = build_config(overrides={"epochs": "2"})
    assert config.train.steps is None
    assert config.train.epochs == 2.0


def test_every_key_has_help_and_is_unique():
    keys = config_keys()
    assert {"lr", "method", "model", "task", "data_dir", "steps"} <= set(keys)
    assert all(field.metadata.get("help") for _, field in keys.values())
    # `key=value` overrides name a leaf without its section, so two sections must never share a leaf name:
    # config_keys() is keyed by name, and a shared one would silently replace the other.
    sections = RunConfig().to_dict()
    leaves = [key for section in sections.values() for key in section]
    assert len(leaves) == len(set(leaves)) == len(keys)


# -- override spellings and YAML layouts ---------------------------------------------------------------------

# A hub name that is not there: with an explicit head nothing asks the model what it is (head=auto would).
OVERRIDES = {"lr": "1e-4", "batch_size": "4", "target_modules": "query,value", "method": "mezo", "model": "x",
             "head": "classifier"}


def test_three_override_spellings_agree():
    sections = config_keys()
    plain = build_config(overrides=OVERRIDES)
    dashed = build_config(overrides={key.replace("_", "-"): value for key, value in OVERRIDES.items()})
    dotted = build_config(overrides={f"{sections[key][0]}.{key}": value for key, value in OVERRIDES.items()})
    assert plain == dashed == dotted
    assert plain.method.lr == 1e-4
    assert plain.train.batch_size == 4
    assert plain.model.target_modules == ["query", "value"]
    assert plain.method.method == "mezo"
    assert plain.model.model == "x"


def test_the_three_spellings_through_the_command_line_agree():
    from zoft.cli import build_parser, collect_overrides

    parser = build_parser()
    as_options = collect_overrides(parser.parse_args(["train", "--lr", "1e-4", "--batch-size", "4"]))
    as_pairs = collect_overrides(parser.parse_args(["train", "lr=1e-4", "batch_size=4"]))
    as_sections = collect_overrides(parser.parse_args(["train", "method.lr=1e-4", "train.batch_size=4"]))
    configs = [build_config(overrides=o) for o in (as_options, as_pairs, as_sections)]
    assert configs[0] == configs[1] == configs[2]
    assert configs[0].method.lr == 1e-4 and configs[0].train.batch_size == 4


def test_section_prefix_must_be_the_right_section():
    with pytest.raises(ZoftError, match=r"unknown config key 'data\.lr'"):
        build_config(overrides={"data.lr": "1e-4"})


def test_yaml_nested_and_flat_agree(tmp_path):
    nested = tmp_path / "nested.yaml"
    nested.write_text(yaml.safe_dump({
        "data": {"task": "rte", "max_length": 64},
        "model": {"model": "some/model", "lora_r": 4, "head": "classifier"},
        "method": {"method": "mezo", "eps": 0.01},
        "train": {"steps": 20, "seed": 7},
    }))
    flat = tmp_path / "flat.yaml"
    flat.write_text(yaml.safe_dump({"task": "rte", "max_length": 64, "model": "some/model", "lora_r": 4,
                                    "head": "classifier",
                                    "method": "mezo", "eps": 0.01, "steps": 20, "seed": 7}))
    from_nested, from_flat = build_config(nested), build_config(flat)
    assert from_nested == from_flat
    assert from_nested.data.task == "rte"
    assert from_nested.model.model == "some/model"
    assert from_nested.model.lora_r == 4
    assert from_nested.method.method == "mezo"
    assert from_nested.method.eps == 0.01
    assert from_nested.train.steps == 20


def test_overrides_beat_the_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-3\nseed: 3\n")
    config = build_config(path, {"lr": "2e-3"})
    assert config.method.lr == 2e-3
    assert config.train.seed == 3


def test_yaml_file_problems(tmp_path):
    with pytest.raises(ZoftError, match="does not exist"):
        build_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [\n")
    with pytest.raises(ZoftError, match=r"bad\.yaml: not valid YAML"):
        build_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n")
    with pytest.raises(ZoftError, match="expected a mapping"):
        build_config(listing)
    section = tmp_path / "section.yaml"
    section.write_text("train: 3\n")
    with pytest.raises(ZoftError, match="section 'train' must be a mapping"):
        build_config(section)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("train:\n  nosuch: 1\n")
    with pytest.raises(ZoftError, match="nosuch"):
        build_config(unknown)


# -- refused keys and values -------------------------------------------------------------------------------


def test_unknown_key_is_named_with_the_known_keys():
    with pytest.raises(ZoftError) as error:
        build_config(overrides={"learning_rate": "1e-4"})
    message = str(error.value)
    assert "'learning_rate'" in message
    assert "known keys" in message
    for key in ("lr", "batch_size", "data_dir", "eps"):
        assert key in message


def test_literal_value_lists_allowed_values():
    with pytest.raises(ZoftError) as error:
        build_config(overrides={"method": "sgd"})
    message = str(error.value)
    assert "'method'" in message and "'sgd'" in message
    for allowed in ("lora", "full", "mezo"):
        assert allowed in message
    with pytest.raises(ZoftError, match="constant_with_warmup"):
        build_config(overrides={"schedule": "step"})


@pytest.mark.parametrize("value", ["1.5", "1.5e0", "ten", "true"])
def test_int_key_refuses_non_integers(value):
    with pytest.raises(ZoftError, match=r"config key 'batch_size'.*not an integer"):
        build_config(overrides={"batch_size": value})


def test_int_key_accepts_integer_spellings():
    assert build_config(overrides={"steps": "2e3"}).train.steps == 2000
    assert build_config(overrides={"steps": 7}).train.steps == 7
    assert build_config(overrides={"steps": 7.0}).train.steps == 7


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-inf"])
def test_float_key_refuses_non_numbers(value):
    with pytest.raises(ZoftError, match=r"config key 'lr'.*not a number"):
        build_config(overrides={"lr": value})


def test_null_clears_an_optional_key():
    assert build_config(overrides={"lr": "null"}).method.lr == RESOLVED_DEFAULTS["lora", None][0]
    assert build_config(overrides={"target_modules": "none"}).model.target_modules is None


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"lr": "-1e-4"}, "lr"),
        ({"lr": "0"}, "lr"),
        ({"eps": "0"}, "eps"),
        ({"batch_size": "0"}, "batch_size"),
        ({"steps": "-5"}, "steps"),
        ({"weight_decay": "-0.1"}, "weight_decay"),
        ({"validation_fraction": "1.5"}, "validation_fraction"),
        ({"validation_fraction": "0"}, "validation_fraction"),
        ({"warmup_ratio": "1"}, "warmup_ratio"),
        ({"method": "mezo", "momentum": "1"}, "momentum"),
        ({"method": "mezo", "perturbation_density": "0"}, "perturbation_density"),
        ({"method": "mezo", "perturbation_density": "1.5"}, "perturbation_density"),
        ({"method": "mezo", "perturbation": "uniform"}, "perturbation"),
        ({"text_columns": "a,b,c"}, "text_columns"),
        ({"task": "stsb", "head": "prompt"}, "head"),  # before any data is read
    ],
)
def test_out_of_range_values(overrides, key):
    with pytest.raises(ZoftError, match=f"config key '{key}'"):
        build_config(overrides=overrides)


def keys_with(rule):
    """The keys whose field declares `rule` in its option(..., check=...)."""
    return [key for key, (_, field) in config_keys().items() if rule in field.metadata["checks"]]


def test_each_constrained_key_declares_its_rule_next_to_its_field():
    assert set(keys_with(POSITIVE)) == {
        "lr", "eps", "n_perturbations", "grad_accumulation", "batch_size", "eval_batch_size", "eval_every",
        "log_every", "max_length", "lora_r", "lora_alpha", "svrg_every", "perturbation_rank", "dist_timeout",
    }
    assert set(keys_with(OPTIONAL_POSITIVE)) == {
        "steps", "epochs", "train_limit", "k_shot", "test_limit", "max_minutes", "max_forward_passes",
        "n_perturbations_final",
    }
    assert set(keys_with(NON_NEGATIVE)) == {
        "weight_decay", "momentum", "lora_dropout", "divergence_factor", "checkpoint_every", "max_grad_norm",
        "svrg_batches", "svrg_lr_full", "replica_check_every",
    }


# Parametrised from the declarations: a key declared with check=POSITIVE is tested here without naming it.
@pytest.mark.parametrize("key", keys_with(POSITIVE) + keys_with(OPTIONAL_POSITIVE))
def test_a_positive_key_refuses_zero_in_one_line(key):
    with pytest.raises(ZoftError) as error:
        build_config(overrides={"head": "classifier", key: "0"})
    assert re.fullmatch(rf"config key '{key}': must be > 0, got 0(\.0)?", str(error.value))


@pytest.mark.parametrize("key", keys_with(NON_NEGATIVE))
def test_a_non_negative_key_takes_zero_and_refuses_less_in_one_line(key):
    section = config_keys()[key][0]
    assert getattr(getattr(build_config(overrides={"head": "classifier", key: "0"}), section), key) == 0
    with pytest.raises(ZoftError) as error:
        build_config(overrides={"head": "classifier", key: "-1"})
    assert re.fullmatch(rf"config key '{key}': must be >= 0, got -1(\.0)?", str(error.value))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"validation_fraction": "0"}, "config key 'validation_fraction': must be between 0 and 1, got 0.0"),
        ({"warmup_ratio": "-0.5"}, "config key 'warmup_ratio': must be in [0, 1), got -0.5"),
        ({"method": "mezo", "momentum": "-0.5"}, "config key 'momentum': must be >= 0, got -0.5"),
        ({"method": "mezo", "momentum": "1"}, "config key 'momentum': must be in [0, 1), got 1.0"),
        ({"text_columns": "a,b,c"}, "config key 'text_columns': expected one or two columns, got ['a', 'b', 'c']"),
    ],
)
def test_other_field_rules_word_their_errors_as_before(overrides, message):
    with pytest.raises(ZoftError) as error:
        build_config(overrides={"head": "classifier", **overrides})
    assert str(error.value) == message


def test_params_refuses_a_broken_regex_in_one_line():
    with pytest.raises(ZoftError) as error:
        build_config(overrides={"head": "classifier", "method": "mezo", "params": "("})
    assert re.fullmatch(r"config key 'params': '\(' is not a valid regular expression \(.+\)", str(error.value))


def test_params_needs_mezo():
    with pytest.raises(ZoftError, match=r"'params'.*mezo"):
        build_config(overrides={"method": "lora", "params": "all"})
    with pytest.raises(ZoftError, match=r"'params'.*mezo"):
        build_config(overrides={"method": "full", "params": "classifier"})


# -- environment and round trip --------------------------------------------------------------------------


def test_glue_dir_fills_data_dir_when_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    assert build_config().data.data_dir == str(tmp_path)
    assert build_config(overrides={"data_dir": "/elsewhere"}).data.data_dir == "/elsewhere"
    assert build_config(overrides={"task": "custom"}).data.data_dir is None


def test_data_dir_stays_unset_without_glue_dir():
    assert build_config().data.data_dir is None


def test_yaml_round_trip():
    config = build_config(overrides={"method": "mezo", "params": "classifier", "lr": "3e-6",
                                     "target_modules": "query,value", "text_columns": "a", "seed": "9"})
    document = yaml.safe_load(to_yaml(config))
    assert set(document) == {"data", "model", "method", "train"}
    rebuilt = from_dict(document)
    assert rebuilt == config
    assert resolve(rebuilt) == config


def test_apply_overrides_does_not_touch_its_input():
    base = RunConfig()
    changed = apply_overrides(base, {"lr": "1e-3", "steps": "5"})
    assert changed.method.lr == 1e-3 and changed.train.steps == 5
    assert base.method.lr is None and base.train.steps is None


# -- defaults that depend on the model and the task -----------------------------------------------------


@pytest.fixture
def mlm_config(tmp_path):
    """A folder holding only a BertForMaskedLM config.json: what head=auto reads."""
    from transformers import BertConfig

    BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
               architectures=["BertForMaskedLM"]).save_pretrained(tmp_path / "mlm")
    return str(tmp_path / "mlm")


@pytest.mark.parametrize("method", ["lora", "full", "mezo"])
def test_a_masked_lm_gets_the_prompt_head_and_the_tasks_prompt(mlm_config, method):
    config = build_config(overrides={"model": mlm_config, "task": "rte", "method": method})
    assert config.model.head == "prompt"
    assert (config.model.template, config.model.label_words) == ("{s1-}? {mask}, {s2l}", ["Yes", "No"])


def test_a_model_without_masked_lm_head_gets_the_classifier():
    config = build_config(overrides={"model": "minilm", "task": "sst2", "method": "mezo"})
    assert (config.model.head, config.model.template, config.model.label_words) == ("classifier", None, None)


@pytest.mark.parametrize("overrides", [
    {"task": "stsb"},  # regression: no label words
    {"pooling": "mean"}, {"head_init": "linear-probe", "pooling": "cls"}, {"head": "classifier"},
    {"method": "mezo", "head_grad": "exact"},
    {"task": "custom", "text_columns": "a"},  # no prompt of its own
])
def test_auto_stays_a_classifier_where_one_is_asked_for_or_no_prompt_fits(mlm_config, overrides):
    assert build_config(overrides={"model": mlm_config, **overrides}).model.head == "classifier"


def test_a_custom_task_with_its_own_prompt_is_prompt_based(mlm_config):
    config = build_config(overrides={"model": mlm_config, "task": "custom", "text_columns": "a",
                                     "template": "{s1} So it is {mask}.", "label_words": "bad,good"})
    assert config.model.head == "prompt" and config.model.label_words == ["bad", "good"]


def test_head_auto_names_the_model_it_cannot_read(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ZoftError, match=r"cannot reach the Hugging Face hub .* 'no/such-model'"):
        build_config(overrides={"model": "no/such-model"})
    assert build_config(overrides={"model": "no/such-model", "head": "classifier"}).model.head == "classifier"


def test_task_lengths_and_selection_follow_the_task():
    assert build_config(overrides={"task": "rte"}).data.max_length == 256
    assert build_config(overrides={"task": "mnli"}).data.max_length == 256
    assert build_config(overrides={"task": "mrpc"}).data.max_length == 128
    assert build_config(overrides={"task": "rte", "max_length": "64"}).data.max_length == 64
    assert build_config(overrides={"task": "mrpc"}).train.select_metric == "accuracy"
    assert build_config(overrides={"task": "mrpc", "select_metric": "lm-bff"}).train.select_metric == "f1"
    assert build_config(overrides={"task": "cola", "select_metric": "lm-bff"}).train.select_metric == "matthews"
    with pytest.raises(ZoftError, match="'select_metric': lm-bff needs a GLUE task"):
        build_config(overrides={"task": "custom", "text_columns": "a", "select_metric": "lm-bff"})
    with pytest.raises(ZoftError, match="'select_metric': task sst2 reports accuracy, not f1"):
        build_config(overrides={"task": "sst2", "select_metric": "f1"})


def test_k_shot_runs_draw_shuffled_batches_unless_told_otherwise():
    assert build_config(overrides={"k_shot": "16"}).train.group_by_length is False
    assert build_config().train.group_by_length is True
    assert build_config(overrides={"k_shot": "16", "group_by_length": "true"}).train.group_by_length is True


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_mezo_in_half_precision_is_refused_unless_accepted(dtype):
    with pytest.raises(ZoftError, match=f"'dtype': MeZO in {dtype} drifts the weights"):
        build_config(overrides={"method": "mezo", "dtype": dtype})
    accepted = build_config(overrides={"method": "mezo", "dtype": dtype, "mezo_half_precision": "true"})
    assert accepted.model.dtype == dtype
    assert build_config(overrides={"method": "lora", "dtype": dtype}).model.dtype == dtype


def test_train_lm_head_needs_a_prompt_and_lora(mlm_config):
    assert build_config(overrides={"model": mlm_config, "method": "mezo", "train_lm_head": "true"}).model.train_lm_head
    for overrides in ({"method": "full"}, {"method": "mezo", "params": "all"}, {"head": "classifier"}):
        with pytest.raises(ZoftError, match="'train_lm_head' applies to head=prompt with LoRA"):
            build_config(overrides={"model": mlm_config, "train_lm_head": "true", **overrides})


def test_divergence_check_can_be_switched_off():
    assert build_config(overrides={"divergence_factor": "0"}).train.divergence_factor == 0
    with pytest.raises(ZoftError, match="'divergence_factor': must be >= 0"):
        build_config(overrides={"divergence_factor": "-1"})


def test_resolving_twice_changes_nothing(mlm_config):
    config = build_config(overrides={"model": mlm_config, "task": "mrpc", "k_shot": "16", "method": "mezo"})
    assert resolve(from_dict(yaml.safe_load(to_yaml(config)))) == config

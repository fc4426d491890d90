"""The YAML config loader, fuzzed: random bytes and random documents of config keys either load or raise a
ZoftError in one line, never another exception; and at the CLI, bad files give `zoft: error:`, no traceback."""

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zoft.cli import main
from zoft.config import SECTIONS, apply_overrides, build_config, config_keys, load_yaml

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300, max_value=10**400),
                   st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                   st.sampled_from(["null", "none", "1e3", "1e400", "-1", "0", "lora", "mezo", "full", "mezo-lora",
                                    "auto", "[", "a,b", "true"]))
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                     st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                     max_leaves=6)
# keys zoft knows (not `model`, which names a model to read: a random one would be looked for on the hub)
KEYS = sorted(set(config_keys()) - {"model"})
KEY = st.one_of(st.sampled_from(KEYS), st.sampled_from([f"{config_keys()[k][0]}.{k}" for k in KEYS]),
                st.text(max_size=6), st.integers())


@FUZZ
@given(content=st.binary(max_size=500))
def test_load_yaml_on_random_bytes(tmp_path, content, parses_or_one_line_error):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    parses_or_one_line_error(lambda: apply_overrides(build_config(), load_yaml(path)))


@FUZZ
@given(document=st.one_of(
    st.dictionaries(KEY, VALUE, max_size=5),
    st.dictionaries(st.sampled_from([s for s in SECTIONS if s != "model"]),
                    st.one_of(st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=4)), VALUE,
                                              max_size=4), SCALAR), max_size=3),
    VALUE))
def test_build_config_on_documents_that_look_right(tmp_path, document, parses_or_one_line_error):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    parses_or_one_line_error(lambda: build_config(path))


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8: \xe9", b"- a\n- b\n", b"train: {steps: [1, 2]}\n",
                                     b"lr: 1e400\n", b"steps: " + b"9" * 5000 + b"\n", b"seed: 2001-13-45\n",
                                     b"[" * 100_000, b"method: []\n", b"a: [\n", b"\x00\x01"],
                         ids=["not-utf8", "a-list", "list-value", "float-overflow", "int-past-python-limit", "bad-date",
                              "deep", "list-method", "broken", "binary"])
def test_a_bad_config_file_at_the_cli_is_one_error_line(tmp_path, capsys, content):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    assert main(["train", "--config", str(path), "--plan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zoft: error: ") and "Traceback" not in err[0], err


@pytest.mark.parametrize(("name", "content"), [
    ("train.jsonl", b'{"text": "a", "label": 1}\n' + b"[" * 100_000 + b"\n"),
    ("train.csv", b"text,label\na,1\n" + b"x" * 200_000 + b",0\n"),
    ("train.csv", b"\xff\xfetext,label\n"),
    ("train.jsonl", json.dumps({"text": "a", "label": 0.5}).encode()),
], ids=["deep-json", "long-field", "not-utf8", "fractional-label"])
def test_a_bad_data_file_at_the_cli_is_one_error_line(tmp_path, capsys, tiny_bert, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    code = main(["train", "--task", "custom", "--train-file", str(path), "--test-file", str(path),
                 "--text-columns", "text", "--model", str(tiny_bert), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"zoft: error: {path}"), err

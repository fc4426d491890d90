import pytest

from zoft.config import build_config
from zoft.errors import ZoftError
from zoft.method_names import METHODS, label_of, lookup, name_of


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
def test_each_name_round_trips_through_a_config(method):
    config = build_config(overrides={"method": method.name})
    assert name_of(config.method.method, config.method.params) == method.name
    assert label_of(config.method.method, config.method.params) == method.label


def test_the_config_alias_mezo_all_is_the_method_mezo_full():
    config = build_config(overrides={"method": "mezo-all"})
    assert name_of(config.method.method, config.method.params) == "mezo-full"


def test_a_custom_subset_is_named_by_its_pattern_and_its_label_is_cut():
    assert name_of("mezo", "classifier") == "mezo-classifier"
    pattern = "encoder\\.layer\\.(10|11)\\..*attention.*"
    assert label_of("mezo", pattern) == f"MeZO ({pattern[:23]}…)"


def test_an_unknown_or_aliased_name_for_compare_lists_the_known_ones():
    known = "known: lora, full, mezo-lora, mezo-full"
    with pytest.raises(ZoftError, match=f"unknown method 'mezo-all' for compare; {known}"):
        lookup("mezo-all")

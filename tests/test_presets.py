"""The packaged presets: each a valid config; the paper's and the study's settings; compare --plan on a masked LM."""

import re
import shutil

import pytest
import yaml

from zoft import presets
from zoft.cli import main
from zoft.compare import plan
from zoft.config import build_config, load_yaml
from zoft.errors import ZoftError


@pytest.fixture
def roberta_config_only(tiny_roberta, tmp_path):
    """A folder with a RobertaForMaskedLM config.json and nothing else: planning must not need weights or a
    tokenizer (for a hub model, config.json is all --plan downloads)."""
    folder = tmp_path / "roberta-config"
    folder.mkdir()
    shutil.copy(tiny_roberta / "config.json", folder / "config.json")
    return folder


@pytest.mark.parametrize("name", presets.names())
def test_every_packaged_preset_is_a_valid_config_for_its_tasks(name, roberta_config_only):
    task = name.split("-")[0] if name.startswith(("mrpc-", "sst2-")) else "sst2"
    config = build_config(presets.FOLDER / f"{name}.yaml", {"model": str(roberta_config_only), "task": task})
    assert config.model.head in ("prompt", "classifier")
    header = (presets.FOLDER / f"{name}.yaml").read_text().splitlines()[0]
    assert header.startswith("# "), f"{name}.yaml has no header saying where its settings come from"


PAPER = {  # princeton-nlp/MeZO medium_models: mezo.sh, finetune.sh and the README's commands
    "paper-kshot-mezo-full": {"method": "mezo", "params": "all", "lr": 1e-6, "eps": 1e-3, "batch_size": 64,
                              "steps": 100_000, "eval_every": 10_000, "schedule": "constant", "train_lm_head": False},
    "paper-kshot-mezo-lora": {"method": "mezo", "params": "lora", "lr": 1e-4, "eps": 1e-3, "batch_size": 64,
                              "steps": 100_000, "eval_every": 10_000, "schedule": "constant", "train_lm_head": True},
    "paper-kshot-full": {"method": "full", "params": None, "lr": 1e-5, "batch_size": 8, "steps": 1000,
                         "eval_every": 100, "schedule": "linear", "warmup_ratio": 0.0, "train_lm_head": False},
    "paper-kshot-lora": {"method": "lora", "params": None, "lr": 1e-4, "batch_size": 8, "steps": 1000,
                         "eval_every": 100, "schedule": "linear", "warmup_ratio": 0.0, "train_lm_head": True},
}


@pytest.mark.parametrize("name", list(PAPER))
def test_the_paper_presets_hold_the_papers_settings(name, roberta_config_only):
    config = build_config(presets.FOLDER / f"{name}.yaml", {"model": str(roberta_config_only), "task": "mrpc"})
    flat = {key: value for section in config.to_dict().values() for key, value in section.items()}
    assert {key: flat[key] for key in PAPER[name]} == PAPER[name]
    assert (flat["head"], flat["k_shot"], flat["test_limit"], flat["weight_decay"]) == ("prompt", 16, 1000, 0.0)
    assert (flat["select_metric"], flat["select_step_zero"], flat["group_by_length"]) == ("f1", False, False)
    assert flat["divergence_factor"] == 0  # the reference never stops a run
    if flat["train_lm_head"] or flat["method"] == "lora":
        assert (flat["lora_r"], flat["lora_alpha"], flat["lora_dropout"]) == (8, 16.0, 0.0)


def test_paper_presets_select_as_the_reference_does_per_task(roberta_config_only):
    """F1 for MRPC and QQP (LM-BFF's default_dev_objective), else the task's metric; 256 tokens for RTE."""
    preset = presets.FOLDER / "paper-kshot-mezo-lora.yaml"
    by_task = {task: build_config(preset, {"model": str(roberta_config_only), "task": task})
               for task in ("mrpc", "qqp", "sst2", "cola", "rte")}
    assert {task: c.train.select_metric for task, c in by_task.items()} == {
        "mrpc": "f1", "qqp": "f1", "sst2": "accuracy", "cola": "matthews", "rte": "accuracy"}
    assert {task: c.data.max_length for task, c in by_task.items()} == {
        "mrpc": 128, "qqp": 128, "sst2": 128, "cola": 128, "rte": 256}


def plan_documents(capsys) -> dict[str, dict]:
    out = capsys.readouterr().out
    documents = [document for document in yaml.safe_load_all(out) if document]
    names = [match[1] for line in out.splitlines() if (match := re.fullmatch(r"# (\S+)", line))]
    return dict(zip(names, documents, strict=True))


def test_compare_on_a_masked_lm_plans_the_study_prompt_based_without_loading_weights(roberta_config_only, capsys):
    assert main(["compare", "--task", "mrpc", "--model", str(roberta_config_only), "--plan"]) == 0
    configs = plan_documents(capsys)
    assert list(configs) == ["lora", "mezo-lora"]
    lora, mezo = configs["lora"], configs["mezo-lora"]
    for config in (lora, mezo):
        assert config["model"]["head"] == "prompt" and config["model"]["train_lm_head"] is True
        assert (config["model"]["template"], config["model"]["label_words"]) == ("{s1} {mask}, {s2l}", ["No", "Yes"])
        assert (config["model"]["lora_r"], config["model"]["lora_alpha"]) == (8, 16.0)
        assert config["data"]["k_shot"] is None  # the study's full training data
    assert (lora["method"]["method"], lora["train"]["steps"], lora["train"]["batch_size"]) == ("lora", 1000, 4)
    assert (mezo["method"]["method"], mezo["method"]["params"], mezo["train"]["steps"], mezo["train"]["batch_size"],
            mezo["method"]["lr"], mezo["method"]["eps"]) == ("mezo", "lora", 100_000, 64, 1e-4, 1e-3)


@pytest.mark.parametrize("methods", ["lora,full,mezo-lora,mezo-full", "mezo-lora"])
def test_compare_plans_each_method_from_its_paper_preset(roberta_config_only, capsys, methods):
    assert main(["compare", "--task", "mrpc", "--model", str(roberta_config_only), "--preset", "paper-kshot",
                 "--methods", methods, "--seed", "13", "--plan"]) == 0
    configs = plan_documents(capsys)
    assert list(configs) == methods.split(",")
    for name, config in configs.items():
        expected = load_yaml(presets.FOLDER / f"paper-kshot-{name}.yaml")
        flat = {key: value for section in config.values() for key, value in section.items()}
        assert all(flat[key.rpartition(".")[2]] == value for key, value in expected.items()
                   if key != "train.select_metric")
        assert (flat["head"], flat["template"], flat["seed"]) == ("prompt", "{s1} {mask}, {s2l}", 13)
        assert flat["select_metric"] == "f1"  # lm-bff, resolved for MRPC


def test_a_preset_family_must_cover_every_method_and_a_name_must_exist(roberta_config_only):
    with pytest.raises(ZoftError, match="the family has no preset for mezo-all"):
        presets.find("paper-kshot", ["lora", "mezo-all"])
    with pytest.raises(ZoftError, match=r"--preset nonsense: no such file, and no packaged preset of that name; "
                                        r"packaged: .*paper-kshot-lora"):
        plan(["lora"], {"model": str(roberta_config_only)}, ["nonsense"])


def test_train_asks_for_one_preset_of_a_family():
    with pytest.raises(ZoftError, match="--preset paper-kshot is a family of presets, one a method; name one: "
                                        "paper-kshot-full, paper-kshot-lora"):
        presets.find("paper-kshot", [])


def test_a_named_preset_works_for_train_too(roberta_config_only, capsys):
    assert main(["train", "--preset", "paper-kshot-mezo-lora", "--model", str(roberta_config_only), "--task", "rte",
                 "--plan"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert (config["method"]["method"], config["model"]["template"], config["data"]["max_length"]) == (
        "mezo", "{s1-}? {mask}, {s2l}", 256)


def test_compare_on_sst2_with_the_offline_masked_lm_starts_from_the_swept_presets():
    configs = plan(["lora", "mezo-lora"], {"task": "sst2", "model": "bert-tiny-mlm", "k_shot": "512"}, [])
    lora, mezo = configs["lora"], configs["mezo-lora"]
    assert (lora.method.lr, lora.train.steps, mezo.method.lr, mezo.method.eps, mezo.train.steps) == (
        1e-3, 1000, 1e-3, 1e-2, 6000)
    assert lora.model.head == mezo.model.head == "prompt" and lora.model.template == mezo.model.template
    assert lora.train.batch_size == mezo.train.batch_size == 16 and lora.data == mezo.data

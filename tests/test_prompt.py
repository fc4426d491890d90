"""Prompt-based fine-tuning: label words read at the mask, training through the CLI, reloading."""

import importlib.util
import itertools
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from zoft import presets
from zoft.cli import build_parser, main
from zoft.config import ModelConfig, build_config
from zoft.data.batches import collate, encode
from zoft.data.sources import Examples
from zoft.data.splits import load_task_data
from zoft.data.tasks import get_task
from zoft.data.templates import DEFAULT_TEMPLATES, Template, task_template
from zoft.errors import ZoftError
from zoft.evaluate import evaluate_split
from zoft.models import add_lora, input_format, prepare_trainable
from zoft.optim.zeroth_order import ZerothOrderSGD
from zoft.pretrained import load_pretrained
from zoft.prompt import CausalPromptClassifier, PromptClassifier, lm_head
from zoft.runs import RunFolder

REPO = Path(__file__).resolve().parents[1]
SST2 = Examples([("a gripping , funny film",), ("dull",), ("the plot is thin and the acting is worse",)], [1, 0, 0])


def tokens(tokenizer, feature: dict) -> list[str]:
    return tokenizer.convert_ids_to_tokens(feature["input_ids"])


def prompt_model(folder: Path, template: Template) -> tuple[PromptClassifier, object]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    masked_lm = AutoModelForMaskedLM.from_pretrained(folder)
    model = PromptClassifier(masked_lm, template, template.label_token_ids(tokenizer), tokenizer.mask_token_id)
    return model.eval(), tokenizer


def label_logits_at_mask(masked_lm, batch: dict, mask_id: int, label_ids: list[int]) -> torch.Tensor:
    """What the prompt model should output: the plain MLM forward's logits of the label words at the mask."""
    rows, positions = (batch["input_ids"] == mask_id).nonzero(as_tuple=True)
    with torch.no_grad():
        logits = masked_lm(**{k: v for k, v in batch.items() if k != "labels"}).logits
    return logits[rows, positions][:, label_ids]


# -- the model -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["tiny_roberta", "tiny_bert_mlm"])
def test_logits_are_the_label_word_logits_at_the_mask(request, fixture):
    model, tokenizer = prompt_model(request.getfixturevalue(fixture), DEFAULT_TEMPLATES["sst2"])
    batch = collate(DEFAULT_TEMPLATES["sst2"].encode(SST2, tokenizer, 64), tokenizer)
    assert len(set((batch["input_ids"] == tokenizer.mask_token_id).nonzero()[:, 1].tolist())) == 3  # padded apart
    with torch.no_grad():
        output = model(**batch)
    expected = label_logits_at_mask(model.backbone, batch, tokenizer.mask_token_id, model.label_token_ids.tolist())
    assert output.logits.shape == (3, 2)
    torch.testing.assert_close(output.logits, expected)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(expected, batch["labels"]))


def test_moving_the_mask_moves_the_position_read(tiny_roberta):
    words = ("terrible", "great")
    outputs = {}
    for text in ("{s1} It was {mask}.", "{mask}: {s1}"):
        model, tokenizer = prompt_model(tiny_roberta, Template(text, words))
        batch = collate(Template(text, words).encode(SST2, tokenizer, 64), tokenizer)
        with torch.no_grad():
            outputs[text] = model(**batch).logits
        expected = label_logits_at_mask(model.backbone, batch, tokenizer.mask_token_id, model.label_token_ids.tolist())
        torch.testing.assert_close(outputs[text], expected)
        positions = (batch["input_ids"] == tokenizer.mask_token_id).nonzero()[:, 1]
        assert bool((positions == 1).all()) is text.startswith("{mask}")
    assert not torch.allclose(*outputs.values())


def test_a_head_of_several_modules_takes_the_full_forward(tiny_bert_mlm):
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_mlm)
    torch.manual_seed(0)
    masked_lm = DistilBertForMaskedLM(DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=2,
                                                       hidden_dim=64, max_position_embeddings=128)).eval()
    assert lm_head(masked_lm) is None
    template = DEFAULT_TEMPLATES["sst2"]
    model = PromptClassifier(masked_lm, template, template.label_token_ids(tokenizer), tokenizer.mask_token_id)
    batch = collate(template.encode(SST2, tokenizer, 64), tokenizer)
    batch.pop("token_type_ids")  # DistilBERT takes none
    with torch.no_grad():
        logits = model(**batch).logits
    torch.testing.assert_close(logits, label_logits_at_mask(masked_lm, batch, tokenizer.mask_token_id,
                                                            model.label_token_ids.tolist()))


def test_backprop_memorises_a_few_examples(tiny_bert_mlm):
    model, tokenizer = prompt_model(tiny_bert_mlm, DEFAULT_TEMPLATES["sst2"])
    batch = collate(DEFAULT_TEMPLATES["sst2"].encode(SST2, tokenizer, 64), tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    model.train()
    losses = []
    for _ in range(30):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("fixture", ["tiny_roberta", "tiny_bert_mlm"])
def test_only_the_label_words_rows_of_the_vocabulary_are_projected(request, fixture):
    model, tokenizer = prompt_model(request.getfixturevalue(fixture), DEFAULT_TEMPLATES["sst2"])
    assert model.label_rows_only  # the head's decoder is its last step: checked on the loaded weights
    batch = collate(DEFAULT_TEMPLATES["sst2"].encode(SST2, tokenizer, 64), tokenizer)
    decoder = model.masked_lm().get_output_embeddings()
    calls = []
    decoder.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    with torch.no_grad():
        fast = model(**batch).logits
        model.label_rows_only = False
        full = model(**batch).logits
    assert calls == [(3, decoder.out_features)]  # only the full path ran the whole vocabulary
    torch.testing.assert_close(fast, full)


def test_lora_on_the_decoder_takes_the_whole_head(tiny_bert_mlm):
    model, tokenizer = prompt_model(tiny_bert_mlm, DEFAULT_TEMPLATES["sst2"])
    model = add_lora(model, ModelConfig(lora_r=4, target_modules=["query", "decoder"]))
    with torch.no_grad():  # a trained-looking adapter on the decoder, which the label rows alone would miss
        for name, parameter in model.named_parameters():
            if "decoder.lora_B" in name:
                parameter.add_(torch.ones_like(parameter))
    batch = collate(DEFAULT_TEMPLATES["sst2"].encode(SST2, tokenizer, 64), tokenizer)
    with torch.no_grad():
        logits = model.eval()(**batch).logits
    torch.testing.assert_close(logits, label_logits_at_mask(model.masked_lm(), batch, tokenizer.mask_token_id,
                                                            model.label_token_ids.tolist()))


HEAD_PARAMETERS = {  # the masked-LM head's own parameters (its decoder weight is the input embedding matrix)
    "tiny_bert_mlm": {"cls.predictions.bias", "cls.predictions.transform.dense.weight",
                      "cls.predictions.transform.dense.bias", "cls.predictions.transform.LayerNorm.weight",
                      "cls.predictions.transform.LayerNorm.bias"},
    "tiny_roberta": {"lm_head.bias", "lm_head.dense.weight", "lm_head.dense.bias", "lm_head.layer_norm.weight",
                     "lm_head.layer_norm.bias"},
}


@pytest.mark.parametrize("fixture", list(HEAD_PARAMETERS))
@pytest.mark.parametrize("method", ["lora", "mezo"])
def test_train_lm_head_trains_the_heads_transform_and_bias_beside_lora(request, fixture, method):
    model, _ = prompt_model(request.getfixturevalue(fixture), DEFAULT_TEMPLATES["sst2"])
    model = prepare_trainable(model, ModelConfig(lora_r=4, head="prompt", train_lm_head=True), method, "lora")
    trainable = {name.removeprefix("backbone.base_model.model."): p for name, p in model.named_parameters()
                 if p.requires_grad}
    assert {name for name in trainable if "lora_" not in name} == HEAD_PARAMETERS[fixture]
    assert all(name.endswith(("query.lora_A.default.weight", "query.lora_B.default.weight",
                              "value.lora_A.default.weight", "value.lora_B.default.weight"))
               for name in trainable if "lora_" in name)
    embeddings = model.masked_lm().get_input_embeddings().weight
    assert not embeddings.requires_grad and model.masked_lm().get_output_embeddings().weight is embeddings
    hidden, vocabulary = model.masked_lm().config.hidden_size, model.masked_lm().config.vocab_size
    head_size = hidden * hidden + hidden + 2 * hidden + vocabulary  # dense weight and bias, layer norm, output bias
    assert sum(p.numel() for name, p in trainable.items() if "lora_" not in name) == head_size


def test_a_trained_lm_head_is_saved_beside_the_adapter_and_reloaded(tiny_bert_mlm, tmp_path):
    model, tokenizer = prompt_model(tiny_bert_mlm, DEFAULT_TEMPLATES["sst2"])
    model = prepare_trainable(model, ModelConfig(lora_r=4, head="prompt", train_lm_head=True), "lora", None)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and "lora_A" not in name:
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path)
    batch = collate(DEFAULT_TEMPLATES["sst2"].encode(SST2, tokenizer, 64), tokenizer)
    with torch.no_grad():
        trained = model.eval()(**batch).logits
        torch.testing.assert_close(PromptClassifier.from_pretrained(tmp_path, tiny_bert_mlm).eval()(**batch).logits,
                                   trained)
        (tmp_path / "lm_head.safetensors").unlink()  # without it the reload would lose the head's training
        assert not torch.allclose(PromptClassifier.from_pretrained(tmp_path, tiny_bert_mlm).eval()(**batch).logits,
                                  trained)


@pytest.mark.parametrize("lora", [True, False])
def test_save_and_reload_reproduce_the_logits(tiny_bert_mlm, tmp_path, lora):
    model, tokenizer = prompt_model(tiny_bert_mlm, DEFAULT_TEMPLATES["sst2"])
    if lora:
        model = add_lora(model, ModelConfig(lora_r=4))
    torch.manual_seed(1)
    with torch.no_grad():  # trained-looking weights: LoRA's B starts at zero, which would hide a lost adapter
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and (not lora or "lora_B" in name):
                parameter.add_(0.1 * torch.randn_like(parameter))
    model.save_pretrained(tmp_path)
    assert (tmp_path / ("adapter_config.json" if lora else "model.safetensors")).is_file()
    reloaded = PromptClassifier.from_pretrained(tmp_path, tiny_bert_mlm).eval()
    batch = collate(DEFAULT_TEMPLATES["sst2"].encode(SST2, tokenizer, 64), tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model.eval()(**batch).logits)
    assert json.loads((tmp_path / "zoft_prompt.json").read_text())["label_words"] == ["terrible", "great"]


# -- decoder-only models -----------------------------------------------------------------------------------

DECODERS = ("llama", "opt", "qwen2")


def causal_model(folder: Path, task: str) -> tuple[CausalPromptClassifier, object, Template]:
    decoder, tokenizer = load_pretrained(AutoModelForCausalLM, str(folder))
    template = task_template(get_task(task), causal=True)
    return CausalPromptClassifier(decoder, template, template.label_token_ids(tokenizer)).eval(), tokenizer, template


RTE = Examples([("A man sleeps. ", " The man is asleep."), ("A gripping film.", "It is dull .")], [0, 1])


@pytest.mark.parametrize("family", DECODERS)
def test_a_decoder_scores_the_label_words_as_the_next_token_after_the_prompt(tiny_decoders, family):
    model, tokenizer, template = causal_model(tiny_decoders[family], "sst2")
    features = template.encode(SST2, tokenizer, 64)
    assert len({len(f["input_ids"]) for f in features}) == 3  # three lengths: padding moves the last token
    tokenizer.padding_side = "right"
    right = collate(features, tokenizer)
    with torch.no_grad():
        plain = model.backbone(input_ids=right["input_ids"], attention_mask=right["attention_mask"]).logits
        expected = plain[torch.arange(3), right["attention_mask"].sum(-1) - 1][:, model.label_token_ids]
        output = model(**right)
        tokenizer.padding_side = "left"
        left = collate(features, tokenizer)
        assert (left["attention_mask"][:, 0] == 0).any()
        from_left = model(**left).logits
    torch.testing.assert_close(output.logits, expected)
    torch.testing.assert_close(from_left, expected, rtol=1e-4, atol=1e-5)  # positions count attended tokens only
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(expected, right["labels"]))


def test_a_causal_prompt_has_the_bos_and_stops_where_the_label_word_goes(tiny_decoders):
    _, tokenizer, template = causal_model(tiny_decoders["llama"], "sst2")
    feature = template.encode(SST2, tokenizer, 64)[1]
    assert tokens(tokenizer, feature)[0] == "<s>" and "</s>" not in tokens(tokenizer, feature)
    assert tokenizer.decode(feature["input_ids"][1:]) == "dull It was"
    assert template.label_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids(w) for w in ("Ġterrible", "Ġgreat")]
    # After a newline (the paper's RTE template) the label word has no leading space, and sentences are stripped.
    _, tokenizer, template = causal_model(tiny_decoders["llama"], "rte")
    assert template.text.endswith("Yes or No?\n{mask}")
    feature = template.encode(RTE, tokenizer, 64)[0]
    assert tokenizer.decode(feature["input_ids"][1:]) == 'A man sleeps.\nDoes this mean that "The man is asleep." is ' \
                                                         'true? Yes or No?\n'
    assert template.label_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids(w) for w in ("Yes", "No")]


def test_a_causal_template_must_end_with_the_mask():
    with pytest.raises(ZoftError, match=r"goes on after \{mask\}; a decoder-only model reads the label word"):
        task_template(get_task("sst2"), "{s1} It was {mask}.", causal=True)


def test_a_decoder_truncates_the_sentence_not_the_prompt(tiny_decoders):
    _, tokenizer, template = causal_model(tiny_decoders["qwen2"], "sst2")
    feature = template.encode(SST2, tokenizer, 8)[2]
    prompt = tokenizer(" It was", add_special_tokens=False)["input_ids"]
    assert len(feature["input_ids"]) == 8 and feature["input_ids"][-len(prompt):] == prompt


def lora_decoder_prompt(folder: Path) -> tuple[torch.nn.Module, dict, list[torch.nn.Parameter]]:
    """A tiny decoder's SST-2 prompt model with LoRA (PEFT's default target modules for its family), a batch of
    three prompts of different lengths (padded), and the trainable parameters."""
    model, tokenizer, template = causal_model(folder, "sst2")
    batch = collate(template.encode(SST2, tokenizer, 64), tokenizer)
    torch.manual_seed(0)
    model = prepare_trainable(model, ModelConfig(model=str(folder)), "lora", None).eval()  # PEFT's dropout off
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in name for name in names)
    return model, batch, [p for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("family", DECODERS)
def test_backprop_lowers_the_loss_through_a_decoder_prompt(tiny_decoders, family):
    model, batch, trainable = lora_decoder_prompt(tiny_decoders[family])
    with torch.no_grad():
        start = model(**batch).loss.item()
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(10):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert model(**batch).loss.item() < start - 0.1


@pytest.mark.parametrize("family", DECODERS)
def test_mezo_lowers_the_loss_through_a_decoder_prompt_with_forward_passes_only(tiny_decoders, family):
    model, batch, trainable = lora_decoder_prompt(tiny_decoders[family])
    # 16 directions a step: LoRA's B starts at zero, so a single direction's estimate is mostly noise on a
    # random model (seen: the loss rising over 20 one-direction steps at rates from 0.1 to 10).
    optimizer = ZerothOrderSGD(trainable, lr=3e-2, eps=1e-3, seed=0, n_perturbations=16)
    with torch.no_grad():
        start = model(**batch).loss.item()
        for _ in range(40):
            optimizer.step(lambda: model(**batch).loss)
        # seen: falls of 0.03 (OPT) to 0.22 (Llama)
        assert model(**batch).loss.item() < start - 0.01


# -- through the CLI -------------------------------------------------------------------------------------


def train_sst2_prompt(out: Path, model: Path, glue: Path, *options: str) -> int:
    return main(["train", "--model", str(model), "--data-dir", str(glue), "--task", "sst2", "--head", "prompt",
                 "--train-limit", "64", "--validation-fraction", "0.002", "--steps", "6", "--eval-every", "3",
                 "--log-every", "1", "--batch-size", "8", "--max-length", "64", "--quiet", "--out", str(out), *options])


def assert_reload_reproduces_test_predictions(run: Path, base_model: Path) -> None:
    config = RunFolder(run).read_config()
    data = load_task_data(config.data, seed=config.train.seed)
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    encoded = encode(data.splits["test"], tokenizer, config.data.max_length, **input_format(config.model, data.task))
    model = PromptClassifier.from_pretrained(run / "model", base_model)
    result = evaluate_split(model, encoded, tokenizer, data.task, 64, torch.device("cpu"))
    saved = [json.loads(line) for line in (run / "predictions" / "test.jsonl").read_text().splitlines()]
    assert result.predictions.tolist() == [row["prediction"] for row in saved]
    torch.testing.assert_close(result.logits, torch.tensor([row["logits"] for row in saved]))


def trained_tensors(run: Path) -> dict[str, torch.Tensor]:
    """The trainable tensors at the end of the run, by name (the loop's resumable checkpoint)."""
    from safetensors.torch import load_file

    return load_file(run / "checkpoint" / "trainable.safetensors")


def test_lora_trains_the_adapters_through_the_prompt(tmp_path, tiny_bert_mlm, real_glue, capsys):
    from safetensors.torch import load_file

    run = tmp_path / "run"
    # A high rate: the tiny random model must change its validation predictions, so that model/ holds
    # trained adapters (a later best step) and the reload below checks them, not LoRA's zero start.
    assert train_sst2_prompt(run, tiny_bert_mlm, real_glue, "--method", "lora", "--lr", "3e-2") == 0, \
        capsys.readouterr().err
    summary = RunFolder(run).read_summary().to_json()
    assert summary["status"] == "completed" and summary["passes"]["backward"] == 6
    assert summary["best"]["step"] > 0
    losses = [r["loss"] for r in RunFolder(run).read_metrics() if r["kind"] == "train"]
    assert len(losses) == 6 and all(0 < loss < 10 for loss in losses)
    assert trained_tensors(run) and all("lora_" in name for name in trained_tensors(run))
    adapter = load_file(run / "model" / "adapter_model.safetensors")
    assert summary["parameters"]["trainable"] == sum(t.numel() for t in adapter.values())
    assert_reload_reproduces_test_predictions(run, tiny_bert_mlm)


# The rates at which 20 steps move the tiny random model's validation predictions: its label-word logits barely
# depend on LoRA's B (zero at the start), so MeZO's projected gradients there are about 1e-3 and LoRA needs a
# rate far above a real model's for its updates to show.
@pytest.mark.parametrize(("params", "lr"), [("lora", "10"), ("all", "1e-3")])
def test_mezo_trains_through_the_prompt_with_forward_passes_only(tmp_path, tiny_bert_mlm, real_glue, capsys,
                                                                 params, lr):
    run = tmp_path / "run"
    # 8 training rows and batches of 8: every step sees the same rows, so the loss it measures (the mean of
    # loss+ and loss-, at the parameters before its update) must fall: MeZO's update changes the loss by
    # -lr * g**2 to first order, and an update of the wrong sign or none at all would not. Not at every step:
    # that mean also holds eps**2 / 2 * z'Hz, which varies with the direction (seen: rises of 1e-5 to 2e-4 in
    # 3 of 19 steps on all weights), so the test asks for a fall overall and in most steps.
    options = ["--method", "mezo", "--params", params, "--lr", lr, "--train-limit", "8", "--steps", "20",
               "--eval-every", "10"]
    assert train_sst2_prompt(run, tiny_bert_mlm, real_glue, *options) == 0, capsys.readouterr().err
    summary = RunFolder(run).read_summary().to_json()
    assert summary["status"] == "completed" and summary["passes"] == {"forward": 40, "backward": 0}
    losses = [r["loss"] for r in RunFolder(run).read_metrics() if r["kind"] == "train"]
    assert len(losses) == 20
    falls = sum(later <= earlier for earlier, later in itertools.pairwise(losses))
    assert falls >= 15 and losses[-1] < losses[0] - 1e-3
    # Trains: a later evaluation than the untrained step 0 is the best, so model/ holds moved weights.
    assert summary["best"]["step"] > 0
    tensors = trained_tensors(run)
    if params == "lora":
        assert all("lora_" in name for name in tensors)
        assert any(t.abs().sum() > 0 for name, t in tensors.items() if "lora_B" in name)  # moved off zero
    else:
        assert summary["parameters"]["trainable"] == summary["parameters"]["total"]
        assert (run / "model" / "model.safetensors").is_file()
    assert_reload_reproduces_test_predictions(run, tiny_bert_mlm)


def test_compare_on_a_decoder_runs_lora_and_mezo_through_its_prompt_and_reports_them(tmp_path, tiny_decoders,
                                                                                     real_glue):
    decoder, out = tiny_decoders["llama"], tmp_path / "compare"
    assert main(["compare", "--task", "sst2", "--model", str(decoder), "--head", "prompt", "--methods",
                 "lora,mezo-lora", "--data-dir", str(real_glue), "--train-limit", "64", "--validation-fraction",
                 "0.002", "--test-limit", "64", "--steps", "6", "--eval-every", "3", "--batch-size", "8",
                 "--max-length", "64", "--lr", "3e-2", "--quiet", "--out", str(out)]) == 0
    for method, backward in (("lora", 6), ("mezo-lora", 0)):
        summary = RunFolder(out / method).read_summary().to_json()
        assert summary["status"] == "completed" and summary["passes"]["backward"] == backward
        config = RunFolder(out / method).read_config()
        assert (config.model.head, config.model.template) == ("prompt", "{s1} It was {mask}")
        prompt = json.loads((out / method / "model" / "zoft_prompt.json").read_text())
        assert prompt["causal"] is True and prompt["mask_token_id"] is None
        assert_reload_reproduces_test_predictions(out / method, decoder)
    assert RunFolder(out / "lora").read_summary().to_json()["best"]["step"] > 0  # LoRA moved the predictions
    report = (out / "report" / "report.md").read_text()
    assert "LoRA" in report and "MeZO (LoRA)" in report
    comparison = report.split("## Comparison")[1].split("##")[0]
    assert "Majority class" in comparison and "Peak memory" in comparison and "Time/step" in comparison


def test_mezo_on_all_weights_of_a_decoder_saves_a_model_that_reloads(tmp_path, tiny_decoders, real_glue):
    run = tmp_path / "run"
    assert train_sst2_prompt(run, tiny_decoders["opt"], real_glue, "--method", "mezo", "--params", "all",
                             "--lr", "1e-3") == 0
    summary = RunFolder(run).read_summary().to_json()
    assert summary["parameters"]["trainable"] == summary["parameters"]["total"]
    assert (run / "model" / "model.safetensors").is_file()
    assert_reload_reproduces_test_predictions(run, tiny_decoders["opt"])


def test_a_model_without_a_masked_lm_head_is_a_one_line_error(tmp_path, real_glue, capsys):
    code = main(["train", "--model", "minilm", "--head", "prompt", "--task", "sst2", "--data-dir", str(real_glue),
                 "--train-limit", "64", "--validation-fraction", "0.002", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1
    assert err.startswith("zoft: error: head=prompt needs a model with a masked-LM head or a decoder-only LM")
    assert "'minilm' has neither" in err and "roberta-large" in err


# -- the Table 18 benchmark script -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def table18():
    spec = importlib.util.spec_from_file_location("mezo_table18", REPO / "benchmarks" / "mezo_table18.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table18_script_parses_its_arguments(table18, capsys):
    with pytest.raises(SystemExit) as stop:
        table18.parse_args(["--help"])
    assert stop.value.code == 0 and "--steps" in capsys.readouterr().out
    args = table18.parse_args(["--seeds", "13", "--steps", "200"])
    assert args.seeds == [13] and args.steps == 200


def test_table18_commands_are_valid_zoft_train_commands(table18, tmp_path):
    args = table18.parse_args(["--data-dir", str(tmp_path), "--out", str(tmp_path / "runs")])
    assert args.seeds == [13, 21, 42, 87, 100]
    for seed in args.seeds:
        config = build_config(presets.FOLDER / f"{table18.PRESET}.yaml", table18.train_overrides(args, seed))
        assert (config.model.model, config.model.head, config.data.task) == ("roberta-large", "prompt", "sst2")
        assert (config.data.k_shot, config.train.seed, config.train.batch_size) == (16, seed, 64)
        assert (config.method.method, config.method.params, config.method.lr, config.method.eps) == (
            "mezo", "all", 1e-6, 1e-3)
        assert (config.method.schedule, config.method.weight_decay) == ("constant", 0.0)
        assert (config.data.test_limit, config.train.select_step_zero) == (1000, False)
        argv = table18.train_argv(args, seed)
        assert argv[:5] == ["train", "--out", str(tmp_path / "runs" / f"seed{seed}"), "--preset", table18.PRESET]
        assert build_parser().parse_args(argv).command == "train"


def test_table18_fails_fast_without_a_gpu_or_the_model(table18, monkeypatch, real_glue):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        table18.main(["--data-dir", str(real_glue)])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("zoft.pretrained._in_hub_cache", lambda name: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit, match=r"cannot reach the Hugging Face hub .* to download the model 'roberta-large'"):
        table18.main(["--data-dir", str(real_glue)])

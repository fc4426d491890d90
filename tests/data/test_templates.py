"""Prompt templates: LM-BFF's token sequences (transforms, spaces, special tokens), label words, truncation."""

import pytest
from transformers import AutoTokenizer

from zoft.config import ModelConfig
from zoft.data.batches import encode
from zoft.data.sources import Examples, read_glue_folder
from zoft.data.tasks import get_task
from zoft.data.templates import DEFAULT_TEMPLATES, Template, task_template
from zoft.errors import ZoftError
from zoft.models import input_format

SST2 = Examples([("a gripping , funny film",), ("dull",), ("the plot is thin and the acting is worse",)], [1, 0, 0])


def tokens(tokenizer, feature: dict) -> list[str]:
    return tokenizer.convert_ids_to_tokens(feature["input_ids"])


def test_sst2_renders_like_lm_bff_in_bpe_and_wordpiece(tiny_roberta, tiny_bert_mlm):
    roberta = AutoTokenizer.from_pretrained(tiny_roberta)
    feature = DEFAULT_TEMPLATES["sst2"].encode(SST2, roberta, 64)[1]
    assert tokens(roberta, feature) == ["<s>", *roberta.tokenize("dull"), "ĠIt", "Ġwas", "<mask>", ".", "</s>"]
    assert set(feature) == {"input_ids", "attention_mask", "labels"} and feature["labels"] == 0

    bert = AutoTokenizer.from_pretrained(tiny_bert_mlm)
    feature = DEFAULT_TEMPLATES["sst2"].encode(SST2, bert, 64)[1]
    assert tokens(bert, feature) == ["[CLS]", "dull", "it", "was", "[MASK]", ".", "[SEP]"]
    assert feature["token_type_ids"] == [0] * 7 and feature["attention_mask"] == [1] * 7


def test_pair_templates_apply_lm_bff_sentence_transforms(tiny_roberta):
    """MRPC *cls**sent_0**mask*,*+sentl_1**sep+*, RTE *cls**sent-_0*?*mask*,*+sentl_1**sep+* (run_fewshot.sh)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_roberta)
    pair = Examples([("A man sleeps.", "A man is asleep.")], [0])
    mrpc = DEFAULT_TEMPLATES["mrpc"].encode(pair, tokenizer, 64)[0]
    assert tokenizer.decode(mrpc["input_ids"]) == "<s>A man sleeps.<mask>, a man is asleep.</s>"
    rte = DEFAULT_TEMPLATES["rte"].encode(pair, tokenizer, 64)[0]
    assert tokenizer.decode(rte["input_ids"]) == "<s>A man sleeps?<mask>, a man is asleep.</s>"
    assert tokens(tokenizer, rte)[-len(tokenizer.tokenize(" a man is asleep.")) - 4:] == [
        "?", "<mask>", ",", *tokenizer.tokenize(" a man is asleep."), "</s>"]


def test_sentences_go_in_as_the_file_holds_them(tiny_roberta):
    """LM-BFF does not strip: SST-2's sentences end with a space, which byte-level BPE keeps as a token."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_roberta)
    feature = DEFAULT_TEMPLATES["sst2"].encode(Examples([("dull ",)], [0]), tokenizer, 64)[0]
    assert tokens(tokenizer, feature) == ["<s>", *tokenizer.tokenize("dull "), "ĠIt", "Ġwas", "<mask>", ".", "</s>"]
    assert tokenizer.tokenize("dull ")[-1] == "Ġ"


@pytest.mark.parametrize(("text", "rendered"), [
    ("{s1l} /{mask} {s2u}", "<s>a man sleeps. /<mask> A man is asleep.</s>"),
    ("{s1l-} / {s2-}{mask}", "<s>a man sleeps / A man is asleep<mask></s>"),
    ("{s2}{s1}{mask}", "<s>A man is asleep.A man sleeps.<mask></s>"),
])
def test_the_transforms_combine(tiny_roberta, text, rendered):
    tokenizer = AutoTokenizer.from_pretrained(tiny_roberta)
    pair = Examples([("A man sleeps.", "A man is asleep.")], [0])
    feature = Template(text, ("No", "Yes")).encode(pair, tokenizer, 64)[0]
    assert tokenizer.decode(feature["input_ids"]) == rendered


def lm_bff_input_ids(template: str, sentences: tuple[str, ...], tokenizer) -> list[int]:
    """LM-BFF's tokenize_multipart_input (princeton-nlp/MeZO medium_models/src/dataset.py) for the parts of
    the GLUE templates in run_fewshot.sh, written out from its code: the reference zoft must reproduce."""
    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    ids: list[int] = []
    for part in template.split("*"):
        if part in ("cls", "mask", "sep+"):
            ids.append({"cls": tokenizer.cls_token_id, "mask": tokenizer.mask_token_id,
                        "sep+": tokenizer.sep_token_id}[part])
        elif part.startswith("sent_"):
            ids += enc(sentences[int(part.split("_")[1])])
        elif part.startswith("sent-_"):
            ids += enc(sentences[int(part.split("_")[1])][:-1])
        elif part.startswith("+sentl_"):
            text = sentences[int(part.split("_")[1])]
            ids += enc(" " + text[:1].lower() + text[1:])
        elif part:
            part = part.replace("_", " ")
            ids += [tokenizer.convert_tokens_to_ids(part)] if len(part) == 1 else enc(part)
    return ids


LM_BFF_TEMPLATES = {  # medium_models/run_fewshot.sh
    "sst2": "*cls**sent_0*_It_was*mask*.*sep+*",
    "cola": "*cls**sent_0*_This_is*mask*.*sep+*",
    "mrpc": "*cls**sent_0**mask*,*+sentl_1**sep+*",
    "rte": "*cls**sent-_0*?*mask*,*+sentl_1**sep+*",
}


@pytest.mark.parametrize("task", list(LM_BFF_TEMPLATES))
@pytest.mark.parametrize("model", ["tiny_roberta", "bert_tiny_mlm"])
def test_the_default_templates_give_lm_bffs_token_ids_on_real_glue(request, real_glue, task, model):
    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(model))
    examples = read_glue_folder(get_task(task), real_glue)["test"]
    examples = examples.subset(range(min(len(examples), 300)))
    # No truncation (the tiny BPE vocabulary spells words nearly letter by letter): this compares the templates alone.
    features = DEFAULT_TEMPLATES[task].encode(examples, tokenizer, 100_000)
    for feature, sentences in zip(features, examples.texts, strict=True):
        assert feature["input_ids"] == lm_bff_input_ids(LM_BFF_TEMPLATES[task], sentences, tokenizer)


def test_rte_inputs_no_longer_carry_the_premise_full_stop(bert_tiny_mlm, real_glue):
    """262 of RTE's 277 dev premises end with a full stop, which LM-BFF drops before its '?'."""
    tokenizer = AutoTokenizer.from_pretrained(bert_tiny_mlm)
    examples = read_glue_folder(get_task("rte"), real_glue)["test"]
    assert sum(premise.endswith(".") for premise, _ in examples.texts) == 262
    features = DEFAULT_TEMPLATES["rte"].encode(examples, tokenizer, 256)
    dot, question = tokenizer.convert_tokens_to_ids("."), tokenizer.convert_tokens_to_ids("?")
    for feature, (premise, _) in zip(features, examples.texts, strict=True):
        mask = feature["input_ids"].index(tokenizer.mask_token_id)
        assert feature["input_ids"][mask - 1] == question
        if premise.endswith(".") and not premise[:-1].rstrip().endswith("."):
            assert feature["input_ids"][mask - 2] != dot


def test_label_words_are_single_tokens_with_a_leading_space(tiny_roberta, tiny_bert_mlm):
    roberta = AutoTokenizer.from_pretrained(tiny_roberta)
    ids = DEFAULT_TEMPLATES["mnli"].label_token_ids(roberta)
    assert roberta.convert_ids_to_tokens(ids) == ["ĠNo", "ĠYes", "ĠMaybe"]
    bert = AutoTokenizer.from_pretrained(tiny_bert_mlm)
    assert bert.convert_ids_to_tokens(DEFAULT_TEMPLATES["mnli"].label_token_ids(bert)) == ["no", "yes", "maybe"]


@pytest.mark.parametrize("words", [("terrible", "supercalifragilistic"), ("great", "xqzxqzxqz")])
def test_a_label_word_that_is_not_one_token_is_named(tiny_roberta, tiny_bert_mlm, words):
    for folder in (tiny_roberta, tiny_bert_mlm):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        with pytest.raises(ZoftError, match=f"'label_words': '{words[1]}' is not a single token"):
            Template("{s1} It was {mask}.", words).encode(SST2, tokenizer, 64)


def test_label_words_that_collide_after_lower_casing_are_refused(tiny_bert_mlm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_mlm)
    with pytest.raises(ZoftError, match="not distinct"):
        Template("{s1} {mask}", ("Yes", "yes")).label_token_ids(tokenizer)


def test_truncation_cuts_the_longest_sentence_and_keeps_template_and_mask(tiny_bert_mlm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_mlm)
    long, short = " ".join(["word"] * 50), "a short one"
    feature = DEFAULT_TEMPLATES["rte"].encode(Examples([(long, short)], [0]), tokenizer, 16)[0]
    assert len(feature["input_ids"]) == 16
    assert tokens(tokenizer, feature) == ["[CLS]", *["word"] * 8, "?", "[MASK]", ",", "a", "short", "one", "[SEP]"]
    sst2 = DEFAULT_TEMPLATES["sst2"].encode(Examples([(long,)], [1]), tokenizer, 10)[0]
    assert tokens(tokenizer, sst2)[-5:] == ["it", "was", "[MASK]", ".", "[SEP]"] and len(sst2["input_ids"]) == 10
    with pytest.raises(ZoftError, match="'max_length': 5 tokens cannot hold the template"):
        DEFAULT_TEMPLATES["sst2"].encode(Examples([(long,)], [1]), tokenizer, 5)


def test_a_sentence_holding_the_mask_token_is_refused(tiny_bert_mlm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_mlm)
    with pytest.raises(ZoftError, match="example 1: its text contains the mask token"):
        DEFAULT_TEMPLATES["sst2"].encode(Examples([("fine",), ("a [MASK] here",)], [0, 1]), tokenizer, 64)


def test_encode_takes_the_template_from_input_format(tiny_bert_mlm):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_mlm)
    fmt = input_format(ModelConfig(head="prompt"), get_task("sst2"))
    encoded = encode(SST2, tokenizer, 64, **fmt)
    assert encoded.labels == [1, 0, 0]
    assert all(feature["input_ids"].count(tokenizer.mask_token_id) == 1 for feature in encoded.features)


# -- task_template ---------------------------------------------------------------------------------------


def test_defaults_follow_the_task_label_order():
    assert task_template(get_task("rte")).label_words == ("Yes", "No")
    assert task_template(get_task("mnli")).label_words == ("No", "Yes", "Maybe")
    assert task_template(get_task("cola")).label_words == ("incorrect", "correct")
    mine = task_template(get_task("sst2"), "{mask} : {s1}", ["bad", "good"])
    assert mine == Template("{mask} : {s1}", ("bad", "good"))


@pytest.mark.parametrize(("task", "template", "words", "message"), [
    ("sst2", "{s1} It was.", None, r"'template': .* has \{mask\} 0 times"),
    ("sst2", "{s1} {mask}, {s2}", None, r"'template': .* has \{s2\} 1 times; task sst2 \(a single-sentence task\)"),
    ("mrpc", "{s1} {mask}", None, r"'template': .* has \{s2\} 0 times; task mrpc \(a pair task\) needs it 1 times"),
    ("sst2", "{s1} {x} {mask}", None, r"'template': unknown placeholder \{x\}"),
    ("sst2", "{s1x} {mask}", None, r"'template': unknown placeholder \{s1x\}"),
    ("sst2", "{s1} {mask-}", None, r"'template': unknown placeholder \{mask-\}"),
    ("sst2", None, ["bad", "good", "fine"], r"'label_words': task sst2 has 2 labels \(0, 1\), got 3 words"),
    ("stsb", None, None, "stsb is a regression task"),
])
def test_task_template_refuses_what_does_not_fit(task, template, words, message):
    with pytest.raises(ZoftError, match=message):
        task_template(get_task(task), template, words)




def test_rte_at_its_task_length_truncates_nothing_where_128_tokens_cut_33_dev_inputs(bert_tiny_mlm, real_glue):
    """The MeZO paper's code runs RTE (and MNLI) at 256 tokens: zoft's default for them (data.tasks)."""
    tokenizer = AutoTokenizer.from_pretrained(bert_tiny_mlm)
    examples = read_glue_folder(get_task("rte"), real_glue)["test"]
    lengths = [len(f["input_ids"]) for f in DEFAULT_TEMPLATES["rte"].encode(examples, tokenizer, 100_000)]
    assert (len(lengths), sum(n > 128 for n in lengths), sum(n > 256 for n in lengths)) == (277, 33, 0)
    assert get_task("rte").max_length == get_task("mnli").max_length == 256 and get_task("mrpc").max_length == 128

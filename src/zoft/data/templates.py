"""Prompt templates (LM-BFF, Gao et al. 2021): an example rendered as token ids around one mask token.

A template is text with placeholders, e.g. SST-2 ``{s1} It was {mask}.``; each class has a label word
(``terrible`` / ``great``) whose masked-LM logit at the mask is the class's score (zoft.prompt). The
rules reproduce the token sequences of LM-BFF's templates, which the MeZO paper's code runs
(princeton-nlp/MeZO, medium_models/src/dataset.py, ``tokenize_multipart_input``):

- The placeholders and the literal text between them are tokenised separately, as LM-BFF does, so that
  truncation can shorten the sentences alone and never cut the template or the mask.
- Literal text is tokenised as written, with its leading space (`` It was`` → ``ĠIt``, ``Ġwas`` in BPE).
- ``{s1}`` / ``{s2}`` are the example's sentences as the file holds them (LM-BFF does not strip them either);
  a space before one is kept in front of it (LM-BFF's ``*+sent_1*``: BPE marks word starts with it).
- Sentence transforms, after LM-BFF's: ``{s1-}`` drops the sentence's last character (``*sent-_0*``: the
  final full stop before "?"), ``{s2l}`` lower-cases its first letter (``*sentl_1*``), ``{s2u}`` upper-cases
  it; ``{s2l-}`` does both.
- A space before ``{mask}`` is dropped: the mask stands for the label word together with its leading
  space, as the label words are scored as `` great`` (BPE ``Ġgreat``; WordPiece ignores the space).

A causal template (``causal=True``, for decoder-only models) ends at ``{mask}``: the prompt is everything
before it, with the tokenizer's leading special tokens (a BOS) and none after it (an EOS would be the position
read), and the label word is the next token. As in the MeZO paper's large-model code, sentences are stripped,
and a label word after a newline is scored without a leading space (``...Yes or No?\n`` + ``Yes``), one after
a space with it (``It was`` + `` great``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from zoft.data.sources import Examples
from zoft.data.tasks import TASKS, TaskSpec, require_classification
from zoft.errors import ZoftError

PROMPT_HEAD = "config key 'head': prompt (label words scored at a mask token; head=classifier for regression)"
PLACEHOLDER = re.compile(r"(\s*)\{([^{}]*)\}")
SENTENCE = re.compile(r"(s[12])([lu]?)(-?)")  # a sentence placeholder: name, case of the first letter, drop last
SENTENCES = ("s1", "s2")
MLM_EXAMPLES = "e.g. --model roberta-large, --model bert-base-uncased, or offline --model bert-tiny-mlm"


@dataclass(frozen=True)
class Part:
    """One piece of a template: kind "literal" (text: the text), "mask", or "s1" / "s2" (text: what goes
    before the sentence, a space or nothing; case: "l" or "u" for the first letter; drop_last)."""

    kind: str
    text: str = ""
    case: str = ""
    drop_last: bool = False

    def render(self, sentence: str) -> str:
        """The sentence as this placeholder puts it into the template."""
        if self.case == "l":
            sentence = sentence[:1].lower() + sentence[1:]
        elif self.case == "u":
            sentence = sentence[:1].upper() + sentence[1:]
        return self.text + (sentence[:-1] if self.drop_last else sentence)


@dataclass(frozen=True)
class Template:
    """A prompt: the text with placeholders {s1}, {s2} (pair tasks) and {mask}, and one label word per
    class in the task's label order."""

    text: str
    label_words: tuple[str, ...]
    causal: bool = False

    def parts(self) -> list[Part]:
        parts: list[Part] = []
        position = 0
        for match in PLACEHOLDER.finditer(self.text):
            if match.start() > position:
                parts.append(Part("literal", self.text[position : match.start()]))
            space, name = match.groups()
            sentence = SENTENCE.fullmatch(name)
            if sentence:
                kind, case, drop = sentence.groups()
                parts.append(Part(kind, " " if space else "", case, bool(drop)))
            else:
                parts.append(Part(name, space))  # a mask keeps its whitespace: a causal prompt may end in a newline
            position = match.end()
        if position < len(self.text):
            parts.append(Part("literal", self.text[position:]))
        return parts

    def check(self, task: TaskSpec) -> None:
        """Raise a ZoftError naming the config key when the template or the label words do not fit `task`."""
        names = [part.kind for part in self.parts() if part.kind != "literal"]
        unknown = sorted(set(names) - {"mask", *SENTENCES})
        if unknown:
            raise ZoftError(f"config key 'template': unknown placeholder {{{unknown[0]}}} in '{self.text}'; "
                            "use {s1}, {s2} (pair tasks; with l, u or - after the name: {s1-}, {s2l}) and {mask}")
        wanted = {"mask": 1, "s1": 1, "s2": 1 if task.is_pair else 0}
        for name, count in wanted.items():
            if names.count(name) != count:
                kind = "a pair task" if task.is_pair else "a single-sentence task"
                raise ZoftError(f"config key 'template': '{self.text}' has {{{name}}} {names.count(name)} times; "
                                f"task {task.name} ({kind}) needs it {count} times")
        if self.causal and self.parts()[-1].kind != "mask":
            raise ZoftError(f"config key 'template': '{self.text}' goes on after {{mask}}; a decoder-only model reads "
                            "the label word as the next token, so its template ends with {mask}")
        labels = task.label_names or ()
        if len(self.label_words) != len(labels):
            raise ZoftError(f"config key 'label_words': task {task.name} has {len(labels)} labels "
                            f"({', '.join(labels)}), got {len(self.label_words)} words ({', '.join(self.label_words)})")

    def label_token_ids(self, tokenizer: Any) -> list[int]:
        """The one token of each label word, with the leading space of a word inside a sentence."""
        space = not (self.causal and self._newline_before_mask())
        ids = [_single_token(word, tokenizer, space) for word in self.label_words]
        if len(set(ids)) < len(ids):
            raise ZoftError(f"config key 'label_words': {', '.join(self.label_words)} are not distinct tokens of "
                            f"the tokenizer (uncased models lower-case them)")
        return ids

    def _newline_before_mask(self) -> bool:
        return "\n" in next(part.text for part in self.parts() if part.kind == "mask")

    def encode(self, examples: Examples, tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
        """Each example rendered around exactly one mask (a causal template: up to where the label word goes),
        its sentences truncated (longest first) to fit `max_length`; the features data.batches.collate pads."""
        self.label_token_ids(tokenizer)  # fail on unusable label words before any training starts
        if self.causal:
            return self._encode_causal(examples, tokenizer, max_length)
        mask_id = mask_token_id(tokenizer)
        prefix, suffix, token_types = _special_tokens(tokenizer)
        tokenised = self._tokenised_parts(examples, tokenizer, mask_id)
        budget = max_length - len(prefix) - len(suffix) - sum(
            len(ids) for kind, ids in tokenised if kind not in SENTENCES)
        if budget < 0:
            raise ZoftError(f"config key 'max_length': {max_length} tokens cannot hold the template '{self.text}' "
                            f"and the special tokens; raise max_length")
        features = []
        for i, label in enumerate(examples.labels):
            input_ids = prefix + _render(tokenised, i, budget) + suffix
            if input_ids.count(mask_id) != 1:
                raise ZoftError(f"example {i}: its text contains the mask token {tokenizer.mask_token}; "
                                "a prompt needs exactly one")
            feature = {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": label}
            if token_types:
                feature["token_type_ids"] = [0] * len(input_ids)
            features.append(feature)
        return features

    def _encode_causal(self, examples: Examples, tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
        prefix = _special_tokens(tokenizer)[0]
        tokenised = self._tokenised_parts(examples, tokenizer, None)
        budget = max_length - len(prefix) - sum(len(ids) for kind, ids in tokenised if kind not in SENTENCES)
        if budget < 0:
            raise ZoftError(f"config key 'max_length': {max_length} tokens cannot hold the template '{self.text}'; "
                            "raise max_length")
        features = []
        for i, label in enumerate(examples.labels):
            input_ids = prefix + _render(tokenised, i, budget)
            features.append({"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": label})
        return features

    def _tokenised_parts(self, examples: Examples, tokenizer: Any, mask_id: int | None) -> list[tuple[str, Any]]:
        """Each part's token ids: one list for the template's own text and the mask, a list per example
        for a sentence (every column tokenised in one call, which is what makes tokenisers fast)."""
        tokenised: list[tuple[str, Any]] = []
        for part in self.parts():
            if part.kind == "mask" and mask_id is None:  # causal: the prompt ends here, with its newline if any
                if self._newline_before_mask():
                    tokenised.append(("literal", tokenizer(part.text, add_special_tokens=False)["input_ids"]))
            elif part.kind == "mask":
                tokenised.append((part.kind, [mask_id]))
            elif part.kind == "literal":
                tokenised.append((part.kind, tokenizer(part.text, add_special_tokens=False)["input_ids"]))
            else:
                column = [part.render(self._sentence(example[SENTENCES.index(part.kind)]))
                          for example in examples.texts]
                tokenised.append((part.kind, tokenizer(column, add_special_tokens=False)["input_ids"]))
        return tokenised

    def _sentence(self, text: str) -> str:
        return text.strip() if self.causal else text


# The tasks' own prompts (zoft.data.tasks), as Templates.
DEFAULT_TEMPLATES: dict[str, Template] = {
    name: Template(task.template, task.label_words) for name, task in TASKS.items()
    if task.template is not None and task.label_words is not None
}


def task_template(task: TaskSpec, text: str | None = None, words: list[str] | tuple[str, ...] | None = None,
                  causal: bool = False) -> Template:
    """The task's template and label words, or the user's `text` / `words` in their place, checked; `causal`:
    the template for a decoder-only model (its label word read as the next token)."""
    require_classification(task, PROMPT_HEAD)
    default = DEFAULT_TEMPLATES.get(task.name)
    text = text or ((task.causal_template if causal else default.text) if default else None)
    words = words or (default.label_words if default else None)
    if text is None or words is None:
        raise ZoftError(f"task {task.name} has no default prompt: set template (with {{s1}}, {{mask}}) and "
                        f"label_words (one per label: {', '.join(task.label_names or ())})")
    template = Template(text, tuple(words), causal)
    template.check(task)
    return template


def mask_token_id(tokenizer: Any) -> int:
    if tokenizer.mask_token_id is None:
        raise ZoftError(f"the tokenizer {type(tokenizer).__name__} has no mask token; head=prompt needs a model "
                        f"with a masked-LM head ({MLM_EXAMPLES})")
    return tokenizer.mask_token_id


def _single_token(word: str, tokenizer: Any, space: bool = True) -> int:
    # A leading space: in a sentence the word follows a space, and BPE vocabularies hold " great" ('Ġgreat')
    # apart from "great"; WordPiece and SentencePiece treat the space as a word boundary.
    ids = tokenizer((" " if space else "") + word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
        tokens = tokenizer.convert_ids_to_tokens(ids)
        raise ZoftError(f"config key 'label_words': '{word}' is not a single token of the tokenizer (it becomes "
                        f"{tokens}); choose a word that is")
    return ids[0]


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int], bool]:
    """(tokens before, tokens after, whether the tokenizer makes token_type_ids) of a single sequence.

    Found by encoding a probe with and without special tokens: transformers 5 tokenizers no longer
    expose a way to add them around ids tokenised beforehand.
    """
    probe = "a"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    encoded = tokenizer(probe)
    full = encoded["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare):], "token_type_ids" in encoded
    raise ZoftError(f"cannot tell where the tokenizer {type(tokenizer).__name__} puts its special tokens")


def _render(tokenised: list[tuple[str, Any]], index: int, budget: int) -> list[int]:
    """Example `index` as tokens: the template's own as they are, its sentences truncated to `budget` together."""
    sentences = iter(_truncate_longest_first([ids[index] for kind, ids in tokenised if kind in SENTENCES], budget))
    return [token for kind, ids in tokenised for token in (next(sentences) if kind in SENTENCES else ids)]


def _truncate_longest_first(sentences: list[list[int]], budget: int) -> list[list[int]]:
    """Cut tokens off the end of the longest sentence until all fit in `budget` tokens together."""
    sentences = [list(ids) for ids in sentences]
    while sum(map(len, sentences)) > budget:
        longest = max(sentences, key=len)
        del longest[-1]
    return sentences

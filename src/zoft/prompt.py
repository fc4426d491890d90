"""Prompt-based fine-tuning (LM-BFF, Gao et al. 2021): the setting of all of MeZO's RoBERTa results.

An example is rendered into a template around the tokenizer's mask token, e.g. SST-2 ``{s1} It was {mask}.``,
and the score of each class is the masked-LM logit of its label word (``terrible`` / ``great``) at the mask.
The pretrained MLM head does the classifying, so a model starts from a sensible zero-shot guess instead of
a random head; without it MeZO stays at chance (SST-2 51.9 instead of 89.6 in the MeZO paper).

How a template becomes tokens (the rules reproduce the token sequences of LM-BFF's and MeZO's templates):

- The placeholders ``{s1}``, ``{s2}`` and ``{mask}`` and the literal text between them are tokenised
  separately, so that truncation can shorten the sentences alone and never cut the template or the mask.
- Literal text is tokenised as written, with its leading space (`` It was`` → ``ĠIt``, ``Ġwas`` in BPE).
- A space before ``{s1}`` / ``{s2}`` is kept in front of the sentence (BPE marks word starts with it).
- A space before ``{mask}`` is dropped: the mask stands for the label word together with its leading
  space, as the label words are scored as `` great`` (BPE ``Ġgreat``; WordPiece ignores the space).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from zoft.config import PROMPT_HEAD, ModelConfig
from zoft.data.sources import Examples
from zoft.data.tasks import TaskSpec, require_classification
from zoft.errors import ZoftError

PROMPT_FILE = "zoft_prompt.json"
PLACEHOLDER = re.compile(r"(\s*)\{([^{}]*)\}")
SENTENCES = ("s1", "s2")
MLM_EXAMPLES = "e.g. --model roberta-large or --model bert-base-uncased"


@dataclass(frozen=True)
class Template:
    """A prompt: the text with placeholders {s1}, {s2} (pair tasks) and {mask}, and one label word per
    class in the task's label order."""

    text: str
    label_words: tuple[str, ...]

    def parts(self) -> list[tuple[str, str]]:
        """(kind, text) in order: kind is "literal", "s1", "s2" or "mask"; for a sentence, text is what goes
        before it (a space or nothing)."""
        parts: list[tuple[str, str]] = []
        position = 0
        for match in PLACEHOLDER.finditer(self.text):
            if match.start() > position:
                parts.append(("literal", self.text[position : match.start()]))
            space, name = match.groups()
            parts.append((name, " " if space and name in SENTENCES else ""))
            position = match.end()
        if position < len(self.text):
            parts.append(("literal", self.text[position:]))
        return parts

    def check(self, task: TaskSpec) -> None:
        """Raise a ZoftError naming the config key when the template or the label words do not fit `task`."""
        names = [name for name, _ in self.parts() if name != "literal"]
        unknown = sorted(set(names) - {"mask", *SENTENCES})
        if unknown:
            raise ZoftError(f"config key 'template': unknown placeholder {{{unknown[0]}}} in '{self.text}'; "
                            "use {s1}, {s2} (pair tasks) and {mask}")
        wanted = {"mask": 1, "s1": 1, "s2": 1 if task.is_pair else 0}
        for name, count in wanted.items():
            if names.count(name) != count:
                kind = "a pair task" if task.is_pair else "a single-sentence task"
                raise ZoftError(f"config key 'template': '{self.text}' has {{{name}}} {names.count(name)} times; "
                                f"task {task.name} ({kind}) needs it {count} times")
        labels = task.label_names or ()
        if len(self.label_words) != len(labels):
            raise ZoftError(f"config key 'label_words': task {task.name} has {len(labels)} labels "
                            f"({', '.join(labels)}), got {len(self.label_words)} words ({', '.join(self.label_words)})")

    def label_token_ids(self, tokenizer: Any) -> list[int]:
        """The one token of each label word, with the leading space of a word inside a sentence."""
        ids = [_single_token(word, tokenizer) for word in self.label_words]
        if len(set(ids)) < len(ids):
            raise ZoftError(f"config key 'label_words': {', '.join(self.label_words)} are not distinct tokens of "
                            f"the tokenizer (uncased models lower-case them)")
        return ids

    def encode(self, examples: Examples, tokenizer: Any, max_length: int) -> list[dict[str, Any]]:
        """Each example rendered around exactly one mask, its sentences truncated (longest first) to fit
        `max_length`; the features data.batches.collate pads."""
        self.label_token_ids(tokenizer)  # fail on unusable label words before any training starts
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

    def _tokenised_parts(self, examples: Examples, tokenizer: Any, mask_id: int) -> list[tuple[str, Any]]:
        """Each part's token ids: one list for the template's own text and the mask, a list per example
        for a sentence (every column tokenised in one call, which is what makes tokenisers fast)."""
        tokenised: list[tuple[str, Any]] = []
        for kind, text in self.parts():
            if kind == "mask":
                tokenised.append((kind, [mask_id]))
            elif kind == "literal":
                tokenised.append((kind, tokenizer(text, add_special_tokens=False)["input_ids"]))
            else:
                column = [text + example[SENTENCES.index(kind)].strip() for example in examples.texts]
                tokenised.append((kind, tokenizer(column, add_special_tokens=False)["input_ids"]))
        return tokenised


# Gao et al. 2021 (LM-BFF), Table 1, as MeZO runs them (medium_models/run_fewshot.sh): the mask follows the
# previous word without a space of its own and is followed directly by punctuation. LM-BFF also drops the
# final punctuation of s1 before "?" and lower-cases the first letter of s2; zoft keeps the sentences as they are.
DEFAULT_TEMPLATES: dict[str, Template] = {
    "sst2": Template("{s1} It was {mask}.", ("terrible", "great")),
    "cola": Template("{s1} This is {mask}.", ("incorrect", "correct")),
    "mrpc": Template("{s1} {mask}, {s2}", ("No", "Yes")),
    "qqp": Template("{s1} {mask}, {s2}", ("No", "Yes")),
    "rte": Template("{s1}? {mask}, {s2}", ("Yes", "No")),  # entailment, not_entailment
    "qnli": Template("{s1}? {mask}, {s2}", ("Yes", "No")),  # entailment, not_entailment
    "wnli": Template("{s1}? {mask}, {s2}", ("No", "Yes")),  # 0 = not entailment, 1 = entailment
    "mnli": Template("{s1}? {mask}, {s2}", ("No", "Yes", "Maybe")),  # contradiction, entailment, neutral
}


def task_template(cfg: ModelConfig, task: TaskSpec) -> Template:
    """The task's default template and label words, or the user's `template` / `label_words`, checked."""
    require_classification(task, PROMPT_HEAD)
    default = DEFAULT_TEMPLATES.get(task.name)
    text = cfg.template or (default.text if default else None)
    words = cfg.label_words or (default.label_words if default else None)
    if text is None or words is None:
        raise ZoftError(f"task {task.name} has no default prompt: set template (with {{s1}}, {{mask}}) and "
                        f"label_words (one per label: {', '.join(task.label_names or ())})")
    template = Template(text, tuple(words))
    template.check(task)
    return template


def mask_token_id(tokenizer: Any) -> int:
    if tokenizer.mask_token_id is None:
        raise ZoftError(f"the tokenizer {type(tokenizer).__name__} has no mask token; head=prompt needs a model "
                        f"with a masked-LM head ({MLM_EXAMPLES})")
    return tokenizer.mask_token_id


def _single_token(word: str, tokenizer: Any) -> int:
    # A leading space: in a sentence the word follows a space, and BPE vocabularies hold " great" ('Ġgreat')
    # apart from "great"; WordPiece and SentencePiece treat the space as a word boundary.
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
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


class PromptClassifier(nn.Module):
    """A masked-LM model (attribute `backbone`, where LoRA goes) whose class logits are the MLM logits of
    the label words at the mask.

    Only the mask position goes through the LM head: the encoder runs on the whole input, its hidden state
    at the mask is gathered, and the head (one module in BERT, RoBERTa, ALBERT, DeBERTa, MPNet ...) maps
    that one vector to the vocabulary. The full forward would compute batch × length × vocabulary logits
    (1.6 GB for RoBERTa-large at batch 64, length 128) to read two of them. Models whose head is spread
    over several modules (DistilBERT, ELECTRA) take the full forward.
    """

    def __init__(self, backbone: nn.Module, template: Template, label_token_ids: list[int], mask_token_id: int):
        super().__init__()
        self.backbone = backbone
        self.template = template
        self.mask_token_id = mask_token_id
        self.register_buffer("label_token_ids", torch.tensor(label_token_ids), persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **ignored: Any) -> SequenceClassifierOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        logits = self.mask_vocabulary_logits(inputs)[:, self.label_token_ids]
        loss = None if labels is None else nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def mask_vocabulary_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The MLM logits over the whole vocabulary at each input's mask: batch × vocabulary."""
        rows = torch.arange(len(inputs["input_ids"]), device=inputs["input_ids"].device)
        positions = self.mask_positions(inputs["input_ids"])
        masked_lm = self.masked_lm()
        head = lm_head(masked_lm)
        if head is None:
            return masked_lm(**inputs).logits[rows, positions]
        hidden = masked_lm.base_model(**inputs).last_hidden_state
        return head(hidden[rows, positions])

    def mask_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_mask = input_ids == self.mask_token_id
        if not bool((is_mask.sum(-1) == 1).all()):
            raise ZoftError("every input of a prompt model needs exactly one mask token")
        return is_mask.int().argmax(-1)

    def masked_lm(self) -> nn.Module:
        """The transformers MLM model, taken out of its PEFT wrapper when LoRA is on (PEFT puts the adapters
        into the model's own modules, so calling those directly runs the adapters too)."""
        from peft import PeftModel

        return self.backbone.get_base_model() if isinstance(self.backbone, PeftModel) else self.backbone

    def save_pretrained(self, folder: str | Path) -> None:
        """The backbone as its own save_pretrained writes it (a PEFT adapter or the full MLM model), and the
        prompt in zoft_prompt.json."""
        folder = Path(folder)
        self.backbone.save_pretrained(folder)
        description = {"template": self.template.text, "label_words": list(self.template.label_words),
                       "label_token_ids": self.label_token_ids.tolist(), "mask_token_id": self.mask_token_id}
        (folder / PROMPT_FILE).write_text(json.dumps(description, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | Path, base_model: str | Path | None = None) -> PromptClassifier:
        """Reload a saved prompt model; `base_model` is the MLM model a saved LoRA adapter was trained on
        (default: the one the adapter names)."""
        from peft import PeftModel
        from transformers import AutoModelForMaskedLM

        folder = Path(folder)
        if not (folder / PROMPT_FILE).is_file():
            raise ZoftError(f"{folder} holds no prompt model ({PROMPT_FILE} is missing)")
        description = json.loads((folder / PROMPT_FILE).read_text())
        if (folder / "adapter_config.json").is_file():
            base = base_model or json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
            backbone = PeftModel.from_pretrained(AutoModelForMaskedLM.from_pretrained(base), folder)
        else:
            backbone = AutoModelForMaskedLM.from_pretrained(folder)
        template = Template(description["template"], tuple(description["label_words"]))
        return cls(backbone, template, description["label_token_ids"], description["mask_token_id"])


def lm_head(masked_lm: nn.Module) -> nn.Module | None:
    """The MLM head when it is the one module beside the encoder (it then maps hidden states to logits
    token by token), else None."""
    others = [module for module in masked_lm.children() if module is not masked_lm.base_model]
    return others[0] if len(others) == 1 else None


@dataclass
class _MaskedLMWithTrainedHead:
    """AutoModelForMaskedLM, refusing a checkpoint without masked-LM head weights: transformers would
    initialise the head at random and only warn, and label-word scores of a random head mean nothing."""

    name: str  # the model as the user named it, for the error

    def from_pretrained(self, path: str, **kwargs: Any) -> nn.Module:
        from transformers import AutoModelForMaskedLM

        model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True, **kwargs)
        untrained = [key for key in info["missing_keys"] if not key.startswith(model.base_model_prefix + ".")]
        if untrained:
            raise ZoftError(f"head=prompt needs a model with a masked-LM head; '{self.name}' has none (its "
                            f"checkpoint lacks {', '.join(sorted(untrained)[:2])}, ...): {MLM_EXAMPLES}")
        return model


def load_prompt_model(cfg: ModelConfig, task: TaskSpec) -> tuple[PromptClassifier, Any]:
    """The masked-LM model named by `cfg` wrapped as a PromptClassifier for `task`, and its tokenizer."""
    from zoft.models import load_pretrained

    template = task_template(cfg, task)
    masked_lm, tokenizer = load_pretrained(_MaskedLMWithTrainedHead(cfg.model), cfg)
    model = PromptClassifier(masked_lm, template, template.label_token_ids(tokenizer), mask_token_id(tokenizer))
    return model, tokenizer

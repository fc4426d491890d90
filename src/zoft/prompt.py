"""Prompt-based fine-tuning (LM-BFF, Gao et al. 2021): the setting of all of MeZO's RoBERTa results.

An example is rendered into a template around the tokenizer's mask token (zoft.data.templates), e.g. SST-2
``{s1} It was {mask}.``, and the score of each class is the masked-LM logit of its label word
(``terrible`` / ``great``) at the mask. The pretrained MLM head does the classifying, so a model starts
from a sensible zero-shot guess instead of a random head; without it MeZO stays at chance (SST-2 51.9
instead of 89.6 in the MeZO paper, Table 5).

A decoder-only model (OPT, Llama, Qwen2, SmolLM2: CausalPromptClassifier) reads the prompt as the MeZO paper's
large-model code does with train_as_classification: the template ends where the label word goes, and the score
of each class is the next-token logit of its label word at the prompt's last token.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
from transformers.modeling_outputs import SequenceClassifierOutput

from zoft.config import ModelConfig
from zoft.data.tasks import TaskSpec
from zoft.data.templates import MLM_EXAMPLES, Template, mask_token_id, task_template
from zoft.errors import ZoftError
from zoft.pretrained import is_causal_lm, load_pretrained

PROMPT_FILE = "zoft_prompt.json"
LM_HEAD_FILE = "lm_head.safetensors"  # the masked-LM head's trained tensors beside a LoRA adapter (train_lm_head)


class PromptClassifier(nn.Module):
    """A masked-LM model (attribute `backbone`, where LoRA goes) whose class logits are the MLM logits of
    the label words at the mask.

    Only the mask position goes through the LM head, and only the label words' rows of its vocabulary
    projection: the encoder runs on the whole input, its hidden state at the mask is gathered, the head's
    transform maps that one vector, and the decoder's label-word rows score it. The full forward would
    compute batch × length × vocabulary logits (1.6 GB for RoBERTa-large at batch 64, length 128) to read
    two of them; even at the mask alone the vocabulary projection is a quarter of a BERT-tiny forward.
    A head spread over several modules (DistilBERT, ELECTRA) takes the full forward, and a head whose
    decoder is not its last step takes the whole head (checked once, on the weights as loaded).
    """

    def __init__(self, backbone: nn.Module, template: Template, label_token_ids: list[int], mask_token_id: int):
        super().__init__()
        self.backbone = backbone
        self.template = template
        self.mask_token_id = mask_token_id
        self.register_buffer("label_token_ids", torch.tensor(label_token_ids), persistent=False)
        self.label_rows_only = self._label_rows_match_the_head()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **ignored: Any) -> SequenceClassifierOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        logits = self.label_logits(inputs)
        loss = None if labels is None else nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def label_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The MLM logits of the label words at each input's mask: batch × labels."""
        rows = torch.arange(len(inputs["input_ids"]), device=inputs["input_ids"].device)
        positions = self.mask_positions(inputs["input_ids"])
        masked_lm = self.masked_lm()
        head = lm_head(masked_lm)
        if head is None:
            return masked_lm(**inputs).logits[rows, positions][:, self.label_token_ids]
        hidden = masked_lm.base_model(**inputs).last_hidden_state[rows, positions]
        # The decoder must still be the plain linear layer checked at construction: LoRA on it replaces it.
        if self.label_rows_only and isinstance(masked_lm.get_output_embeddings(), nn.Linear):
            return self._label_rows(head, hidden)
        return head(hidden)[:, self.label_token_ids]

    def _label_rows(self, head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The head with its decoder limited to the label words' rows (the decoder's weight is usually the
        input embedding matrix: indexing it keeps the tie, and MeZO's perturbations of it)."""
        decoder = self.masked_lm().get_output_embeddings()
        with _bypassed(head, decoder):
            features = head(hidden)
        bias = None if decoder.bias is None else decoder.bias[self.label_token_ids]
        return nn.functional.linear(features, decoder.weight[self.label_token_ids], bias)

    def _label_rows_match_the_head(self) -> bool:
        masked_lm = self.masked_lm()
        head, decoder = lm_head(masked_lm), masked_lm.get_output_embeddings()
        if head is None or not isinstance(decoder, nn.Linear) or not any(m is decoder for m in head.modules()):
            return False
        parameter = next(head.parameters())
        probe = torch.randn(2, decoder.in_features, generator=torch.Generator().manual_seed(0)).to(parameter)
        with torch.no_grad():
            return torch.allclose(self._label_rows(head, probe), head(probe)[:, self.label_token_ids],
                                  rtol=1e-3, atol=1e-3)

    def mask_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_mask = input_ids == self.mask_token_id
        if not bool((is_mask.sum(-1) == 1).all()):
            raise ZoftError("every input of a prompt model needs exactly one mask token")
        return is_mask.int().argmax(-1)

    def masked_lm(self) -> nn.Module:
        """The transformers MLM model, taken out of its PEFT wrapper when LoRA is on (PEFT puts the adapters
        into the model's own modules, so calling those directly runs the adapters too)."""
        return self.backbone.get_base_model() if isinstance(self.backbone, PeftModel) else self.backbone

    def lm_head_parameters(self) -> dict[str, nn.Parameter]:
        """The masked-LM head's own parameters, by name inside the head: its transform (dense, layer norm)
        and output bias, not the decoder weight that is the input embedding matrix (tied)."""
        masked_lm = self.masked_lm()
        head = lm_head(masked_lm)
        if head is None:
            raise ZoftError(f"config key 'train_lm_head': the masked-LM head of {type(masked_lm).__name__} is "
                            "not one module beside the encoder; train it with params (a regex) instead")
        embeddings = masked_lm.get_input_embeddings().weight
        return {name: p for name, p in head.named_parameters() if p is not embeddings}

    def train_lm_head(self) -> None:
        """Make the head's own parameters trainable (PEFT froze everything but the adapters)."""
        for parameter in self.lm_head_parameters().values():
            parameter.requires_grad_(True)

    def save_pretrained(self, folder: str | Path) -> None:
        """The backbone as its own save_pretrained writes it (a PEFT adapter or the full MLM model), the
        prompt in zoft_prompt.json, and beside an adapter the masked-LM head when it was trained."""
        folder = Path(folder)
        self.backbone.save_pretrained(folder)
        description = {"template": self.template.text, "label_words": list(self.template.label_words),
                       "label_token_ids": self.label_token_ids.tolist(), "mask_token_id": self.mask_token_id,
                       "causal": self.template.causal}
        (folder / PROMPT_FILE).write_text(json.dumps(description, indent=2) + "\n")
        if isinstance(self.backbone, PeftModel):
            head = self.lm_head_parameters()
            trained = {name: p.detach().contiguous() for name, p in head.items() if p.requires_grad}
            if trained:
                save_file(trained, folder / LM_HEAD_FILE)

    @classmethod
    def from_pretrained(cls, folder: str | Path, base_model: str | Path | None = None) -> PromptClassifier:
        """Reload a saved prompt model; `base_model` is the MLM model a saved LoRA adapter was trained on
        (default: the one the adapter names)."""
        folder = Path(folder)
        if not (folder / PROMPT_FILE).is_file():
            raise ZoftError(f"{folder} holds no prompt model ({PROMPT_FILE} is missing)")
        description = json.loads((folder / PROMPT_FILE).read_text())
        causal = description.get("causal", False)
        model_class, auto_class = ((CausalPromptClassifier, AutoModelForCausalLM) if causal
                                   else (PromptClassifier, AutoModelForMaskedLM))
        if (folder / "adapter_config.json").is_file():
            base = base_model or json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
            backbone = PeftModel.from_pretrained(auto_class.from_pretrained(base), folder)
        else:
            backbone = auto_class.from_pretrained(folder)
        template = Template(description["template"], tuple(description["label_words"]), causal)
        model = model_class(backbone, template, description["label_token_ids"], description["mask_token_id"])
        if (folder / LM_HEAD_FILE).is_file():
            head = model.lm_head_parameters()
            with torch.no_grad():
                for name, tensor in load_file(folder / LM_HEAD_FILE).items():
                    head[name].copy_(tensor)
        return model


class CausalPromptClassifier(PromptClassifier):
    """A decoder-only language model whose class logits are the next-token logits of the label words after the
    prompt (the template ends where the label word goes, zoft.data.templates).

    The scored position is each row's last attended token, found from the attention mask, and the positions
    count attended tokens only, so a row scores the same under left padding as under right padding. Only that
    position goes through the output projection, and only the label words' rows of it: the full forward would
    compute batch x length x vocabulary logits (49k words for SmolLM2, 152k for Qwen2) to read two of them.
    """

    def __init__(self, backbone: nn.Module, template: Template, label_token_ids: list[int],
                 mask_token_id: int | None = None):
        super().__init__(backbone, template, label_token_ids, mask_token_id=None)  # no mask: the prompt ends there

    def _label_rows_match_the_head(self) -> bool:
        return False  # the output projection is the head: label_logits reads its rows directly

    def label_logits(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The next-token logits of the label words after each row's prompt: batch x labels."""
        attention_mask = inputs["attention_mask"]
        attended = attention_mask.long().cumsum(-1)
        last = attended.argmax(-1)  # the first position holding the row's count of tokens: its last token
        rows = torch.arange(len(last), device=last.device)
        position_ids = (attended - 1).clamp(min=0)
        decoder = self.masked_lm()
        projection = decoder.get_output_embeddings()
        if not isinstance(projection, nn.Linear):  # LoRA on the output projection: take the whole forward
            logits = decoder(input_ids=inputs["input_ids"], attention_mask=attention_mask,
                             position_ids=position_ids).logits
            return logits[rows, last][:, self.label_token_ids]
        hidden = decoder.base_model(input_ids=inputs["input_ids"], attention_mask=attention_mask,
                                    position_ids=position_ids).last_hidden_state[rows, last]
        bias = None if projection.bias is None else projection.bias[self.label_token_ids]
        return nn.functional.linear(hidden, projection.weight[self.label_token_ids], bias)

    def lm_head_parameters(self) -> dict[str, nn.Parameter]:
        return {}  # no head beside the decoder: its output projection is the embedding matrix or vocabulary-sized

    def train_lm_head(self) -> None:
        raise ZoftError("config key 'train_lm_head': a decoder-only model has no head beside its output projection "
                        "(the embedding matrix, or a vocabulary-sized layer); train that with params (a regex)")


@contextmanager
def _bypassed(head: nn.Module, module: nn.Module) -> Iterator[None]:
    """`module`, a submodule of `head`, replaced by the identity for the duration."""
    name = next(name for name, child in head.named_modules() if child is module)
    parent_name, _, attribute = name.rpartition(".")
    parent = head.get_submodule(parent_name) if parent_name else head
    setattr(parent, attribute, nn.Identity())
    try:
        yield
    finally:
        setattr(parent, attribute, module)


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
        model, info = AutoModelForMaskedLM.from_pretrained(path, output_loading_info=True, **kwargs)
        untrained = [key for key in info["missing_keys"] if not key.startswith(model.base_model_prefix + ".")]
        if untrained:
            raise ZoftError(f"head=prompt needs a model with a masked-LM head or a decoder-only LM; '{self.name}' "
                            f"has neither (its checkpoint lacks {', '.join(sorted(untrained)[:2])}, ...): "
                            f"{MLM_EXAMPLES}")
        return model


def load_prompt_model(cfg: ModelConfig, task: TaskSpec) -> tuple[PromptClassifier, Any]:
    """The masked-LM model named by `cfg` wrapped as a PromptClassifier for `task`, or the decoder-only one as a
    CausalPromptClassifier, and its tokenizer."""
    if is_causal_lm(cfg.model):
        template = task_template(task, cfg.template, cfg.label_words, causal=True)
        decoder, tokenizer = load_pretrained(AutoModelForCausalLM, cfg.model, cfg.dtype)
        return CausalPromptClassifier(decoder, template, template.label_token_ids(tokenizer)), tokenizer
    template = task_template(task, cfg.template, cfg.label_words)
    masked_lm, tokenizer = load_pretrained(_MaskedLMWithTrainedHead(cfg.model), cfg.model, cfg.dtype)
    model = PromptClassifier(masked_lm, template, template.label_token_ids(tokenizer), mask_token_id(tokenizer))
    return model, tokenizer

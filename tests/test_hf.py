"""zoft.hf.ZerothOrderTrainer: a transformers Trainer whose steps are MeZO's, against zoft's own loop, resumed,
on a PEFT model, and learning on the packaged masked LM."""

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from zoft.cli import main
from zoft.config import DataConfig, ModelConfig
from zoft.console import Console
from zoft.data.batches import encode
from zoft.data.splits import load_task_data
from zoft.hf import ZerothOrderTrainer
from zoft.models import input_format, load_task_model, prepare_trainable
from zoft.optim import ZerothOrderSGD
from zoft.runs import RunFolder
from zoft.train import Trainer as ZoftTrainer

TEXTS = ["a gripping, funny film", "dull", "the plot is thin and the acting is worse", "a joy", "tedious and long",
         "warm and clever", "a mess", "one of the year's best"]


def arguments(folder: Path, **overrides) -> TrainingArguments:
    """A short CPU run: no evaluation, no checkpoint, no reporting unless asked."""
    settings = {"learning_rate": 1e-2, "max_steps": 2, "per_device_train_batch_size": 4, "logging_steps": 1,
                "save_strategy": "no", "report_to": "none", "use_cpu": True, "seed": 3, **overrides}
    return TrainingArguments(str(folder), **settings)


def lora_classifier(folder: Path, seed: int = 0, **config):
    """The tiny BERT with a classification head and LoRA through PEFT, the same for the same seed."""
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, **config)
    return get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))


def tokenised(folder: Path, copies: int = 2) -> tuple[list[dict], DataCollatorWithPadding]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = [{**tokenizer(text), "labels": index % 2} for index, text in enumerate(TEXTS * copies)]
    return rows, DataCollatorWithPadding(tokenizer)


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


class Logs(TrainerCallback):
    """What the Trainer hands its callbacks (and so the report_to integrations) at each log."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def test_a_step_is_two_forwards_per_perturbation_and_micro_batch_with_no_backward(tiny_bert, tmp_path, monkeypatch):
    backwards = []
    original_backward = torch.autograd.backward
    monkeypatch.setattr(torch.autograd, "backward", lambda *a, **k: backwards.append(1) or original_backward(*a, **k))
    model = lora_classifier(tiny_bert)
    rows, collator = tokenised(tiny_bert)
    forwards = []
    model.register_forward_pre_hook(lambda module, args: forwards.append(module.training))
    logs = Logs()
    trainer = ZerothOrderTrainer(model=model, args=arguments(tmp_path, gradient_accumulation_steps=2, max_steps=3),
                                 train_dataset=rows, data_collator=collator, callbacks=[logs], eps=1e-3,
                                 n_perturbations=2)
    before = trainable(model)
    model.train()  # from_pretrained gives a model in eval mode: the trainer must set it for its forwards
    trainer.train()

    assert len(forwards) == 3 * 2 * 2 * 2  # steps x micro-batches x perturbations x (+eps, -eps)
    assert not any(forwards)  # every one in eval mode: dropout off
    assert backwards == []
    assert all(p.grad is None for p in model.parameters())
    assert any(not torch.equal(before[name], p) for name, p in trainable(model).items())
    assert isinstance(trainer.optimizer.optimizer, ZerothOrderSGD)
    assert trainer.zo_optimizer.steps_taken == 3
    steps = [log for log in logs.logs if "loss" in log]
    assert len(steps) == 3
    for log in steps:
        assert {"loss_plus", "loss_minus", "projected_grad", "learning_rate"} <= log.keys()
        assert "grad_norm" not in log
        assert log["loss"] == pytest.approx((log["loss_plus"] + log["loss_minus"]) / 2, rel=1e-6)
        assert log["projected_grad"] != 0
    assert [log["learning_rate"] for log in steps] == pytest.approx([1e-2, 1e-2 * 2 / 3, 1e-2 / 3])  # linear decay
    assert trainer.state.log_history[0]["loss_plus"] == steps[0]["loss_plus"]


@pytest.mark.parametrize("scaled", [None, False], ids=["trainer-default", "loss_is_scaled_for_ga-false"])
def test_accumulated_micro_batches_make_the_loss_the_trainers_backprop_would_take(tiny_bert, tmp_path, scaled):
    """The closure over a step's micro-batches is the loss the Trainer's own training_step backpropagates, with
    its scaling for accumulation either way (by default it sums BERT's per-micro-batch means): a step's logged
    loss, the mean of loss+ and loss-, is a plain Trainer's at the same parameters up to O(eps^2)."""
    rows, collator = tokenised(tiny_bert)
    logged = {}
    for kind in (Trainer, ZerothOrderTrainer):
        # No dropout: the plain Trainer trains in train mode, MeZO in eval mode.
        model = lora_classifier(tiny_bert, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        args = arguments(tmp_path / kind.__name__, max_steps=1, gradient_accumulation_steps=2,
                         train_sampling_strategy="sequential")
        trainer = kind(model=model, args=args, train_dataset=rows, data_collator=collator)
        trainer.loss_is_scaled_for_ga = scaled
        trainer.train()
        logged[kind] = trainer.state.log_history[0]["loss"]
    assert logged[ZerothOrderTrainer] == pytest.approx(logged[Trainer], rel=1e-5)
    mean = 0.69  # about ln 2, a random head's loss on two classes
    assert logged[Trainer] == pytest.approx(mean if scaled is False else 2 * mean, rel=0.05)


def test_the_trainer_takes_the_steps_zoft_train_takes(tiny_bert, real_glue, tmp_path):
    """Same model, micro-batches, seeds and settings (LoRA with its head, n-SPSA, momentum, weight decay, a warm-up
    then linear schedule, accumulation over two micro-batches): the same trainable tensors after the run, to the
    bit (one process, the same operations in the same order: the closure sums the micro-batches as zoft's does)."""
    settings = ["--method", "mezo", "--params", "lora", "--lr", "1e-2", "--eps", "1e-3", "--n-perturbations", "2",
                "--momentum", "0.9", "--weight-decay", "0.01", "--schedule", "linear", "--warmup-ratio", "0.25",
                "--grad-accumulation", "2", "--steps", "4", "--batch-size", "4", "--seed", "7"]
    run = tmp_path / "zoft"
    assert main(["train", "--model", str(tiny_bert), "--data-dir", str(real_glue), "--task", "mrpc", "--train-limit",
                 "64", "--validation-fraction", "0.02", "--group-by-length", "false", "--max-length", "64",
                 "--eval-every", "4", "--quiet", *settings, "--out", str(run)]) == 0
    # The run's model and batches, rebuilt by the loop's own set-up: a fresh stream of the run's seed draws them.
    rebuilt = ZoftTrainer(RunFolder(run).read_config(), RunFolder(tmp_path / "rebuilt"), Console(quiet=True))
    rebuilt.setup()
    assert all(torch.equal(rebuilt.model.get_parameter(name), start)
               for name, start in RunFolder(run).load_start().items())
    batches = [next(rebuilt.stream) for _ in range(4 * 2)]
    assert {len(batch["labels"]) for batch in batches} == {4}

    args = arguments(tmp_path / "hf", learning_rate=1e-2, weight_decay=0.01, lr_scheduler_type="linear",
                     warmup_steps=1, max_steps=4, gradient_accumulation_steps=2, per_device_train_batch_size=1,
                     train_sampling_strategy="sequential", seed=7, remove_unused_columns=False)
    trainer = ZerothOrderTrainer(model=rebuilt.model, args=args, train_dataset=batches,
                                 data_collator=lambda features: features[0], eps=1e-3, n_perturbations=2, momentum=0.9)
    # BERT's classifier accepts loss kwargs but returns each micro-batch's mean: the Trainer would take the sum of
    # those as the step's loss (as its backprop does); its documented switch makes it their mean, as zoft's is.
    trainer.loss_is_scaled_for_ga = False
    trainer.train()

    trained, _ = RunFolder(run).load_checkpoint()
    through_trainer = trainable(rebuilt.model)
    assert through_trainer.keys() == trained.keys()
    for name, tensor in trained.items():
        assert torch.equal(through_trainer[name], tensor), name
    assert any(not torch.equal(tensor, RunFolder(run).load_start()[name]) for name, tensor in trained.items())


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tiny_bert, tmp_path):
    """A PEFT model, momentum, accumulation and shuffled data: resumed from its step-2 checkpoint, the run's
    adapter and head are the uninterrupted run's to the bit; the checkpoint holds the seed generator and count."""
    rows, collator = tokenised(tiny_bert)

    def trainer_for(folder: Path) -> ZerothOrderTrainer:
        args = arguments(folder, max_steps=4, gradient_accumulation_steps=2, save_strategy="steps", save_steps=2,
                         lr_scheduler_type="linear")
        return ZerothOrderTrainer(model=lora_classifier(tiny_bert), args=args, train_dataset=rows,
                                  data_collator=collator, eps=1e-3, momentum=0.9)

    uninterrupted = trainer_for(tmp_path / "whole")
    uninterrupted.train()
    checkpoint = tmp_path / "whole" / "checkpoint-2"
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    assert state["zeroth_order_steps_taken"] == 2 and "zeroth_order_seed_generator" in state
    assert (checkpoint / "adapter_model.safetensors").is_file()

    resumed = trainer_for(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.zo_optimizer.steps_taken == 4
    ends = trainable(uninterrupted.model), trainable(resumed.model)
    assert all(torch.equal(ends[0][name], ends[1][name]) for name in ends[0])
    start = trainable(lora_classifier(tiny_bert))
    assert all(not torch.equal(ends[0][name], start[name]) for name in ends[0] if "lora_B" in name)


def test_an_optimizer_of_ones_own_and_a_step_without_a_closure_are_refused(tiny_bert, tmp_path):
    model = lora_classifier(tiny_bert)
    with pytest.raises(ValueError, match="makes its own ZerothOrderSGD"):
        ZerothOrderTrainer(model=model, args=arguments(tmp_path), optimizers=(torch.optim.SGD(model.parameters()),
                                                                              None))
    trainer = ZerothOrderTrainer(model=model, args=arguments(tmp_path))
    with pytest.raises(TypeError, match="needs a closure"):
        trainer.create_optimizer().step()


@pytest.mark.e2e
def test_a_prompt_based_trainer_run_on_the_packaged_masked_lm_learns(bert_tiny_mlm, real_glue, tmp_path):
    """bert-tiny-mlm with LoRA, SST-2's prompt (zoft's PromptClassifier: label words at the mask), a Trainer of
    this class and its evaluate: test accuracy above the zero-shot start (54.2%). Measured with this budget
    (75 steps) on one thread, at the Trainer's seed 3: 57.7% (at 150 steps: 61.1%, and 57.0% / 61.9% at seeds 4 / 5)."""
    task_data = load_task_data(DataConfig(task="sst2", data_dir=str(real_glue), k_shot=64), seed=13)
    config = ModelConfig(model="bert-tiny-mlm", head="prompt")
    model, tokenizer = load_task_model(config, task_data.task)
    model = prepare_trainable(model, config, "mezo", "lora")
    encoded = {name: encode(split, tokenizer, 64, **input_format(config, task_data.task)).features
               for name, split in task_data.splits.items()}
    args = arguments(tmp_path, learning_rate=1e-2, max_steps=75, per_device_train_batch_size=64,
                     per_device_eval_batch_size=128, lr_scheduler_type="constant", logging_steps=50,
                     label_names=["labels"])
    trainer = ZerothOrderTrainer(model=model, args=args, train_dataset=encoded["train"],
                                 eval_dataset=encoded["test"], data_collator=DataCollatorWithPadding(tokenizer),
                                 compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) ==
                                                                                p.label_ids).mean())},
                                 eps=1e-3)
    start = trainer.evaluate()["eval_accuracy"]
    trainer.train()
    end = trainer.evaluate()["eval_accuracy"]
    assert end >= start + 0.02, (start, end)

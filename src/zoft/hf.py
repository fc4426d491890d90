"""MeZO inside a Hugging Face ``transformers.Trainer``: :class:`ZerothOrderTrainer` is the Trainer with its
training step replaced by a :class:`~zoft.optim.ZerothOrderSGD` step, and everything else kept (evaluation,
logging and ``report_to``, checkpoints and ``resume_from_checkpoint``, PEFT models, callbacks).

A script switches by its class name and MeZO's arguments::

    trainer = ZerothOrderTrainer(model=model, args=args, train_dataset=train, eps=1e-3)  # was Trainer(...)

What differs from the Trainer, and why:

- The optimiser is a ZerothOrderSGD made from ``learning_rate``, ``weight_decay`` and ``seed`` of the
  TrainingArguments and the ``eps``, ``n_perturbations`` and ``momentum`` given here; weight decay spares
  biases, norms and 1-D tensors (:func:`~zoft.optim.decay_param_groups`, as zoft's own loop groups them, so
  both draw the same z). ``optim``, the Adam settings and ``max_grad_norm`` have nothing to act on. The lr
  scheduler drives its lr as it would AdamW's.
- A step's micro-batches (``gradient_accumulation_steps``) are folded into one closure: the sum of each
  micro-batch's loss as the Trainer's ``training_step`` scales it before its backward (``compute_loss``,
  divided by the micro-batches of the step unless the Trainer takes it as normalised over the step's items
  already). MeZO evaluates it at +eps z and at -eps z, the model in eval mode (dropout off: both forwards
  must see the same network) and under ``torch.no_grad()``: no backward, no ``.grad`` allocated.
- The logs of training steps add ``loss_plus``, ``loss_minus`` and ``projected_grad`` (means over the steps
  a log covers, as the Trainer's ``loss`` is) and drop ``grad_norm``, which the Trainer would measure as 0 on
  parameters that never get a gradient.
- Checkpoints hold the optimiser's state dict as the Trainer's ``optimizer.pt``: its seed generator, step
  count and momentum buffers, so a resumed run draws the seeds an uninterrupted one draws.

Tested with transformers 5.24 on one device.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import Trainer

from zoft.optim import ZerothOrderSGD, ZOStepStats, decay_param_groups
from zoft.optim.zeroth_order import Closure, PerturbationCount

__all__ = ["ZerothOrderTrainer"]

Inputs = dict[str, Any]


class _SteppedInTrainingStep(ZerothOrderSGD):
    """ZerothOrderSGD stepped the Trainer's way.

    The Trainer's loop takes a step's loss from ``training_step`` and only then calls ``optimizer.step()``,
    without a closure. A MeZO step measures the loss while it steps, so :meth:`ZerothOrderTrainer.training_step`
    takes the step, with its closure, and the loop's closure-less call that follows acknowledges it. A
    closure-less call with no step to acknowledge is refused, as ZerothOrderSGD refuses it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._unacknowledged = False

    def step(  # type: ignore[override]
        self, closure: Closure | None = None, full_closure: Closure | None = None
    ) -> ZOStepStats | None:
        if closure is None and self._unacknowledged:
            self._unacknowledged = False
            return None
        stats = super().step(closure, full_closure)
        self._unacknowledged = True
        return stats


class ZerothOrderTrainer(Trainer):
    """A ``transformers.Trainer`` that trains by MeZO: two forward passes a step, no backward (see the module).

    Takes the Trainer's arguments and, by keyword, ``eps`` (the perturbation size), ``n_perturbations``
    (directions averaged a step, or a function of the steps taken such as
    :class:`~zoft.optim.LinearSchedule`) and ``momentum`` (ZO-SGD-MMT). It makes its own optimiser: one given
    through ``optimizers`` or ``optimizer_cls_and_kwargs`` is refused.
    """

    def __init__(self, *args: Any, eps: float = 1e-3, n_perturbations: PerturbationCount = 1, momentum: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.optimizer is not None or self.optimizer_cls_and_kwargs is not None:
            raise ValueError("ZerothOrderTrainer makes its own ZerothOrderSGD (from eps, n_perturbations, momentum "
                             "and the TrainingArguments' learning_rate, weight_decay and seed): pass no optimizer")
        self.eps, self.n_perturbations, self.momentum = eps, n_perturbations, momentum
        self.zo_optimizer: ZerothOrderSGD | None = None
        self._micro_batches: list[tuple[Inputs, Any]] = []
        self._unlogged: dict[str, list[float]] = {}

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            named = (self.model if model is None else model).named_parameters()
            self.zo_optimizer = _SteppedInTrainingStep(
                decay_param_groups(named, self.args.weight_decay), lr=self.args.learning_rate, eps=self.eps,
                momentum=self.momentum, n_perturbations=self.n_perturbations, seed=self.args.seed,
            )
            self.optimizer = self.zo_optimizer
        return self.optimizer

    def training_step(self, model: nn.Module, inputs: Inputs,
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        """Keep the micro-batch; at the step's last one (the Trainer syncs gradients after it), take the MeZO
        step on them all and return its loss. The earlier ones return 0, so the Trainer's running loss adds
        up to the step's."""
        self._micro_batches.append((self._prepare_inputs(inputs), num_items_in_batch))
        if not self.accelerator.sync_gradients:
            return torch.zeros((), device=self.args.device)
        batches, self._micro_batches = self._micro_batches, []
        model.eval()
        stats = self.zo_optimizer.step(lambda: sum(self._scaled_loss(model, batch, items) for batch, items in batches))
        for key, value in stats.record().items():
            self._unlogged.setdefault(key, []).append(value)
        return torch.tensor(stats.loss, device=self.args.device)

    def _scaled_loss(self, model: nn.Module, inputs: Inputs, num_items_in_batch: torch.Tensor | int | None) -> Any:
        """A micro-batch's loss as ``Trainer.training_step`` scales it before its backward."""
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        scaled_for_accumulation = self.loss_is_scaled_for_ga if self.loss_is_scaled_for_ga is not None else (
            (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None)
        return loss if scaled_for_accumulation else loss / self.current_gradient_accumulation_steps

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's log; one of training steps (it has their ``loss``) gets MeZO's means over the same
        steps and loses ``grad_norm``."""
        if "loss" in logs and self._unlogged:
            logs.pop("grad_norm", None)
            logs.update({key: math.fsum(values) / len(values) for key, values in self._unlogged.items()
                         if key != "loss"})
            self._unlogged = {}
        super().log(logs, start_time)

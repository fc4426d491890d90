"""Optimisers that know tensors and closures only: nothing of tasks, models or configs."""

from zoft.optim.zeroth_order import NonFiniteLossError, ZerothOrderSGD, ZOStepStats, decay_param_groups

__all__ = ["NonFiniteLossError", "ZOStepStats", "ZerothOrderSGD", "decay_param_groups"]

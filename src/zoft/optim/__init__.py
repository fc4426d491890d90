"""Optimisers that know tensors and closures only: nothing of tasks, models or configs."""

from zoft.optim.zeroth_order import (
    Exchange,
    Gaussian,
    LinearSchedule,
    LowRank,
    NonFiniteLossError,
    Perturbation,
    Sparse,
    ZerothOrderSGD,
    ZOStepStats,
    decay_param_groups,
)
from zoft.optim.zo_svrg import SVRGStepStats, ZerothOrderSVRG

__all__ = [
    "Exchange",
    "Gaussian",
    "LinearSchedule",
    "LowRank",
    "NonFiniteLossError",
    "Perturbation",
    "SVRGStepStats",
    "Sparse",
    "ZOStepStats",
    "ZerothOrderSGD",
    "ZerothOrderSVRG",
    "decay_param_groups",
]

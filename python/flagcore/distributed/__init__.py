"""Robust aggregation in real distributed training, on torch.distributed (gloo on CPUs, NCCL
on GPUs; launch with torchrun).

- ``register_robust_hook(ddp_model, rule="flag", attack=None, **rule_params)``: a
  DistributedDataParallel communication hook; every rank all-gathers each gradient bucket and
  aggregates the whole model with the rule, one p-space solve per step (see
  ``flagcore.distributed.hook``; ``whole_model=False``: per bucket).
- ``ParameterServer``: a synchronous parameter server over the whole flattened model, with
  backup workers (``quorum=k``: the first k gradients of a step; ``max_staleness=s``: no
  worker more than s steps behind).
- ``predict_step_time(worker_times, quorum)``: the parameter server's step-time distribution
  with backup workers, from flagcore.energy's (n, k) fork-join model.
- ``RankFailureError``: raised when ranks do not arrive within the timeout; names them.
  ``ReplicaDivergenceError``: the replicas differ with no majority (the hook cannot tell which
  rank forked).
- ``assert_replicas_identical(module)``: check that every rank holds bitwise the same
  parameters; ``shutdown()``: leave without gloo's teardown race.

torch is needed here (flagcore itself imports without it).
"""

from ._common import CommStats
from ._tools import assert_replicas_identical, parameter_digest, shutdown
from .errors import RankFailureError, ReplicaDivergenceError
from .hook import RobustHookState, register_robust_hook, robust_hook
from .quorum import lognormal_times, predict_step_time
from .server import ParameterServer

__all__ = [
    "CommStats",
    "ParameterServer",
    "RankFailureError",
    "ReplicaDivergenceError",
    "RobustHookState",
    "assert_replicas_identical",
    "lognormal_times",
    "parameter_digest",
    "predict_step_time",
    "register_robust_hook",
    "robust_hook",
    "shutdown",
]

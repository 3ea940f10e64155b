"""Energy and latency of (n, k) fork-join services with speed levels.

``simulate`` runs the C++ event-driven simulator (confidence intervals, tails, energy);
``approximate`` evaluates the closed forms; ``sweep`` runs both over a speed-probability or
arrival-rate grid; ``pareto_front`` and ``optimize`` answer the design question (the least
energy, or power, that meets a latency target; ``optimize_policy`` over the parameters of a
speed policy); ``exact_threshold`` gives the exact response-time distribution of the
threshold policy where it is a birth-death chain. See docs/spec_energy.md (the model) and
docs/energy-usage.md.
"""

from ._model import (
    MMPP,
    DeadlinePolicy,
    Renewal,
    Service,
    SleepState,
    SpeedLevel,
    ThresholdPolicy,
    Trace,
)
from .approx import ApproxResult, approximate
from .design import (
    OptimizeResult,
    PolicyOptimizeResult,
    SweepResult,
    optimize,
    optimize_policy,
    pareto_front,
    sweep,
)
from .exact import ExactThresholdResult, exact_threshold
from .power import PowerModel, fit_power_model, levels_from_frequencies, service_rate, service_time
from .simulate import SimResult, UnstableError, simulate, simulate_trace

__all__ = [
    "MMPP",
    "ApproxResult",
    "DeadlinePolicy",
    "ExactThresholdResult",
    "OptimizeResult",
    "PolicyOptimizeResult",
    "PowerModel",
    "Renewal",
    "Service",
    "SimResult",
    "SleepState",
    "SpeedLevel",
    "SweepResult",
    "ThresholdPolicy",
    "Trace",
    "UnstableError",
    "approximate",
    "exact_threshold",
    "fit_power_model",
    "levels_from_frequencies",
    "optimize",
    "optimize_policy",
    "pareto_front",
    "service_rate",
    "service_time",
    "simulate",
    "simulate_trace",
    "sweep",
]

"""flagcore: robust gradient aggregation (the Flag Aggregator and classic rules) and energy /
latency models of fork-join services, on a C++/CUDA core.

Start with ``flag_aggregate`` (robust aggregation) and ``flagcore.energy`` (fork-join energy and
latency). ``build_info()`` says what this build contains.
"""

from ._backend import build_info, core as _native, cuda_available, get_num_threads, set_num_threads
from .flag import FlagInfo, flag_aggregate, flag_aggregate_layers
from .rules import aggregate
from . import attacks

__version__ = _native.build_info()["version"]  # not build_info(): that imports torch to report it

__all__ = [
    "FlagInfo",
    "aggregate",
    "attacks",
    "build_info",
    "cuda_available",
    "flag_aggregate",
    "flag_aggregate_layers",
    "get_num_threads",
    "set_num_threads",
    "__version__",
]

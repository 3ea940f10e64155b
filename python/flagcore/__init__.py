"""flagcore: robust gradient aggregation (the Flag Aggregator and classic rules) and energy /
latency models of fork-join services, on a C++/CUDA core.

Start with ``flag_aggregate`` (robust aggregation) and ``flagcore.energy`` (fork-join energy and
latency). ``build_info()`` says what this build contains.
"""

from . import attacks
from ._backend import build_info, cuda_available, get_num_threads, set_num_threads
from ._backend import core as _native
from .flag import FlagInfo, flag_aggregate, flag_aggregate_layers
from .rules import aggregate

__version__ = _native.build_info()["version"]  # not build_info(): that imports torch to report it

__all__ = [
    "FlagInfo",
    "__version__",
    "aggregate",
    "attacks",
    "build_info",
    "cuda_available",
    "flag_aggregate",
    "flag_aggregate_layers",
    "get_num_threads",
    "set_num_threads",
]

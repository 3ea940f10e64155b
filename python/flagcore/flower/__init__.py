"""flagcore's aggregation rules and attacks for Flower (flwr), the federated-learning framework.

    from flagcore.flower import RobustStrategy, attack_mod

    strategy = RobustStrategy("flag", f=3, fraction_evaluate=0.0)     # a Flower strategy
    app = ClientApp(mods=[attack_mod("alie", byzantine={0, 1, 2},      # Byzantine supernodes
                                     num_nodes=10, num_byzantine=3)])

``RobustStrategy`` is Flower's message-API ``FedAvg`` with ``aggregate_train`` done by any rule
of ``flagcore.aggregate`` but "monna" and "fltrust" (they trust a worker or a server gradient
the strategy cannot name), and hostile or broken replies screened out of training and
evaluation; ``attack_mod`` is a client ``Mod`` running a ``flagcore.attacks`` attack;
``median_metrics`` aggregates client metrics by their median, not weighted by the counts the
clients report. Needs
``pip install 'flagcore[flower]'`` (flwr, pinned to the tested release).
``import flagcore`` never imports this module or flwr.
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without flwr
    raise ImportError(
        "flagcore.flower needs Flower: pip install 'flagcore[flower]' (flwr==1.42.0)"
    ) from exc

from .metrics import median_metrics
from .mods import SAMPLE_KEY, attack_mod
from .strategy import RobustStrategy

__all__ = ["SAMPLE_KEY", "RobustStrategy", "attack_mod", "median_metrics"]

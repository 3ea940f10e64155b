"""ServerApp: one or more strategies (FedAvg, Flower's Krum/FedMedian, or flagcore rules via
RobustStrategy), each trained from the same initial model, with a server-side evaluation of
the global model on the held-out test set after every round.

``rule`` may list several strategies separated by commas ("fedavg,flag,centered_clipping[tau=1.0]"):
they run one after the other in the same federation, which is how the table in docs/flower.md
was made.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedMedian, Krum

from flagcore.experiments import parse_rule_spec, split_rule_list
from flagcore.flower import RobustStrategy
from flagcore.rules import RULES

from .task import DEFAULTS, build_model, evaluate, test_data

FLOWER_STRATEGIES = ("fedavg", "flower-krum", "flower-median")


def make_strategy(spec: str, f: int, num_nodes: int) -> Any:
    """Strategy by name: fedavg, flower-krum, flower-median, or a flagcore rule with optional
    parameters, "centered_clipping[tau=1.0]" (the harness's rule-spec syntax); robust rules get
    f."""
    common = dict(fraction_evaluate=0.0, min_available_nodes=num_nodes, min_train_nodes=num_nodes)
    if spec == "fedavg":
        return FedAvg(**common)
    if spec == "flower-krum":
        return Krum(num_malicious_nodes=f, **common)
    if spec == "flower-median":
        return FedMedian(**common)
    rs = parse_rule_spec(spec)
    if rs.name not in RULES:
        raise ValueError(
            f"server_app: rule must be one of {', '.join(FLOWER_STRATEGIES + RULES)}, got {spec!r}"
        )
    params = {**({} if rs.name == "mean" else {"f": f}), **rs.params}
    return RobustStrategy(rs.name, **params, **common)


def _wait_for_nodes(grid: Grid, timeout: float = 60.0) -> int:
    """Number of connected nodes once it has stopped growing (simulation nodes register at
    start)."""
    n, stable, t0 = 0, 0, time.time()
    while time.time() - t0 < timeout and stable < 3:
        m = len(list(grid.get_node_ids()))
        stable = stable + 1 if (m == n and m > 0) else 0
        n = m
        time.sleep(0.2)
    return n


def make_server_app(
    overrides: dict | None = None, on_result: Callable[[str, Any], None] | None = None
) -> ServerApp:
    """The ServerApp; ``overrides`` take precedence over the run config; ``on_result(rule,
    result)`` receives each strategy's flwr Result (the ServerApp runs in the caller's process
    under run_simulation)."""
    over = dict(overrides or {})
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        rc = {**DEFAULTS, **context.run_config, **over}
        dataset, seed = str(rc["dataset"]), int(rc["seed"])
        num_nodes = _wait_for_nodes(grid)
        net = build_model(dataset, str(rc["model"]), seed)
        initial = ArrayRecord(net.state_dict())
        x_test, y_test = test_data(dataset, seed)

        def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            net.load_state_dict(arrays.to_torch_state_dict())
            loss, acc = evaluate(net, x_test, y_test)
            return MetricRecord({"test-loss": loss, "test-acc": acc})

        for rule in split_rule_list(str(rc["rule"])):
            strategy = make_strategy(rule, int(rc["f"]), num_nodes)
            train_config = ConfigRecord(
                {
                    k[len("train-config-") :]: v
                    for k, v in rc.items()
                    if k.startswith("train-config-")
                }
            )
            result = strategy.start(
                grid=grid,
                initial_arrays=initial,
                num_rounds=int(rc["num-server-rounds"]),
                train_config=train_config,
                evaluate_fn=central_eval,
            )
            final = result.evaluate_metrics_serverapp[max(result.evaluate_metrics_serverapp)]
            print(
                f"flagcore-flower-example: rule={rule} attack={rc['attack']} "
                f"byzantine={rc['num-byzantine']}/{num_nodes} "
                f"final test-acc={final['test-acc']:.4f}",
                flush=True,
            )
            if on_result is not None:
                on_result(rule, result)

    return app


app = make_server_app()

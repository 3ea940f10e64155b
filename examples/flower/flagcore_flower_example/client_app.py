"""ClientApp: local SGD on the node's shard; partitions < num-byzantine attack.

Gradient attacks come from ``flagcore.flower.attack_mod`` (a client mod: the training code below
knows nothing about them); data attacks (label_flip, distorted, ...) poison the shard itself.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flagcore.flower import SAMPLE_KEY, attack_mod

from .task import DATA_ATTACKS, DEFAULTS, build_model, client_data, evaluate, train


def make_client_app(overrides: dict | None = None, extra_mods: list | None = None) -> ClientApp:
    """The ClientApp; ``overrides`` take precedence over the run config (for run_simulation,
    which has none); ``extra_mods`` run inside the attack mod."""
    over = dict(overrides or {})
    mods_cache: dict = {}

    def cfg(context: Context) -> dict:
        return {**DEFAULTS, **context.run_config, **over}

    def byzantine_mod(msg: Message, context: Context, call_next: Any) -> Message:
        """Builds (once) the attack_mod the config asks for and delegates to it."""
        rc = cfg(context)
        attack, nb = str(rc["attack"]), int(rc["num-byzantine"])
        if attack == "none" or attack in DATA_ATTACKS or nb == 0:
            return call_next(msg, context)
        key = (attack, nb, int(context.node_config["num-partitions"]), int(rc["seed"]))
        if key not in mods_cache:
            extra = dict(num_nodes=key[2], num_byzantine=nb) if attack == "alie" else {}
            mods_cache[key] = attack_mod(attack, byzantine=range(nb), seed=key[3], **extra)
        return mods_cache[key](msg, context, call_next)

    app = ClientApp(mods=[byzantine_mod, *(extra_mods or [])])

    def setup(context: Context) -> tuple:
        rc, nc = cfg(context), context.node_config
        dataset, seed = str(rc["dataset"]), int(rc["seed"])
        x, y = client_data(
            dataset,
            seed,
            int(nc["partition-id"]),
            int(nc["num-partitions"]),
            str(rc["attack"]),
            int(rc["num-byzantine"]),
        )
        return rc, build_model(dataset, str(rc["model"]), seed), x, y

    @app.train()
    def train_fn(msg: Message, context: Context) -> Message:
        rc, net, x, y = setup(context)
        net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        conf = msg.content["config"]
        sample = conf.get(SAMPLE_KEY)
        seed = (
            int(rc["seed"]) * 7919
            + int(conf["server-round"]) * 131
            + int(context.node_config["partition-id"])
        )
        loss = train(
            net,
            x,
            y,
            epochs=int(rc["local-epochs"]),
            batch_size=int(rc["batch-size"]),
            lr=float(rc["lr"]),
            seed=seed,
            bootstrap=None if sample is None else int(sample),
        )
        content = RecordDict(
            {
                "arrays": ArrayRecord(net.state_dict()),
                "metrics": MetricRecord({"train-loss": loss, "num-examples": len(y)}),
            }
        )
        return Message(content=content, reply_to=msg)

    @app.evaluate()
    def evaluate_fn(msg: Message, context: Context) -> Message:
        _, net, x, y = setup(context)
        net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        loss, acc = evaluate(net, x, y)
        metrics = MetricRecord({"eval-loss": loss, "eval-acc": acc, "num-examples": len(y)})
        return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)

    return app


app = make_client_app()


def hostile_mod(msg: Message, context: Context, call_next: Any) -> Message:
    """Demonstration of broken clients (``simulate.py --hostile``): on TRAIN messages partition 0
    sends NaN in its first array, 1 leaves its first array out, 2 crashes (Flower turns the
    exception into an error reply), 3 sends its first array as float64."""
    import numpy as np
    from flwr.app import Array

    pid = int(context.node_config["partition-id"])
    if msg.metadata.message_type != "train" or pid > 3:
        return call_next(msg, context)
    if pid == 2:
        raise RuntimeError("hostile_mod: partition 2 crashed on purpose")
    out = call_next(msg, context)
    arrays = {k: a.numpy() for k, a in out.content["arrays"].items()}
    first = next(iter(arrays))
    if pid == 0:
        arrays[first] = np.full_like(arrays[first], np.nan)
    elif pid == 1:
        del arrays[first]
    else:
        arrays[first] = arrays[first].astype(np.float64)
    out.content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    return out

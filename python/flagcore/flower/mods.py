"""Client-side Byzantine attacks as Flower client mods.

``attack_mod(name, ...)`` returns a Flower ``Mod`` (``(msg, context, call_next) -> Message``).
Put it in any ClientApp's ``mods`` list: on TRAIN messages of the nodes it marks Byzantine it
runs the wrapped ClientApp as usual, turns the honest reply into an update (reply model minus
the global model the server sent), replaces it by ``flagcore.attacks.attack(name, ...)`` and
sends global + attack as the node's model. Metrics and num-examples of the honest reply are
kept, so the attacker looks like any other client. Other messages and honest nodes pass
through untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from logging import DEBUG
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.common import log

from .. import attacks as _attacks
from ._flat import Layout

#: ConfigRecord key the mod sets to 0, 1, ... when it runs the wrapped app more than once.
SAMPLE_KEY = "flagcore-sample"

# Attacks whose output depends on statistics of honest updates, and how many honest samples
# the mod gathers for them by default.
_DEFAULT_SAMPLES = {"alie": 3}


def attack_mod(
    name: str,
    *,
    byzantine: Any = None,
    samples: int | None = None,
    seed: int = 0,
    num_nodes: int | None = None,
    num_byzantine: int | None = None,
    **params: Any,
) -> Callable[[Message, Context, Callable[..., Any]], Message]:
    """A Flower client mod that makes chosen supernodes Byzantine with a flagcore attack.

    Parameters
    ----------
    name : an attack of ``flagcore.attacks.ATTACKS`` ("random", "alie", "sign_flip", "ipm",
        "gaussian", "zero", "nan", "inf", "mimic").
    byzantine : which nodes attack. None: every node running this mod. A collection of ints:
        nodes whose ``context.node_config["partition-id"]`` is in it (the simulation engine sets
        partition-id 0..N-1). A callable ``(context) -> bool``: anything else.
    samples : honest updates the attacker computes to estimate the honest statistics, as in
        Baruch et al.'s non-omniscient setting (the attackers know only their own data): the
        wrapped app runs ``samples`` times with ``config["flagcore-sample"] = k`` (k = 0, 1, ...),
        which an app can use to draw a different subsample (the example app trains on a
        bootstrap resample); the first run's metrics are sent. Default 3 for "alie", else 1.
    seed : the attack's own seed is ``SeedSequence([seed, node & 0xFFFFFFFF, node >> 32,
        round]).generate_state(1)[0]`` (node: the 64-bit node id; round: the message's
        ``config["server-round"]``, 0 without it), so every node and round draws its own
        reproducible stream.
    num_nodes, num_byzantine : for "alie" without ``z``: z = ``flagcore.attacks.alie_z(num_nodes,
        num_byzantine)``, the paper's z_max for the whole federation.
    params : the attack's own parameters (``z``, ``scale``, ``eps``, ``sigma``, ...).
    """
    fn = "attack_mod"
    if not isinstance(name, str) or name not in _attacks.ATTACKS:
        raise ValueError(f"{fn}: name must be one of {', '.join(_attacks.ATTACKS)}, got {name!r}")
    if samples is None:
        samples = _DEFAULT_SAMPLES.get(name, 1)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"{fn}: samples must be an int >= 1, got {samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{fn}: seed must be an int >= 0, got {seed!r}")
    if name == "alie":
        if samples < 2:
            raise ValueError(
                f"{fn}: attack 'alie' needs samples >= 2 (a standard deviation), got {samples}"
            )
        if params.get("z") is None:
            if num_nodes is None or num_byzantine is None:
                raise TypeError(
                    f"{fn}: attack 'alie' needs z, or num_nodes and num_byzantine to derive it"
                )
            params["z"] = _attacks.alie_z(num_nodes, num_byzantine)
    elif num_nodes is not None or num_byzantine is not None:
        raise TypeError(
            f"{fn}: num_nodes and num_byzantine only apply to attack 'alie', got attack {name!r}"
        )
    # Check the attack's parameters now, on a tiny problem, rather than inside a running federation.
    _attacks.attack(name, np.zeros((2, 3)), 1, **params)
    is_byzantine = _selector(byzantine, fn)

    def mod(msg: Message, context: Context, call_next: Callable[..., Any]) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or not is_byzantine(context):
            return cast("Message", call_next(msg, context))
        content = msg.content
        key = next(iter(content.array_records.keys()))
        global_arrays = content.array_records[key]
        config = content.config_records.get("config") or next(
            iter(content.config_records.values()), None
        )
        if samples > 1 and config is None:
            raise ValueError(
                f"{fn}: samples = {samples} needs a ConfigRecord in the TRAIN message to pass "
                f"{SAMPLE_KEY!r} to the ClientApp, got none"
            )
        replies = []
        try:
            for k in range(samples):
                if samples > 1 and config is not None:
                    config[SAMPLE_KEY] = k
                replies.append(call_next(msg, context))
        finally:
            if samples > 1 and config is not None and SAMPLE_KEY in config:
                del config[SAMPLE_KEY]
        out = replies[0]
        if any(r.has_error() for r in replies):
            return cast("Message", out)
        layout = Layout.of(global_arrays, fn)
        rows = []
        for r in replies:
            views, why = layout.views(next(iter(r.content.array_records.values())))
            if views is None:
                raise ValueError(
                    f"{fn}: the wrapped ClientApp's reply does not match the global model: {why}"
                )
            rows.append(views)
        buf = np.empty(len(rows) * layout.n, dtype=np.float64)
        for i, views in enumerate(rows):
            layout.fill_row(buf, len(rows), i, views, per_array=False)
        g = np.empty(layout.n, dtype=np.float64)
        for k, gk in enumerate(global_arrays.values()):
            g[layout.offsets[k] : layout.offsets[k] + layout.sizes[k]] = gk.numpy().ravel()
        honest = buf.reshape(len(rows), layout.n) - g
        rnd = int(cast(int, config.get("server-round", 0))) if config is not None else 0
        node = int(msg.metadata.dst_node_id)
        s = int(
            np.random.SeedSequence([seed, node & 0xFFFFFFFF, node >> 32, rnd]).generate_state(1)[0]
        )
        bad = _attacks.attack(name, honest, 1, seed=s, **params)[0]
        with np.errstate(over="ignore", invalid="ignore"):
            model = g + bad
        rkey = next(iter(out.content.array_records.keys()))
        out.content[rkey] = ArrayRecord(
            {k: Array(np.asarray(a)) for k, a in zip(layout.keys, _cast(layout, model))}
        )
        log(DEBUG, "attack_mod: node %d sent a %r update in round %d", node, name, rnd)
        return cast("Message", out)

    mod.__name__ = f"attack_mod_{name}"
    return mod


def _cast(layout: Layout, vec: np.ndarray) -> list[Any]:
    """Per key, the (n,) model vector's values in the array's dtype and shape; integer arrays
    rounded, a non-finite attack value made finite first (no casting error)."""
    out = []
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(len(layout.keys)):
            o, s = layout.offsets[k], layout.sizes[k]
            v = vec[o : o + s]
            if layout.dtypes[k].kind in "iu":
                v = np.nan_to_num(np.rint(v))
            out.append(v.astype(layout.dtypes[k]).reshape(layout.shapes[k]))
    return out


def _selector(byzantine: Any, fn: str) -> Callable[[Context], bool]:
    if byzantine is None:
        return lambda context: True
    if callable(byzantine):
        return lambda context: bool(byzantine(context))
    if isinstance(byzantine, Collection) and not isinstance(byzantine, (str, bytes)):
        ids = set()
        for v in byzantine:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{fn}: byzantine must hold int partition ids, got {v!r}")
            ids.add(int(v))

        def by_partition(context: Context) -> bool:
            pid = context.node_config.get("partition-id")
            if pid is None:
                raise ValueError(
                    f"{fn}: byzantine is a set of partition ids but this node's node_config has no "
                    f"'partition-id' (got keys {sorted(context.node_config)})"
                )
            return int(pid) in ids

        return by_partition
    raise TypeError(
        f"{fn}: byzantine must be None, a collection of partition ids or a callable, got "
        f"{type(byzantine).__name__}"
    )

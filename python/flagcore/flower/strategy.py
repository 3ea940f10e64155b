"""``RobustStrategy``: flagcore's aggregation rules as a Flower strategy (Message API)."""

from __future__ import annotations

import inspect
import math
import time
from collections import Counter
from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAvg

from ..flag import FlagInfo, flag_aggregate_layers
from ..rules import RULES, make_rule
from ._flat import Layout

_FEDAVG_ARGS = frozenset(p for p in inspect.signature(FedAvg.__init__).parameters if p != "self")


class RobustStrategy(FedAvg):
    """Flower's FedAvg with ``aggregate_train`` replaced by a flagcore rule.

    ``RobustStrategy(rule="flag", **params)``: keyword arguments that FedAvg takes
    (fraction_train, min_available_nodes, weighted_by_key, ...) go to FedAvg, which keeps
    sampling, configure_train/configure_evaluate and aggregate_evaluate unchanged; every other
    keyword goes to the rule (``flagcore.rules.make_rule(rule, **params)``: f, r, lam, tau, pre,
    ...). The rule is built, and its parameters checked, here.

    Each round, the replies' models minus the global model of the round are the updates; they
    are copied once into one (p, n) stack (the whole flattened model, one row per valid reply,
    rows ordered by node id) and aggregated by the rule; the aggregate is added to the global
    model. With ``per_array=True`` each named array is its own problem instead (for "flag" all
    arrays in one native call via ``flag_aggregate_layers``).

    Hostile or broken replies never stop the server. A reply that is an error, lacks the
    model, has missing/extra arrays, a wrong shape or dtype, or a malformed payload is left
    out; a reply with NaN/Inf values is excluded by the rule. Every excluded reply counts
    against f (the rule runs with f_eff = max(f - excluded, 0) on the rest, flagcore's own
    policy), and its node id is named in the round's MetricRecord and log line. A round whose
    valid replies do not meet the rule's precondition (e.g. Krum's p >= 2f + 3) keeps the
    global model unchanged and logs why. (One rule object is kept per f_eff, so a stateful
    rule such as ``centered_clipping(reference="previous")`` keeps one state per f_eff.)

    ``weighted``: only for rule "mean": weight each update by the reply's ``weighted_by_key``
    value ("num-examples"), which is Flower's FedAvg. Robust rules ignore num-examples: a
    client reports its own count, so one Byzantine client claiming 10**9 examples would own
    a weighted aggregate; every rule's guarantee is stated for unweighted inputs.

    Client metrics are aggregated by ``train_metrics_aggr_fn`` (FedAvg's weighted average)
    over the included replies whose MetricRecord is well formed; they are reported, never
    used to aggregate models, and not robust. The round's MetricRecord adds:

    ==================== ==================================================================
    agg-replies          replies received
    agg-nodes            node ids of the stack rows (valid replies), ascending
    agg-excluded-nodes   node ids left out (invalid replies and rows the rule excluded)
    agg-excluded         how many
    agg-seconds          wall time of the aggregation
    flag-weights         "flag", whole model: FA's IRLS weight per agg-nodes entry
    flag-ratios          "flag", whole model: reconstruction ratio per agg-nodes entry
    agg-coefficients     rules whose output is sum_i c_i g_i: c per agg-nodes entry
    ==================== ==================================================================
    """

    def __init__(
        self, rule: str = "flag", *, per_array: bool = False, weighted: bool = False, **kwargs: Any
    ) -> None:
        fn = "RobustStrategy"
        if not isinstance(rule, str) or rule not in RULES:
            raise ValueError(f"{fn}: rule must be one of {', '.join(RULES)}, got {rule!r}")
        for name, v in (("per_array", per_array), ("weighted", weighted)):
            if not isinstance(v, bool):
                raise TypeError(f"{fn}: {name} must be a bool, got {v!r}")
        if weighted and rule != "mean":
            raise ValueError(
                f"{fn}: weighted=True (num-examples weighting) is only for rule 'mean', "
                f"got rule {rule!r}: a robust rule must not let clients choose their own weight"
            )
        fedavg_kw = {k: v for k, v in kwargs.items() if k in _FEDAVG_ARGS}
        self.rule_params = {k: v for k, v in kwargs.items() if k not in _FEDAVG_ARGS}
        super().__init__(**fedavg_kw)
        self.rule = rule
        self.per_array = per_array
        self.weighted = weighted
        built = make_rule(rule, _fn=fn, **self.rule_params)  # validates the parameters now
        self.f = built.f
        self._rules = {self.f: built}
        self.current_arrays: ArrayRecord | None = None

    # ------------------------------------------------------------------ Flower hooks
    def summary(self) -> None:
        """Log the rule and its parameters, then FedAvg's summary."""
        log(
            INFO,
            "\t├──> flagcore rule: %s %s (per_array=%s, weighted=%s)",
            self.rule,
            self.rule_params or "",
            self.per_array,
            self.weighted,
        )
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's configure_train; remembers the round's global model (the updates' origin)."""
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the replies' updates with the rule; see the class doc."""
        if self.current_arrays is None:
            raise AggregationError(
                "RobustStrategy.aggregate_train: no global model of the round; "
                "configure_train must run first (Strategy.start does this)"
            )
        t0 = time.perf_counter()
        replies = list(replies)
        layout = Layout.of(self.current_arrays, "RobustStrategy.aggregate_train")
        valid, invalid = self._screen(replies, layout)
        nodes = [node for node, _, _ in valid]
        metrics = MetricRecord({"agg-replies": len(replies), "agg-nodes": nodes})
        if not valid:
            return self._skip(server_round, metrics, invalid, "no valid reply")
        p = len(valid)
        buf = layout.new_buffer(p)
        for i, (_, _, views) in enumerate(valid):
            layout.fill_row(buf, p, i, views, self.per_array)
        g = layout.flat_global(self.current_arrays)
        layout.subtract_global(buf, p, g, self.per_array)
        try:
            update, excluded_rows = self._aggregate(
                buf, p, layout, [m for _, m, _ in valid], metrics
            )
        except ValueError as exc:  # the rule's precondition on the valid replies
            return self._skip(server_round, metrics, invalid, str(exc))
        try:  # integer arrays: exact global + rounded update, refused out of range
            new = layout.apply(update, g, self.current_arrays)
        except ValueError as exc:
            return self._skip(server_round, metrics, invalid, str(exc))
        arrays = ArrayRecord({k: Array(a) for k, a in zip(layout.keys, new)})
        excluded = [(node, why) for node, why in invalid] + [
            (nodes[i], "non-finite values") for i in excluded_rows
        ]
        self._add_exclusions(metrics, excluded)
        metrics["agg-seconds"] = time.perf_counter() - t0
        dropped = set(excluded_rows)
        self._client_metrics(metrics, [m for i, (_, m, _) in enumerate(valid) if i not in dropped])
        log(
            INFO,
            "aggregate_train: round %d: rule '%s' aggregated %d of %d replies%s",
            server_round,
            self.rule,
            p - len(excluded_rows),
            len(replies),
            _describe(excluded),
        )
        return arrays, metrics

    # ------------------------------------------------------------------ pieces
    def _screen(self, replies: list[Any], layout: Layout) -> tuple[list[Any], list[Any]]:
        """Split replies into valid (node, message, views) sorted by node id, and invalid
        (node, reason)."""
        valid, invalid = [], []
        for j, msg in enumerate(replies):
            node = _node_id(msg, j)
            try:
                why, views = "", None
                if msg.has_error():
                    why = f"error reply ({_first_line(msg.error.reason)})"
                else:
                    content = msg.content
                    if self.arrayrecord_key in content.array_records:
                        record = content.array_records[self.arrayrecord_key]
                    elif len(content.array_records) == 1:
                        record = next(iter(content.array_records.values()))
                    else:
                        record = None
                        why = (
                            f"{len(content.array_records)} ArrayRecords and none named "
                            f"{self.arrayrecord_key!r}"
                        )
                    if record is not None:
                        views, why = layout.views(record)
                    if not why and self.weighted and _weight(msg, self.weighted_by_key) is None:
                        why = f"no finite positive {self.weighted_by_key!r} to weight by"
            except Exception as exc:  # a reply that cannot even be inspected is just invalid
                why = f"unreadable reply ({type(exc).__name__}: {exc})"
            if why:
                invalid.append((node, why))
            else:
                valid.append((node, msg, views))
        # A node answers once per round: one that replied several times (a replay, or a node
        # trying to weigh more) would get a row per reply and could take over the aggregate.
        # Which reply is genuine cannot be told, so all of them are excluded and named.
        count = Counter(node for node, _, _ in valid)
        count.update(node for node, _ in invalid)
        dup = {node for node, c in count.items() if c > 1}
        if dup:
            invalid = [(n, w) for n, w in invalid if n not in dup]
            invalid += [
                (node, f"replied {count[node]} times in this round (all its replies excluded)")
                for node in sorted(dup)
            ]
            valid = [t for t in valid if t[0] not in dup]
        valid.sort(key=lambda t: t[0])
        return valid, invalid

    def _rule_for(self, f_eff: int) -> Any:
        if f_eff not in self._rules:
            self._rules[f_eff] = make_rule(
                self.rule, _fn="RobustStrategy", **{**self.rule_params, "f": f_eff}
            )
        return self._rules[f_eff]

    def _aggregate(
        self, buf: np.ndarray, p: int, layout: Layout, msgs: list[Any], metrics: MetricRecord
    ) -> tuple[np.ndarray, list[Any]]:
        """(update (n,), excluded stack rows). Raises ValueError when the rule's precondition
        fails."""
        n_invalid = cast(int, metrics["agg-replies"]) - p
        f_eff = max(self.f - n_invalid, 0)
        if self.weighted:
            return _weighted_mean(
                layout.whole(buf, p), np.array([_weight(m, self.weighted_by_key) for m in msgs])
            )
        rule = self._rule_for(f_eff)
        if not self.per_array:
            out, info = rule(layout.whole(buf, p), return_info=True)
            self._report(info, metrics)
            return np.ascontiguousarray(out, dtype=layout.dtype), _rows(info.excluded)
        update = np.empty(layout.n, dtype=layout.dtype)
        blocks = [layout.block(buf, p, k) for k in range(len(layout.keys))]
        bad = np.zeros(p, bool)
        if self.rule == "flag" and not rule.pre:
            rule._check(p)  # the f < p precondition, as the whole-model call checks it
            outs, infos = flag_aggregate_layers(blocks, return_info=True, **rule.params)
        else:
            outs, infos = zip(*(rule(b, return_info=True) for b in blocks))
        for k, (o, info) in enumerate(zip(outs, infos)):
            update[layout.offsets[k] : layout.offsets[k] + layout.sizes[k]] = o
            bad |= np.asarray(info.excluded, bool)
        return update, list(np.flatnonzero(bad))

    @staticmethod
    def _report(info: Any, metrics: MetricRecord) -> None:
        # Every rule returns a RuleInfo (a FlagInfo subclass); FA's fields are set for "flag" only.
        if isinstance(info, FlagInfo) and info.weights is not None:
            metrics["flag-weights"] = [float(v) for v in info.weights]
            metrics["flag-ratios"] = [float(v) for v in info.reconstruction_ratios]
        elif getattr(info, "coefficients", None) is not None:
            metrics["agg-coefficients"] = [float(v) for v in info.coefficients]

    @staticmethod
    def _add_exclusions(metrics: MetricRecord, excluded: list[Any]) -> None:
        metrics["agg-excluded-nodes"] = [int(node) for node, _ in excluded]
        metrics["agg-excluded"] = len(excluded)

    def _skip(
        self, server_round: int, metrics: MetricRecord, invalid: list[Any], why: str
    ) -> tuple[None, MetricRecord]:
        self._add_exclusions(metrics, invalid)
        log(
            WARNING,
            "aggregate_train: round %d skipped, global model unchanged: %s (%d replies%s)",
            server_round,
            why,
            metrics["agg-replies"],
            _describe(invalid),
        )
        return None, metrics

    def _client_metrics(self, metrics: MetricRecord, msgs: list[Any]) -> None:
        """FedAvg's client-metric aggregation over the well-formed MetricRecords; never raises."""
        ok = []
        for m in msgs:
            recs = m.content.metric_records
            if len(recs) == 1 and _weight(m, self.weighted_by_key) is not None:
                ok.append(m.content)
        if not ok:
            return
        keys = set(next(iter(ok[0].metric_records.values())).keys())
        ok = [c for c in ok if set(next(iter(c.metric_records.values())).keys()) == keys]
        try:
            client = self.train_metrics_aggr_fn(ok, self.weighted_by_key)
        except Exception as exc:  # client-reported metrics must not stop the round
            log(
                WARNING,
                "aggregate_train: client metrics not aggregated: %s: %s",
                type(exc).__name__,
                exc,
            )
            return
        for k, v in client.items():
            if k not in metrics:
                metrics[k] = v


def _node_id(msg: Any, j: int) -> int:
    try:
        return int(msg.metadata.src_node_id)
    except Exception:  # e.g. a test double without metadata: its position names it
        return j


def _first_line(text: Any, limit: int = 160) -> str:
    """An error reason fit for one log line (a ClientApp exception arrives with its traceback)."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _weight(msg: Any, key: str) -> float | None:
    """The reply's finite positive scalar ``key`` from its one MetricRecord, else None."""
    recs = msg.content.metric_records
    if len(recs) != 1:
        return None
    v = next(iter(recs.values())).get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) and v > 0 else None


def _weighted_mean(stack: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """FedAvg's sum_i (w_i / sum w) x_i in one pass; rows with non-finite values excluded."""
    with np.errstate(over="ignore"):
        total = w.sum()
    if not np.isfinite(total):
        # finite weights whose sum overflows (two clients claiming 1e308 examples made every
        # coefficient 0 and the round's update silently zero): the same mean from w / max w
        w = w / w.max()
    c = (w / w.sum()).astype(stack.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        out = c @ stack
    if np.isfinite(out).all():
        return out, []
    good = np.array([np.isfinite(row).all() for row in stack])
    if not good.any():
        return np.zeros(stack.shape[1], stack.dtype), list(range(len(w)))
    stack[~good] = 0  # the server's own buffer: zero the bad rows rather than copy the good ones
    c = np.where(good, w, 0.0)
    c = (c / c.sum()).astype(stack.dtype)
    return c @ stack, list(np.flatnonzero(~good))


def _rows(excluded: Any) -> list[Any]:
    return [int(i) for i in np.flatnonzero(np.asarray(excluded, bool))]


def _describe(excluded: list[Any]) -> str:
    if not excluded:
        return ""
    return "; excluded " + ", ".join(f"node {node} ({why})" for node, why in excluded)

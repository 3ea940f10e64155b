"""``RobustStrategy``: flagcore's aggregation rules as a Flower strategy (Message API)."""

from __future__ import annotations

import inspect
import math
import numbers
import time
from collections import Counter
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.serverapp.exception import AggregationError
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from .. import rules as _rules
from .._arrays import check_state_keys
from ..flag import FlagInfo, flag_aggregate_layers
from ..rules import RULES, make_rule
from ..rules.preagg import check_pre_rows
from ._flat import Layout, all_finite

_FEDAVG_ARGS = frozenset(p for p in inspect.signature(FedAvg.__init__).parameters if p != "self")

# Rules a server cannot run soundly, and why.
_REFUSED = {
    "monna": "MoNNA averages the nearest neighbours of one worker known to be correct (idx), "
    "and a server cannot tell which node is correct: rows follow node ids, so the lowest node "
    "id would be trusted and, if Byzantine, would own the round",
    "fltrust": "FLTrust needs a fresh server gradient (on the server's root data set) every "
    "round, which the strategy does not compute",
}

# Prefixes of the strategy's own keys in the round's MetricRecord: client metrics named so are
# refused (a client could otherwise report e.g. agg-coefficients of its choosing).
_RESERVED = ("agg-", "flag-")


class RobustStrategy(FedAvg):
    """Flower's FedAvg with ``aggregate_train`` replaced by a flagcore rule.

    ``RobustStrategy(rule="flag", **params)``: keyword arguments that FedAvg takes
    (fraction_train, min_available_nodes, weighted_by_key, ...) go to FedAvg, which keeps
    sampling and configure_train/configure_evaluate unchanged; every other keyword goes to the
    rule (``flagcore.rules.make_rule(rule, **params)``: f, r, lam, tau, pre, ...). Both are
    checked here: an argument that is neither FedAvg's nor the rule's raises TypeError.
    Rules "monna" (it trusts one worker, which a server cannot name) and "fltrust" (it needs a
    fresh server gradient every round) are refused.

    Each round, the replies' models minus the global model of the round are the updates; they
    are copied once into one (p, n) stack (the whole flattened model, one row per valid reply,
    rows ordered by node id) and aggregated by the rule; the aggregate is added to the global
    model. With ``per_array=True`` each named array is its own problem instead (for "flag" all
    arrays in one native call via ``flag_aggregate_layers``); the rows are the same for every
    array.

    Hostile or broken replies never stop the server. Each reply is named by the node the
    server sent its message to (the SuperLink answers with its own id for a node that went
    offline). Left out of the stack, and named in the round's MetricRecord and log line:

    - error replies (a crashed ClientApp, the SuperLink's "node unavailable" or "reply
      expired"): an honest node can fail, so they do not change f;
    - faulty replies, which only a faulty node sends: no model, missing/extra arrays, a wrong
      shape or dtype, a malformed payload, NaN/Inf values, or several replies from one node in
      a round. Each faulty node is one of the f Byzantine ones already removed: the rule runs
      with f_eff = max(f - faulty nodes, 0) on the rest (flagcore's own policy for non-finite
      workers).

    If the rule's precondition (e.g. Krum's p >= 2f + 3) fails on the valid rows with f_eff,
    f is lowered only as far as the precondition needs and a WARNING says so; if it fails even
    with f = 0 the round is skipped (global model unchanged, logged). Any other error of the
    rule is a configuration error and is raised. One rule state is kept across rounds whatever
    f a round runs with (a generator, ``centered_clipping(reference="previous")``'s last
    output); a round that is skipped leaves it as it was.

    ``weighted``: only for rule "mean": weight each update by the reply's ``weighted_by_key``
    value ("num-examples"), which is Flower's FedAvg. Robust rules ignore num-examples: a
    client reports its own count, so one Byzantine client claiming 10**9 examples would own
    a weighted aggregate; every rule's guarantee is stated for unweighted inputs.

    Client metrics (training and ``aggregate_evaluate``) are FedAvg's weighted average (or
    ``train_metrics_aggr_fn`` / ``evaluate_metrics_aggr_fn``) over the replies with exactly one
    MetricRecord, a finite positive ``weighted_by_key``, finite values and the key set most
    replies have (ties: the smallest sorted key tuple); training metrics named ``agg-*`` or
    ``flag-*`` are refused. They are reported, never used to aggregate models, and not robust
    (a client chooses its own weight). The round's MetricRecord adds:

    ==================== ==================================================================
    agg-replies          replies received
    agg-nodes            node ids of the stack rows (valid replies), ascending
    agg-excluded-nodes   node ids left out (invalid replies and rows the rule excluded)
    agg-excluded         how many
    agg-f-eff            the f the rule ran with
    agg-seconds          wall time of the aggregation
    flag-weights         "flag", whole model: FA's IRLS weight per row the rule saw (per
                         agg-nodes entry; per bucket with pre="bucketing")
    flag-ratios          "flag", whole model: reconstruction ratio per row the rule saw
    agg-coefficients     rules whose output is sum_i c_i g_i: c per agg-nodes entry
    ==================== ==================================================================
    """

    def __init__(
        self, rule: str = "flag", *, per_array: bool = False, weighted: bool = False, **kwargs: Any
    ) -> None:
        fn = "RobustStrategy"
        if not isinstance(rule, str) or rule not in RULES:
            usable = ", ".join(r for r in RULES if r not in _REFUSED)
            raise ValueError(f"{fn}: rule must be one of {usable}, got {rule!r}")
        if rule in _REFUSED:
            raise ValueError(
                f"{fn}: rule {rule!r} cannot run as a server strategy: {_REFUSED[rule]}"
            )
        for name, v in (("per_array", per_array), ("weighted", weighted)):
            if not isinstance(v, bool):
                raise TypeError(f"{fn}: {name} must be a bool, got {v!r}")
        if weighted and rule != "mean":
            raise ValueError(
                f"{fn}: weighted=True (num-examples weighting) is only for rule 'mean', "
                f"got rule {rule!r}: a robust rule must not let clients choose their own weight"
            )
        fedavg_kw = {k: v for k, v in kwargs.items() if k in _FEDAVG_ARGS}
        rule_params = {k: v for k, v in kwargs.items() if k not in _FEDAVG_ARGS}
        known = _rule_parameters(rule)
        for k in rule_params:
            if k not in known:
                raise TypeError(
                    f"{fn}: unknown argument {k!r} (neither a FedAvg argument nor a parameter "
                    f"of rule {rule!r}; FedAvg takes {', '.join(sorted(_FEDAVG_ARGS))}; rule "
                    f"{rule!r} takes {', '.join(sorted(known))})"
                )
        _check_fedavg_args(fedavg_kw, fn)
        if per_array and rule == "centered_clipping" and rule_params.get("reference") is not None:
            raise ValueError(
                f"{fn}: per_array=True cannot take centered_clipping's reference (got "
                f"{_short(rule_params['reference'])}): a reference is one vector for the whole "
                f"model, and 'previous' would carry one array's output into the next array's "
                f"problem; use per_array=False"
            )
        built = make_rule(rule, _fn=fn, **rule_params)  # validates the parameters now
        super().__init__(**fedavg_kw)
        self.rule = rule
        self.rule_params = rule_params
        self.per_array = per_array
        self.weighted = weighted
        self.f = built.f
        self._rules = {self.f: built}
        # What calling a rule changes in it (its generator; centered clipping's last output with
        # reference="previous"), by reference: the strategy keeps one rule object per f it has
        # run with and one such state that every one of them takes before it runs.
        self._live = built._live_state()
        self.current_arrays: ArrayRecord | None = None
        # The messages of the round, to name each reply by the node it was sent to.
        self._sent_train: list[Message] = []
        self._sent_evaluate: list[Message] = []

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

    def state_dict(self) -> dict[str, Any]:
        """What the rounds so far changed in the strategy, to checkpoint a federation and
        resume it after a ServerApp restart: ``{"rule_state": ...}``, the rule's
        ``Rule.state_dict()`` (its generator's state; centered clipping's last aggregate with
        ``reference="previous"``). The global model is not in it: save the ArrayRecord, as for
        FedAvg. Picklable; a strategy built with the same arguments that loads it aggregates
        the next rounds as the uninterrupted one would."""
        probe = self._rule_for(self.f)
        probe._set_live_state(self._live)
        return {"rule_state": probe.state_dict()}  # copies

    def load_state_dict(self, state: Any) -> None:
        """Take a ``state_dict()`` of a strategy with the same rule and seed (checked: a refused
        state changes nothing)."""
        fn = "RobustStrategy.load_state_dict"
        check_state_keys(fn, state, ("rule_state",))
        probe = self._rule_for(self.f)
        probe._load_state(state["rule_state"], fn, "state['rule_state']")  # checks, copies
        self._live = probe._live_state()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's configure_train. Checks the global model first (a non-numeric array, or a
        centered_clipping reference of another size, would otherwise fail only after every
        client trained), then remembers it (the updates' origin) and the messages (to name the
        node behind each reply)."""
        layout = Layout.of(arrays, "RobustStrategy.configure_train")
        self._check_reference(layout)
        self.current_arrays = arrays
        self._sent_train = list(super().configure_train(server_round, arrays, config, grid))
        return self._sent_train

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's configure_evaluate; remembers the messages (to name the node behind each
        reply)."""
        self._sent_evaluate = list(super().configure_evaluate(server_round, arrays, config, grid))
        return self._sent_evaluate

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
        rows, out = self._screen(replies, layout)  # rows: (node, label, msg, views), by node id
        metrics = MetricRecord({"agg-replies": len(replies), "agg-nodes": [r[0] for r in rows]})
        metrics["agg-f-eff"] = max(self.f - _faulty(out), 0)
        if not rows:
            return self._skip(server_round, metrics, out, "no valid reply", replies)
        # The weighted mean is per coordinate: per array or not, it is one mean of the stack.
        blocks = self.per_array and not self.weighted
        p = len(rows)
        buf = layout.new_buffer(p)
        bases = layout.integer_bases(self.current_arrays)  # integer updates: from exact values
        for i, row in enumerate(rows):
            layout.fill_row(buf, p, i, row[3], blocks, bases)
        g = layout.flat_global(self.current_arrays)  # 0 for the integer arrays
        layout.subtract_global(buf, p, g, blocks)
        saved = self._save_state()
        while True:
            f_eff = max(self.f - _faulty(out), 0)
            metrics["agg-nodes"] = [r[0] for r in rows]
            metrics["agg-f-eff"] = f_eff
            if not rows:
                return self._skip(server_round, metrics, out, "no valid reply", replies)
            f_run, why = self._runnable_f(p, f_eff)
            if f_run is None:  # not even f = 0 runs on these rows
                return self._skip(server_round, metrics, out, why, replies)
            if f_run < f_eff:
                log(
                    WARNING,
                    "aggregate_train: round %d: f lowered from %d to %d, as far as rule '%s' "
                    "needs to run on the %d valid replies (%s)",
                    server_round,
                    f_eff,
                    f_run,
                    self.rule,
                    p,
                    why,
                )
            update, bad = self._aggregate(buf, p, layout, f_run, [r[2] for r in rows], metrics)
            if not (bad and blocks):
                break
            # Per array, a row whose update is not finite in some array (model - global
            # overflowed) leaves every array, as a reply with NaN values does, and the rule
            # reruns on the other rows from the state of before.
            self._restore_state(saved)
            keep = np.ones(p, bool)
            keep[bad] = False
            out += [(rows[i][0], rows[i][1], _OVERFLOW, True) for i in bad]
            rows = [r for r, k in zip(rows, keep) if k]
            p = layout.compact(buf, p, keep)
        metrics["agg-f-eff"] = max(f_run - len(bad), 0)  # the rule's own exclusions count too
        try:  # integer arrays: exact global + rounded update, refused out of range
            new = layout.apply(update, g, self.current_arrays)
        except ValueError as exc:
            self._restore_state(saved)
            return self._skip(server_round, metrics, out, str(exc), replies)
        arrays = ArrayRecord({k: Array(a) for k, a in zip(layout.keys, new)})
        excluded = out + [(rows[i][0], rows[i][1], _OVERFLOW, True) for i in bad]
        self._add_exclusions(metrics, excluded)
        metrics["agg-seconds"] = time.perf_counter() - t0
        dropped = set(bad)
        self._client_metrics(
            server_round, metrics, [(r[1], r[2]) for i, r in enumerate(rows) if i not in dropped]
        )
        log(
            INFO,
            "aggregate_train: round %d: rule '%s' (f = %d) aggregated %d of %d replies%s%s",
            server_round,
            self.rule,
            metrics["agg-f-eff"],
            p - len(bad),
            len(replies),
            _describe(excluded),
            _missing(self._sent_train, replies),
        )
        return arrays, metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """FedAvg's aggregate_evaluate over the replies fit for it (see the class doc): an
        error reply, a node replying more than once, or a MetricRecord that is missing, has no
        finite positive weight, a non-finite value or a key set other than most replies' is
        left out and named in the log; nothing a client sends stops the run."""
        replies = list(replies)
        rows, out = self._split(replies, self._sent_evaluate, lambda msg: (msg, ""))
        contents, dropped = self._screen_metrics([(label, msg) for _, label, msg, _ in rows], False)
        excluded = [(label, why) for _, label, why, _ in out] + dropped
        if not contents:
            log(
                WARNING,
                "aggregate_evaluate: round %d: no reply fit to aggregate (%d replies%s)",
                server_round,
                len(replies),
                _describe(excluded),
            )
            return None
        metrics = self._aggregate_metrics(
            self.evaluate_metrics_aggr_fn, contents, "aggregate_evaluate"
        )
        log(
            INFO,
            "aggregate_evaluate: round %d: metrics of %d of %d replies%s%s",
            server_round,
            len(contents),
            len(replies),
            _describe(excluded),
            _missing(self._sent_evaluate, replies),
        )
        return metrics

    # ------------------------------------------------------------------ pieces
    def _screen(self, replies: list[Any], layout: Layout) -> tuple[list[Any], list[Any]]:
        """Split training replies into rows (node, label, message, views), sorted by node id,
        and excluded (node, label, reason, faulty)."""
        return self._split(replies, self._sent_train, lambda msg: self._read(msg, layout))

    @staticmethod
    def _split(
        replies: list[Any], sent_msgs: list[Any], read: Callable[[Any], tuple[Any, str]]
    ) -> tuple[list[Any], list[Any]]:
        """Split replies (training or evaluation) into rows (node, label, message, what
        ``read`` made of it), sorted by node id, and excluded (node, label, reason, faulty):
        faulty is False for an error reply (an honest node can crash or go offline), True for
        a reply only a faulty node sends (unreadable, or refused by ``read``: (None, why))."""
        sent = _sent_map(sent_msgs)
        rows, out = [], []
        for j, msg in enumerate(replies):
            node, label = _origin(msg, j, sent)
            try:
                if msg.has_error():
                    why = f"error reply ({_first_line(msg.error.reason)})"
                    out.append((node, label, why, False))
                    continue
                got, why = read(msg)
            except Exception as exc:  # a reply that cannot even be inspected is just invalid
                got, why = None, f"unreadable reply ({type(exc).__name__}: {exc})"
            if why:
                out.append((node, label, why, True))
            else:
                rows.append((node, label, msg, got))
        # A node answers once per round: one that replied several times (a replay, or a node
        # trying to weigh more) would get a row per reply and could take over the aggregate.
        # Which reply is genuine cannot be told, so all of them are excluded and named; an
        # invalid reply counts among them. Error replies are not counted: they come from the
        # SuperLink as often as from the node.
        count = Counter(r[0] for r in rows)
        count.update(e[0] for e in out if e[3])
        dup = {node for node, c in count.items() if c > 1}
        if dup:
            out = [e for e in out if not (e[3] and e[0] in dup)]
            out += [(node, f"node {node}", _repeated(count[node]), True) for node in sorted(dup)]
            rows = [r for r in rows if r[0] not in dup]
        rows.sort(key=lambda r: r[0])
        return rows, out

    def _read(self, msg: Any, layout: Layout) -> tuple[list[Any] | None, str]:
        """(views, "") of a reply's model, or (None, why it is unusable)."""
        content = msg.content
        if self.arrayrecord_key in content.array_records:
            record = content.array_records[self.arrayrecord_key]
        elif len(content.array_records) == 1:
            record = next(iter(content.array_records.values()))
        else:
            n = len(content.array_records)
            return None, f"{n} ArrayRecords and none named {self.arrayrecord_key!r}"
        views, why = layout.views(record)
        if views is None:
            return None, why
        if not all_finite(views):
            return None, "non-finite values"
        if self.weighted and _weight(msg, self.weighted_by_key) is None:
            return None, f"no finite positive {self.weighted_by_key!r} to weight by"
        return views, ""

    def _rule_for(self, f: int) -> Any:
        if f not in self._rules:
            self._rules[f] = make_rule(
                self.rule, _fn="RobustStrategy", **{**self.rule_params, "f": f}
            )
        return self._rules[f]

    def _runnable_f(self, p: int, f_eff: int) -> tuple[int | None, str]:
        """The largest f <= f_eff whose precondition holds on p rows (None if not even f = 0),
        and why f_eff's fails ("" if it holds)."""
        why = ""
        for f in range(f_eff, -1, -1):
            try:
                _precondition(self._rule_for(f), p)
            except ValueError as exc:
                why = why or str(exc)
                continue
            return f, why
        return None, why

    def _save_state(self) -> tuple[dict[str, Any], Any]:
        gen = self._live["_gen"]
        return dict(self._live), (None if gen is None else gen.bit_generator.state)

    def _restore_state(self, saved: tuple[dict[str, Any], Any]) -> None:
        live, gen_state = saved
        self._live = dict(live)
        if gen_state is not None:  # the generator draws in place: rewind it
            live["_gen"].bit_generator.state = gen_state

    def _aggregate(
        self,
        buf: np.ndarray,
        p: int,
        layout: Layout,
        f: int,
        msgs: list[Any],
        metrics: MetricRecord,
    ) -> tuple[np.ndarray, list[int]]:
        """(update (n,), stack rows the rule excluded), the rule running with f."""
        if self.weighted:
            w = np.array([_weight(m, self.weighted_by_key) for m in msgs], dtype=np.float64)
            return _weighted_mean(layout.whole(buf, p), w)
        rule = self._rule_for(f)
        rule._set_live_state(self._live)  # one state whatever f this round runs with
        try:
            if not self.per_array:
                out, info = rule(layout.whole(buf, p), return_info=True)
                self._report(info, metrics)
                return np.ascontiguousarray(out, dtype=layout.dtype), _rows(info.excluded)
            update = np.empty(layout.n, dtype=layout.dtype)
            parts = [layout.block(buf, p, k) for k in range(len(layout.keys))]
            if self.rule == "flag" and not rule.pre:
                outs, infos = flag_aggregate_layers(parts, return_info=True, **rule.params)
            else:
                outs, infos = zip(*(rule(b, return_info=True) for b in parts))
            bad = np.zeros(p, bool)
            for k, (o, info) in enumerate(zip(outs, infos)):
                update[layout.offsets[k] : layout.offsets[k] + layout.sizes[k]] = o
                bad |= np.asarray(info.excluded, bool)
            return update, _rows(bad)
        finally:
            self._live = rule._live_state()

    def _check_reference(self, layout: Layout) -> None:
        ref = self.rule_params.get("reference") if self.rule == "centered_clipping" else None
        if isinstance(ref, str):  # "previous": the last aggregate, or a loaded state's
            prev = self._live.get("_previous")
            size = None if prev is None else int(np.prod(prev.shape))
            if size is not None and size != layout.n:
                raise ValueError(
                    f"RobustStrategy.configure_train: centered_clipping's previous aggregate "
                    f"(the last round's, or state['rule_state']['previous'] from "
                    f"load_state_dict) has {size} values, the flattened model has {layout.n}"
                )
            return
        if ref is None:
            return
        shape = tuple(int(s) for s in getattr(ref, "shape", np.shape(ref)))
        if shape not in ((layout.n,), (1, layout.n)):
            raise ValueError(
                f"RobustStrategy.configure_train: centered_clipping's reference must have the "
                f"flattened model's shape ({layout.n},), got {shape}"
            )

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
        metrics["agg-excluded-nodes"] = [int(e[0]) for e in excluded]
        metrics["agg-excluded"] = len(excluded)

    def _skip(
        self,
        server_round: int,
        metrics: MetricRecord,
        out: list[Any],
        why: str,
        replies: list[Any],
    ) -> tuple[None, MetricRecord]:
        self._add_exclusions(metrics, out)
        log(
            WARNING,
            "aggregate_train: round %d skipped, global model unchanged: %s (%d replies%s%s)",
            server_round,
            why,
            metrics["agg-replies"],
            _describe(out),
            _missing(self._sent_train, replies),
        )
        return None, metrics

    def _client_metrics(self, server_round: int, metrics: MetricRecord, items: list[Any]) -> None:
        """The client metrics of the included replies (label, message) into metrics."""
        contents, dropped = self._screen_metrics(items, True)
        if dropped:
            log(
                WARNING,
                "aggregate_train: round %d: client metrics%s",
                server_round,
                _describe(dropped, "; left out "),
            )
        if not contents:
            return
        client = self._aggregate_metrics(self.train_metrics_aggr_fn, contents, "aggregate_train")
        for k, v in (client or {}).items():
            if k not in metrics:
                metrics[k] = v

    def _screen_metrics(self, items: list[Any], reserved: bool) -> tuple[list[Any], list[Any]]:
        """The contents of the replies (label, message) fit for FedAvg's metric aggregation,
        and (label, why) of the others."""
        ok, dropped = [], []
        for label, msg in items:
            try:
                why, sig = _metric_check(msg.content, self.weighted_by_key, reserved)
            except Exception as exc:  # unreadable metrics: left out, never raised
                why, sig = f"unreadable metrics ({type(exc).__name__}: {exc})", ()
            if why:
                dropped.append((label, why))
            else:
                ok.append((label, msg.content, sig))
        if not ok:
            return [], dropped
        # The key set of most replies (one client must not decide which keys are reported);
        # ties go to the smallest sorted key tuple, so the choice is deterministic.
        count = Counter(sig for _, _, sig in ok)
        best = min(count, key=lambda s: (-count[s], s))
        for label, _, sig in ok:
            if sig != best:
                dropped.append(
                    (label, f"metrics {_keys(sig)} differ from most replies' {_keys(best)}")
                )
        return [c for _, c, sig in ok if sig == best], dropped

    def _aggregate_metrics(self, fn: Any, contents: list[Any], where: str) -> MetricRecord | None:
        try:
            if fn is aggregate_metricrecords:
                return _weighted_metrics(contents, self.weighted_by_key)
            return fn(contents, self.weighted_by_key)  # type: ignore[no-any-return]
        except Exception as exc:  # client-reported metrics must not stop the run
            log(
                WARNING,
                "%s: client metrics not aggregated: %s: %s",
                where,
                type(exc).__name__,
                exc,
            )
            return None


_OVERFLOW = "update not finite (model - global or its norm overflows)"


def _faulty(out: list[Any]) -> int:
    """Faulty nodes among the excluded replies (node, label, why, faulty): one per node."""
    return len({e[0] for e in out if e[3]})


def _repeated(times: int) -> str:
    return f"replied {times} times in this round (all its replies excluded)"


def _rule_parameters(rule: str) -> set[str]:
    """The keyword parameters rule's class takes (through its base classes), '_'-names left out."""
    cls = next(
        c
        for c in (getattr(_rules, name) for name in _rules.__all__)
        if isinstance(c, type) and issubclass(c, _rules.Rule) and c.name == rule
    )
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for prm in inspect.signature(init).parameters.values():
            if prm.kind in (prm.KEYWORD_ONLY, prm.POSITIONAL_OR_KEYWORD) and prm.name != "self":
                names.add(prm.name)
    return {n for n in names if not n.startswith("_")}


def _check_fedavg_args(kw: dict[str, Any], fn: str) -> None:
    """FedAvg's own arguments (it checks none: fraction_train=1.5 waited forever for nodes)."""
    for name, v in kw.items():
        if name.startswith("fraction_"):
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"{fn}: {name} must be a number in [0, 1], got {v!r}")
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"{fn}: {name} must be a number in [0, 1], got {v!r}")
        elif name.startswith("min_"):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{fn}: {name} must be an int >= 0, got {v!r}")
            if v < 0:
                raise ValueError(f"{fn}: {name} must be an int >= 0, got {v!r}")
        elif name.endswith("_key"):
            if not isinstance(v, str):
                raise TypeError(f"{fn}: {name} must be a str, got {v!r}")
        elif name.endswith("_aggr_fn") and v is not None and not callable(v):
            raise TypeError(
                f"{fn}: {name} must be a callable (list[RecordDict], str) -> MetricRecord or "
                f"None, got {v!r}"
            )


def _short(v: Any) -> str:
    shape = getattr(v, "shape", None)
    return repr(v) if shape is None else f"an array of shape {tuple(shape)}"


def _precondition(rule: Any, p: int) -> None:
    """Raise the ValueError the rule's call raises for p rows, before it reads them (the
    checks ``flagcore.rules.Rule.__call__`` makes: the pre-aggregation steps', then the rule's
    own on the rows it sees)."""
    rule._check(check_pre_rows(rule._fn, rule.pre, p, rule.f, rule.bucket_size))


def _sent_map(sent: list[Any]) -> dict[str, int]:
    """message id -> destination node of the round's messages. The grid sets the ids when it
    pushes the messages (the same objects configure_* returned); without them, empty."""
    out = {}
    for m in sent:
        try:
            if m.metadata.message_id:
                out[str(m.metadata.message_id)] = int(m.metadata.dst_node_id)
        except Exception:  # a message without metadata: nothing to map
            continue
    return out


def _origin(msg: Any, j: int, sent: dict[str, int]) -> tuple[int, str]:
    """(node id, label) of a reply: the node its message was sent to. The SuperLink answers for
    a node that is offline or whose reply expired, with its own id (1) as the source: without
    the message's destination such a reply is labelled by the message it answers."""
    try:
        to = str(msg.metadata.reply_to_message_id)
    except Exception:
        to = ""
    if to in sent:
        return sent[to], f"node {sent[to]}"
    try:
        node = int(msg.metadata.src_node_id)
    except Exception:  # e.g. a test double without metadata: its position names it
        return j, f"reply #{j}"
    if node == SUPERLINK_NODE_ID and to:
        return node, f"the SuperLink (for message {to!r})"
    return node, f"node {node}"


def _missing(sent: list[Any], replies: list[Any]) -> str:
    """ "; no reply from node ..." for the messages of the round nobody answered (known only
    when the grid set the message ids)."""
    answered = set()
    for msg in replies:
        try:
            answered.add(str(msg.metadata.reply_to_message_id))
        except Exception:
            continue
    nodes = sorted(n for mid, n in _sent_map(sent).items() if mid not in answered)
    return "; no reply from node " + ", ".join(str(n) for n in nodes) if nodes else ""


def _first_line(text: Any, limit: int = 160) -> str:
    """An error reason fit for one log line (a ClientApp exception arrives with its traceback)."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _number(v: Any) -> float | None:
    """v as a finite float if it is an int or float (not a bool), else None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        x = float(v)
    except OverflowError:  # an int beyond float range
        return None
    return x if math.isfinite(x) else None


def _weight(msg: Any, key: str) -> float | None:
    """The reply's finite positive scalar ``key`` from its one MetricRecord, else None."""
    recs = msg.content.metric_records
    if len(recs) != 1:
        return None
    v = _number(next(iter(recs.values())).get(key))
    return v if v is not None and v > 0 else None


def _metric_check(content: RecordDict, key: str, reserved: bool) -> tuple[str, tuple[Any, ...]]:
    """("", signature) of a reply's MetricRecord fit for FedAvg's weighted average, or (why,
    ()). The signature is the sorted (key, list length or -1) pairs: replies are averaged
    together only if they agree on it."""
    recs = content.metric_records
    if len(recs) != 1:
        return f"{len(recs)} MetricRecords, expected 1", ()
    rec = next(iter(recs.values()))
    w = _number(rec.get(key))
    if w is None or w <= 0:
        return f"no finite positive {key!r}", ()
    sig = []
    for k, v in rec.items():
        if reserved and str(k).startswith(_RESERVED):
            return f"metric {k!r}: names starting with {' or '.join(_RESERVED)} are reserved", ()
        if key != k and any(_number(x) is None for x in (v if isinstance(v, list) else [v])):
            return f"metric {k!r} is not a finite number", ()
        sig.append((str(k), len(v) if isinstance(v, list) else -1))
    return "", tuple(sorted(sig))


def _keys(sig: tuple[Any, ...]) -> str:
    return "[" + ", ".join(k if n < 0 else f"{k}[{n}]" for k, n in sig) + "]"


def _weighted_metrics(contents: list[Any], key: str) -> MetricRecord:
    """Flower's ``aggregate_metricrecords`` (the same sums in the same order), with weights
    whose sum overflows scaled by the largest first (the average was silently 0)."""
    recs = [next(iter(c.metric_records.values())) for c in contents]
    w = [float(r[key]) for r in recs]
    if not math.isfinite(sum(w)):
        top = max(w)
        w = [x / top for x in w]
    total = sum(w)
    acc: dict[str, Any] = {}
    for rec, c in zip(recs, [x / total for x in w]):
        for k, v in rec.items():
            if k == key:
                continue
            if isinstance(v, list):
                acc[k] = (
                    [x * c for x in v] if k not in acc else [a + x * c for a, x in zip(acc[k], v)]
                )
            else:
                acc[k] = v * c if k not in acc else acc[k] + v * c
    return MetricRecord(acc)


def _weighted_mean(stack: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, list[int]]:
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
    return c @ stack, [int(i) for i in np.flatnonzero(~good)]


def _rows(excluded: Any) -> list[int]:
    return [int(i) for i in np.flatnonzero(np.asarray(excluded, bool))]


def _describe(excluded: list[Any], head: str = "; excluded ") -> str:
    """The log's list of left-out replies: entries (label, why) or (node, label, why, ...)."""
    if not excluded:
        return ""
    pairs = [(e[1], e[2]) if len(e) == 4 else (e[0], e[1]) for e in excluded]
    return head + ", ".join(f"{label} ({why})" for label, why in pairs)

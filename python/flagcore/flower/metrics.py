"""Client metrics aggregated without trusting the clients' weights.

Flower's default (``aggregate_metricrecords``, FedAvg's) averages the replies' metrics weighted
by the ``num-examples`` each client reports about itself: one Byzantine client that claims 1e9
examples then sets the round's reported accuracy or loss. ``median_metrics`` takes the
coordinate-wise median over the replies instead, unweighted (the weighting key is read only to
leave it out), so fewer than half of the clients cannot move a reported value beyond the range
of the honest ones. Use it as ``evaluate_metrics_aggr_fn`` / ``train_metrics_aggr_fn`` of
``RobustStrategy`` (which screens replies first: missing or non-finite metrics, key sets other
than most replies') or of any Flower strategy that takes such a function.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import MetricRecord, RecordDict


def median_metrics(records: list[RecordDict], weighting_metric_name: str) -> MetricRecord:
    """The median over the replies of each metric (elementwise for list-valued ones), the
    weighting key left out; the signature of Flower's ``aggregate_metricrecords``. Every reply
    must carry one MetricRecord with the same keys, finite values and list lengths (ValueError
    naming the reply and the key otherwise; RobustStrategy screens them out before)."""
    fn = "median_metrics"
    if not isinstance(records, list) or not records:
        raise ValueError(
            f"{fn}: records must be a non-empty list of RecordDicts, got {records!r:.80}"
        )
    rows: list[dict[str, Any]] = []
    for j, rec in enumerate(records):
        mrs = list(getattr(rec, "metric_records", {}).values())
        if len(mrs) != 1:
            raise ValueError(f"{fn}: records[{j}] must hold one MetricRecord, got {len(mrs)}")
        rows.append({k: v for k, v in mrs[0].items() if k != weighting_metric_name})
    keys = sorted(rows[0])
    out = MetricRecord()
    for j, row in enumerate(rows):
        if sorted(row) != keys:
            raise ValueError(
                f"{fn}: records[{j}] has the metrics {sorted(row)}, records[0] has {keys}"
            )
    for k in keys:
        vals = [row[k] for row in rows]
        shape = [len(v) if isinstance(v, list) else None for v in vals]
        if len(set(shape)) != 1:
            raise ValueError(f"{fn}: metric {k!r} has different shapes across the replies")
        a = np.asarray(vals, dtype=np.float64)
        if not np.isfinite(a).all():
            j = int(np.argwhere(~np.isfinite(a.reshape(len(vals), -1)).any(axis=1))[0, 0])
            raise ValueError(f"{fn}: records[{j}] has a non-finite value of metric {k!r}")
        med = np.median(a, axis=0)
        out[k] = [float(v) for v in med] if shape[0] is not None else float(med)
    return out

"""Real flwr Messages for the Flower tests (test_flower.py, test_flower_hostile.py): metadata,
train replies, error replies, the reference update stack. Import it after
``pytest.importorskip("flwr")``."""

from __future__ import annotations

import uuid

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

from flagcore.flower import RobustStrategy

TRAIN, EVALUATE = MessageType.TRAIN, MessageType.EVALUATE


def _md(
    node: int, mtype: str = TRAIN, src: int | None = None, dst: int = 0, reply_to: str = ""
) -> Metadata:
    return Metadata(
        run_id=1,
        message_id="",
        src_node_id=node if src is None else src,
        dst_node_id=dst,
        reply_to_message_id=reply_to,
        group_id="",
        created_at=0.0,
        ttl=600.0,
        message_type=mtype,
    )


def _record(arrays: dict) -> ArrayRecord:
    return ArrayRecord(
        {k: (v if isinstance(v, Array) else Array(np.asarray(v))) for k, v in arrays.items()}
    )


def reply(
    node: int, arrays: dict, num_examples: float = 10, reply_to: str = "", **metrics
) -> Message:
    content = RecordDict(
        {
            "arrays": _record(arrays),
            "metrics": MetricRecord({"num-examples": num_examples, **metrics}),
        }
    )
    return Message(content, metadata=_md(node, reply_to=reply_to))


def error_reply(node: int, reason: str = "client crashed") -> Message:
    return Message(Error(code=0, reason=reason), metadata=_md(node))


def stack_of(g: dict, replies: list) -> tuple[np.ndarray, np.ndarray]:
    """The reference (p, n) update stack (rows in ascending node id, arrays in the global
    order) and the flat global model."""
    rows = sorted(replies, key=lambda m: m.metadata.src_node_id)
    gflat = np.concatenate([v.ravel() for v in g.values()]).astype(np.float32)
    st = np.stack(
        [np.concatenate([m.content["arrays"][k].numpy().ravel() for k in g]) for m in rows]
    )
    return st.astype(np.float32) - gflat, gflat


def strategy_with(rule: str, g: dict, **kw) -> RobustStrategy:
    s = RobustStrategy(rule, **kw)
    s.current_arrays = _record(g)
    return s


def flat(arrays: ArrayRecord, keys) -> np.ndarray:
    return np.concatenate([arrays[k].numpy().ravel() for k in keys])


class FakeGrid:
    """Enough of flwr's Grid for Strategy.start. Like Flower's grids it sets each message's id
    when it pushes it, on the message object itself, and replies carry reply_to_message_id.
    clients: node id -> fn(message) -> RecordDict | Error | None (None: the node never answers)."""

    def __init__(self, clients: dict):
        self.clients = clients

    def get_node_ids(self):
        return list(self.clients)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # as InMemoryGrid.push_messages
            node = m.metadata.dst_node_id
            res = self.clients[node](m)
            if res is None:
                continue
            md = _md(node, m.metadata.message_type, reply_to=m.metadata.message_id)
            out.append(Message(res, metadata=md))
        return out

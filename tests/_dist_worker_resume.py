"""One rank of the checkpoint/resume tests in test_rules_state.py (run as a script, one process
per rank): ``python _dist_worker_resume.py SCENARIO OUT_DIR``. Writes OUT_DIR/rank<r>.json and
exits with os._exit so that no teardown can hang.

Scenarios: "hook" (the robust DDP hook), "hook_gram" (the hook with the geometric median, which
weights rows by the Gram) and "ps" (the parameter server, with a drawing attack on the last
rank). Each trains the same model three times from the same start, with a rule
that draws (the median after bucketing): six steps straight; three steps, a checkpoint (model,
optimizer and the hook's / server's state_dict through torch.save), then a freshly built
model, optimizer and hook / server that load it and take three more; and the same without
loading the hook's / server's state. The rank reports the parameter digests after the six
steps of each run.
"""

from __future__ import annotations

import io
import sys
import traceback
from typing import Any

import torch

from _dist_launch import exit_with, init_rank
from flagcore.distributed import ParameterServer, parameter_digest, register_robust_hook

STEPS, SPLIT = 6, 3
# 4 rows in buckets of 3 and 1: which row is alone matters (buckets of 2 would give the
# mean of the bucket means, the same for any draw). reference="previous" is refused there.
RULE = dict(rule="median", pre="bucketing", bucket_size=3, seed=5)
GRAM_RULE = dict(rule="geometric_median", pre="bucketing", bucket_size=3, seed=5)


def new_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(16, 6, generator=g), torch.randn(16, 1, generator=g)


def flat(model: torch.nn.Module) -> list[float]:
    return torch.cat([q.detach().reshape(-1) for q in model.parameters()]).double().tolist()


class Run:
    """A model, its optimizer and the robust aggregation of one scenario (built fresh)."""

    def __init__(self, scenario: str, rank: int, world: int) -> None:
        self.model = new_model()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.scenario, self.rank = scenario, rank
        # the hook's attack draws in DDP's bucket layout, which DDP rebuilds after a fresh
        # model's first step: the hook resumes bit for bit without an attack only
        byz = {}
        if rank == world - 1 and scenario == "ps":
            byz = dict(attack="gaussian", attack_params={"sigma": 3.0})
        if scenario.startswith("hook"):
            rule = GRAM_RULE if scenario == "hook_gram" else RULE
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model)
            self.agg: Any = register_robust_hook(self.ddp, **rule, **byz, timeout=60.0)
        else:
            self.ddp = self.model
            self.agg = ParameterServer(self.model, self.opt, **RULE, **byz, timeout=60.0)

    def step(self, step: int) -> None:
        x, y = batch(self.rank, step)
        self.opt.zero_grad()
        torch.nn.functional.mse_loss(self.ddp(x), y).backward()
        if self.scenario.startswith("hook"):
            self.opt.step()
        else:
            self.agg.step()

    def checkpoint(self) -> bytes:
        buf = io.BytesIO()
        torch.save(
            {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
             "agg": self.agg.state_dict()},
            buf,
        )  # fmt: skip
        return buf.getvalue()

    def restore(self, blob: bytes, with_agg: bool) -> None:
        ck = torch.load(io.BytesIO(blob), weights_only=False)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        if with_agg:
            self.agg.load_state_dict(ck["agg"])


def main() -> None:
    scenario, out_dir = sys.argv[1], sys.argv[2]
    rank, world = init_rank(120)
    out: dict[str, Any] = {"rank": rank}
    try:
        straight = Run(scenario, rank, world)
        for t in range(STEPS):
            straight.step(t)
        out["straight"] = parameter_digest(straight.model)
        out["straight_values"] = flat(straight.model)
        first = Run(scenario, rank, world)
        for t in range(SPLIT):
            first.step(t)
        blob = first.checkpoint()
        out["state_keys"] = sorted(first.agg.state_dict())
        for with_agg in (True, False):
            resumed = Run(scenario, rank, world)
            resumed.restore(blob, with_agg)
            for t in range(SPLIT, STEPS):
                resumed.step(t)
            key = "resumed" if with_agg else "resumed_without_state"
            out[key] = parameter_digest(resumed.model)
            out[key + "_values"] = flat(resumed.model)
        try:  # loading after a step is refused and changes nothing
            resumed.agg.load_state_dict(first.agg.state_dict())
            out["late_load"] = "accepted"
        except RuntimeError as exc:
            out["late_load"] = str(exc)
    except Exception as exc:
        out["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    exit_with(out_dir, rank, out)


if __name__ == "__main__":
    main()

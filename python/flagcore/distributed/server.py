"""A synchronous parameter server over torch.distributed (the Flag Aggregator paper's setting).

One rank (the server, rank 0 by default) gathers the flattened gradients of the worker ranks,
aggregates them with a flagcore rule over the whole model (one (p, n) stack per step, n = all
parameters), and sends back either the aggregate (``mode="gradients"``: every rank then takes
the same optimizer step) or the updated parameters (``mode="parameters"``: only the server
keeps an optimizer). Every rank calls the same methods in the same order::

    ps = ParameterServer(model, optimizer, rule="flag")
    for x, y in batches:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        ps.step()          # gather -> aggregate on the server -> broadcast -> optimizer step
"""
from __future__ import annotations

from typing import Any

from ._common import (ArrivalBarrier, CommStats, byzantine_contribution, check_rank, check_timeout,
                      default_store, derive_seed, group_ranks, record_nonfinite,
                      rule_params_with_defaults, timed, torch_dist, validate_attack, validate_rule)
from .._arrays import check_choice

MODES = ("gradients", "parameters")


class ParameterServer:
    """Synchronous parameter server (see the module docstring for the loop).

    Parameters
    ----------
    params : a torch.nn.Module or an iterable of parameters (those with requires_grad are
        used); all of one dtype and device. Every rank must hold the same shapes in the same
        order, and the same initial values (e.g. seed the model, or ``broadcast_parameters()``).
    optimizer : the torch optimizer over ``params``; needed by ``step`` (in mode "parameters"
        only on the server). None when only ``aggregate`` / ``aggregate_gradients`` are used.
    rule, **rule_params : the flagcore rule; ``rule="flag"`` defaults to scale="median_norm".
    server_rank : global rank of the server.
    include_server : the server also trains and sends its gradient (default). False is the
        paper's setting: the server only aggregates; its own row is dropped (it may skip the
        backward pass: ``ps.is_worker`` is False there).
    mode : "gradients" (broadcast the aggregate; each rank steps its own optimizer, identical
        on every rank because every rank gets the same aggregate) or "parameters" (the server
        steps, then broadcasts the parameters).
    attack, attack_params, seed : make THIS rank Byzantine (experiments): it sends
        ``flagcore.attacks.attack(attack, own[None], 1, seed=s, **attack_params)`` instead of its
        flattened gradient, s derived from (seed, rank, step); its own gradient is the only
        "honest" input the attack sees.
    timeout : seconds a rank waits for the others before each collective, then
        RankFailureError naming the ranks that did not arrive; None disables the check (the
        process group's own timeout still applies).
    process_group, store : the group (default: the default group) and the c10d store for the
        liveness check (default: the default group's store). Every rank must create its
        parameter servers and hooks in the same order (the store keys are numbered by it).
    """

    def __init__(self, params: Any, optimizer: Any = None, *, rule: str = "flag", server_rank: int = 0,
                 include_server: bool = True, mode: str = "gradients", attack: str | None = None,
                 attack_params: dict | None = None, seed: int = 0, timeout: float | None = 300.0,
                 process_group: Any = None, store: Any = None, **rule_params: Any) -> None:
        fn = "ParameterServer"
        dist = torch_dist()
        import torch

        if not dist.is_initialized():
            raise ValueError(f"{fn}: torch.distributed is not initialised (call init_process_group first)")
        if isinstance(params, torch.nn.Module):
            params = params.parameters()
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError(f"{fn}: params holds no parameter that requires grad")
        dtypes = {p.dtype for p in self.params}
        devices = {p.device for p in self.params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(f"{fn}: params must share one dtype and device, got dtypes {sorted(map(str, dtypes))} "
                             f"and devices {sorted(map(str, devices))}")
        self.optimizer = optimizer
        self.mode = check_choice(mode, fn, "mode", MODES)
        if not isinstance(include_server, bool):
            raise TypeError(f"{fn}: include_server must be a bool, got {include_server!r}")
        self.timeout = check_timeout(fn, timeout)
        self.group = process_group
        self.ranks = group_ranks(dist, process_group)
        self.rank = dist.get_rank()
        self.server_rank = check_rank(fn, "server_rank", server_rank, self.ranks)
        self.include_server = include_server
        self.workers = tuple(r for r in self.ranks if include_server or r != self.server_rank)
        if not self.workers:
            raise ValueError(f"{fn}: no worker rank left (a group of one with include_server=False)")
        self.rule = rule
        self.rule_params = rule_params_with_defaults(rule, rule_params)
        validate_rule(fn, rule, self.rule_params, len(self.workers))
        self.attack = attack
        self.attack_params = dict(attack_params or {})
        validate_attack(fn, attack, self.attack_params)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"{fn}: seed must be an int, got {seed!r}")
        self.seed = seed
        self.numel = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self.stats = CommStats()
        self.steps = 0
        self.barrier = None
        if self.timeout is not None:
            self.barrier = ArrivalBarrier(store if store is not None else default_store(dist), "ps",
                                          self.rank, self.ranks, self.timeout)

    @property
    def is_server(self) -> bool:
        return self.rank == self.server_rank

    @property
    def is_worker(self) -> bool:
        return self.rank in self.workers

    # -- collectives -------------------------------------------------------------------------

    def _collective(self, where: str, op: Any) -> None:
        if self.barrier is not None:
            timed(self.stats, "barrier_s", lambda: self.barrier.arrive(where))

        def run() -> None:
            try:
                op()
            except RuntimeError as exc:
                if self.barrier is None:
                    raise
                raise self.barrier.after_failure(where, exc) from exc

        timed(self.stats, "comm_s", run)

    def aggregate(self, flat_gradient: Any = None) -> Any:
        """Collective (every rank of the group calls it): gather each worker's flat gradient
        (n,) on the server, aggregate the (workers, n) stack there with the rule (rows in the
        order of ``workers``), broadcast the result; returns it (n,) on every rank. A
        non-worker server may pass None. A Byzantine rank's attack is applied here."""
        dist = torch_dist()
        result = self._gather_aggregate(flat_gradient)
        self._collective(f"parameter server step {self.steps - 1} (broadcast)",
                         lambda: dist.broadcast(result, src=self.server_rank, group=self.group))
        return result

    def _gather_aggregate(self, flat_gradient: Any) -> Any:
        """Gather on the server and aggregate there; returns a (n,) tensor that holds the
        aggregate on the server (and is uninitialised elsewhere)."""
        import torch

        dist = torch_dist()
        fn = "ParameterServer.aggregate"
        step = self.steps
        self.steps += 1
        if flat_gradient is None:
            if self.is_worker:
                raise ValueError(f"{fn}: rank {self.rank} is a worker and must pass its gradient")
            flat_gradient = torch.zeros(self.numel, dtype=self.dtype, device=self.device)
        if not isinstance(flat_gradient, torch.Tensor):
            raise TypeError(f"{fn}: flat_gradient must be a torch tensor, got {type(flat_gradient).__name__}")
        own = flat_gradient.detach().reshape(-1)
        if own.numel() != self.numel:
            raise ValueError(f"{fn}: flat_gradient must have {self.numel} elements, got {own.numel()}")
        own = own.to(dtype=self.dtype, device=self.device)
        if self.attack is not None and self.is_worker:
            own = byzantine_contribution(self.attack, self.attack_params, own,
                                         derive_seed(self.seed, self.rank, step))
        own = own.contiguous()
        p = len(self.ranks)
        st = self.stats
        st.calls += 1
        st.elements += self.numel
        stack = gather_list = None
        if self.is_server:
            stack = torch.empty((p, self.numel), dtype=self.dtype, device=self.device)
            gather_list = list(stack.unbind(0))
        self._collective(f"parameter server step {step} (gather)",
                         lambda: dist.gather(own, gather_list, dst=self.server_rank, group=self.group))
        result = torch.empty(self.numel, dtype=self.dtype, device=self.device)
        if self.is_server:
            rows = [self.ranks.index(r) for r in self.workers]
            workers_stack = stack if len(rows) == p else stack[rows]

            def agg() -> None:
                from .. import aggregate

                record_nonfinite(st, workers_stack, self.workers)
                result.copy_(aggregate(workers_stack, self.rule, **self.rule_params))

            timed(st, "aggregate_s", agg)
        return result

    def flat_gradient(self) -> Any:
        """This rank's gradients as one (n,) tensor (zeros for parameters without .grad)."""
        import torch

        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in self.params])

    def _write(self, flat: Any, attr: str) -> None:
        import torch

        off = 0
        with torch.no_grad():
            for p in self.params:
                chunk = flat[off:off + p.numel()].view_as(p)
                off += p.numel()
                if attr == "grad":
                    if p.grad is None:
                        p.grad = chunk.clone()
                    else:
                        p.grad.copy_(chunk)
                else:
                    p.copy_(chunk)

    def aggregate_gradients(self) -> Any:
        """Collective: replace every rank's ``.grad`` by the aggregate of the workers'
        gradients; returns the flat aggregate. For loops that step the optimizer themselves."""
        agg = self.aggregate(self.flat_gradient() if self.is_worker else None)
        self._write(agg, "grad")
        return agg

    def step(self) -> None:
        """Collective: one synchronous parameter-server step after ``backward()``.

        mode "gradients": aggregate, write it to ``.grad``, ``optimizer.step()`` on every rank.
        mode "parameters": gather and aggregate on the server, ``optimizer.step()`` there, then
        broadcast the parameters to every rank.
        """
        import torch

        dist = torch_dist()
        if self.optimizer is None and (self.mode == "gradients" or self.is_server):
            raise ValueError("ParameterServer.step: no optimizer was given (pass one, or call aggregate_gradients)")
        if self.mode == "gradients":
            self.aggregate_gradients()
            self.optimizer.step()
            return
        # mode "parameters": the server steps with the aggregate, then sends the weights
        agg = self._gather_aggregate(self.flat_gradient() if self.is_worker else None)
        if self.is_server:
            self._write(agg, "grad")
            self.optimizer.step()
        flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self._collective(f"parameter server step {self.steps - 1} (parameters)",
                         lambda: dist.broadcast(flat, src=self.server_rank, group=self.group))
        if not self.is_server:
            self._write(flat, "param")

    def broadcast_parameters(self) -> None:
        """Collective: copy the server's parameters to every rank (for a common start)."""
        import torch

        dist = torch_dist()
        flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self._collective("parameter server (initial parameters)",
                         lambda: dist.broadcast(flat, src=self.server_rank, group=self.group))
        if not self.is_server:
            self._write(flat, "param")

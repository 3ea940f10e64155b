"""Train a small classifier with torch.distributed while one rank is Byzantine, aggregating
the gradients robustly with flagcore.

    torchrun --standalone --nproc_per_node=4 examples/train_ddp_byzantine.py \
        --rule flag --attack random

Every rank draws its own mini-batches of one synthetic 4-class problem (Gaussian clusters in
20 dimensions) and trains the same MLP. The ranks listed in --byzantine send an attack instead
of their gradients. --mode ddp uses DistributedDataParallel with flagcore's communication hook
(whole-model aggregation with per-bucket overlap; --block-wise aggregates each bucket on its
own); --mode ps uses flagcore's synchronous parameter server (rank 0
aggregates the whole flattened gradient). Compare --rule mean (breaks) with --rule median or
--rule flag (trains). CPU processes use gloo; with one GPU per process, NCCL.

--checkpoint DIR saves each rank's model, optimizer, data stream and robust aggregation state
(``state_dict()`` of the hook or the parameter server) to DIR/rank<r>.pt every
--checkpoint-every steps and at the end (written to a temporary file, then renamed), and a
start that finds them resumes from there. With torchrun's restarts a rank that fails (a
RankFailureError ends every process) is restarted with the others and they go on from the last
checkpoint:

    torchrun --standalone --nproc_per_node=4 --max-restarts=3 \
        examples/train_ddp_byzantine.py --mode ps --checkpoint ckpt --checkpoint-every 50

The parameter server resumes bit for bit; the DDP hook does for coordinate-wise rules
without a drawing attack (see docs/distributed.md, "Checkpoint and resume").
"""

from __future__ import annotations

import argparse
import datetime
import os
import time

import torch
import torch.distributed as dist

from flagcore.distributed import (
    ParameterServer,
    assert_replicas_identical,
    register_robust_hook,
    shutdown,
)

FEATURES, CLASSES = 20, 4


def parse_value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def key_values(items: list) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = parse_value(v)
    return out


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rule", default="flag", help="flagcore rule (mean, median, flag, ...)")
    ap.add_argument(
        "--rule-param",
        action="append",
        default=[],
        metavar="K=V",
        help="rule parameter, repeatable",
    )
    ap.add_argument("--attack", default="random", help="attack of the Byzantine ranks, or 'none'")
    ap.add_argument("--attack-param", action="append", default=[], metavar="K=V")
    ap.add_argument(
        "--byzantine", default="last", help="comma-separated ranks, 'last' (default) or 'none'"
    )
    ap.add_argument("--mode", choices=("ddp", "ps"), default="ddp")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument(
        "--timeout", type=float, default=60.0, help="seconds before missing ranks are reported"
    )
    ap.add_argument("--bucket-cap-mb", type=float, default=None, help="DDP bucket size in MiB")
    ap.add_argument(
        "--block-wise", action="store_true", help="aggregate each DDP bucket on its own"
    )
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--checkpoint", default=None, metavar="DIR", help="save to / resume from DIR/rank<r>.pt"
    )
    ap.add_argument("--checkpoint-every", type=int, default=50, metavar="K")
    return ap


def checkpoint_path(directory: str, rank: int) -> str:
    """DIR/rank<r>.pt, the directory created and checked writable before any training."""
    os.makedirs(directory, exist_ok=True)
    if not os.access(directory, os.W_OK):
        raise SystemExit(f"--checkpoint {directory!r}: the directory is not writable")
    return os.path.join(directory, f"rank{rank}.pt")


def save(path: str, step: int, model, opt, agg, gen: torch.Generator) -> None:
    tmp = f"{path}.tmp"
    torch.save(
        {
            "step": step,
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "agg": agg.state_dict(),
            "data": gen.get_state(),
        },
        tmp,
    )
    os.replace(tmp, path)  # a crash while writing keeps the previous checkpoint


def agree(value: int, device: torch.device) -> tuple[int, int]:
    """(min, max) of an int over the ranks."""
    lo = torch.tensor([value], device=device)
    hi = lo.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return int(lo.item()), int(hi.item())


def batch(gen: torch.Generator, centers: torch.Tensor, n: int, device: torch.device) -> tuple:
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    x = centers[y] + torch.randn(n, FEATURES, generator=gen)
    return x.to(device), y.to(device)


def main() -> None:
    args = make_parser().parse_args()
    use_cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # several processes share the CPU cores
    dist.init_process_group(
        "nccl" if use_cuda else "gloo",
        timeout=datetime.timedelta(seconds=max(300.0, 2 * args.timeout)),
    )
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.byzantine == "none" or args.attack == "none":
        byzantine: set = set()
    elif args.byzantine == "last":
        byzantine = {world - 1}
    else:
        byzantine = {int(r) for r in args.byzantine.split(",")}
    attack = args.attack if rank in byzantine else None
    attack_params = key_values(args.attack_param) if attack else None
    rule_params = key_values(args.rule_param)

    centers = 0.6 * torch.randn(
        CLASSES, FEATURES, generator=torch.Generator().manual_seed(args.seed)
    )
    test_x, test_y = batch(torch.Generator().manual_seed(args.seed + 1), centers, 2000, device)
    torch.manual_seed(args.seed)  # the same initial model on every rank
    model = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 64), torch.nn.ReLU(), torch.nn.Linear(64, CLASSES)
    ).to(device)
    gen = torch.Generator().manual_seed(args.seed + 100 + rank)  # each rank its own data stream

    if args.mode == "ddp":
        kw = {} if args.bucket_cap_mb is None else {"bucket_cap_mb": args.bucket_cap_mb}
        net = torch.nn.parallel.DistributedDataParallel(model, **kw)
        state = register_robust_hook(
            net,
            args.rule,
            attack,
            attack_params=attack_params,
            whole_model=not args.block_wise,
            seed=args.seed,
            timeout=args.timeout,
            **rule_params,
        )
        opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
        stats = state.stats
    else:
        net = model
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
        ps = ParameterServer(
            model,
            opt,
            rule=args.rule,
            attack=attack,
            attack_params=attack_params,
            seed=args.seed,
            timeout=args.timeout,
            **rule_params,
        )
        stats = ps.stats

    agg = state if args.mode == "ddp" else ps
    path = checkpoint_path(args.checkpoint, rank) if args.checkpoint else None
    first = 1
    if path is not None:
        ck = torch.load(path, map_location=device) if os.path.exists(path) else None
        lo, hi = agree(ck["step"] if ck else 0, device)
        if lo != hi:
            raise SystemExit(
                f"rank {rank}: the ranks' checkpoints in {args.checkpoint!r} are of steps "
                f"{lo} to {hi}; every rank must resume from the same step"
            )
        if ck is not None:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            agg.load_state_dict(ck["agg"])
            gen.set_state(ck["data"])
            first = ck["step"] + 1
            if rank == 0:
                print(f"resumed from {args.checkpoint}/rank*.pt at step {ck['step']}", flush=True)
    if rank == 0:
        shown = args.rule + (f" {rule_params}" if rule_params else "")
        print(
            f"{world} ranks, mode {args.mode}, rule {shown}, "
            f"Byzantine ranks {sorted(byzantine) or 'none'} ({args.attack})",
            flush=True,
        )
    t0 = time.perf_counter()
    for step in range(first, args.steps + 1):
        x, y = batch(gen, centers, args.batch, device)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        if args.mode == "ddp":
            opt.step()
        else:
            ps.step()
        if rank == 0 and (step % args.log_every == 0 or step == args.steps):
            with torch.no_grad():
                logits = model(test_x)
                acc = (logits.argmax(1) == test_y).float().mean().item()
                test_loss = torch.nn.functional.cross_entropy(logits, test_y).item()
            print(
                f"step {step:5d}  train loss {loss.item():9.4f}  test loss {test_loss:9.4f}  "
                f"test accuracy {acc:6.3f}",
                flush=True,
            )
        if path is not None and (step % args.checkpoint_every == 0 or step == args.steps):
            save(path, step, model, opt, agg, gen)
    wall = time.perf_counter() - t0
    digest = assert_replicas_identical(model)
    if rank == 0:
        print(f"replicas bitwise identical on all {world} ranks (sha256 {digest[:16]}...)")
        print(
            f"{wall:.2f} s for {args.steps} steps; on rank 0: liveness checks "
            f"{stats.barrier_s:.3f} s, "
            f"communication {stats.comm_s:.3f} s, aggregation {stats.aggregate_s:.3f} s; ranks "
            "that "
            f"sent NaN/Inf: {stats.nonfinite_calls or 'none'}; malformed contributions rejected: "
            f"{stats.rejected_calls or 'none'}",
            flush=True,
        )
    shutdown()


if __name__ == "__main__":
    main()

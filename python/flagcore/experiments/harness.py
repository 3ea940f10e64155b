"""A synchronous parameter server with p simulated workers in one process.

Every step, each worker draws a mini-batch from its own shard (iid, Dirichlet or
gamma-similarity split: ``RobustnessConfig.heterogeneity``) and computes its gradient (all p
at once with torch.func.vmap, flattened to a (p, n) stack); the f Byzantine workers either
replace theirs with an attack from ``flagcore.attacks`` or train honestly on a distorted shard
(label flipping, warps, noise, shuffled labels); the server aggregates the stack with one rule
(built once per run with ``flagcore.rules.make_rule`` and reused every step) and steps SGD with
momentum and weight decay (the FA paper's optimiser). Each (rule, seed) run starts from the same
initial model and draws the same mini-batches and attack seeds; the run's seed also seeds the
rule's own draws (bucketing, dnc, signguard) unless the rule spec gives a seed.

Byzantine workers are the last f (indices p - f .. p - 1); results say so. Adaptive attacks
(``flagcore.attacks.ADAPTIVE_ATTACKS``) target the rule under test: the attacker gets its own
copy of the configured rule (built once per run), so its probing never touches the server's
rule state.
"""

from __future__ import annotations

import copy
import math
import platform
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import attacks as _attacks
from .. import rules as _rules
from .._arrays import check_choice, check_float, check_int
from ..flag import SCALES
from ..rules import make_rule
from . import data as _data
from . import models as _models

SCHEMA = "flagcore.robustness/1"

# Rules whose definition needs the number of Byzantine workers f (docs/spec_fa.md); the harness
# passes f = byzantine to them. Any rule parameter can also be given in the rule spec,
# e.g. "multi_krum[f=2,m=10]".
# Rules that get f = the number of Byzantine workers: every rule whose constructor requires it.
RULES_TAKING_F = _rules.RULES_NEEDING_F

FLAG_HISTORY = ("all", "first_seed", "none")

# The largest first seed + seeds - 1: every run seeds torch generators with seed * 1_000_003 +
# 17 (and smaller), which torch takes as a signed 64-bit integer.
SEED_MAX = (2**63 - 1 - 17) // 1_000_003
# lr and weight_decay at most this: torch's SGD turns them into float32 (larger ones overflow).
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Built-in data sets of images (the cnn model needs (channels, height, width) inputs).
IMAGE_DATASETS = ("digits",)
# How validate(options=True) names a field: the option of `flagcore robustness` that sets it.
OPTION_OF = {"attack_params": "--attack-param"}

_SPEC_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\[(.*)\])?$")


def available_rules() -> tuple[Any, ...]:
    """The rule names ``flagcore.aggregate`` accepts (flagcore.rules.RULES) that the harness can
    run: rules that need a server reference gradient (fltrust) are left out."""
    return tuple(r for r in _rules.RULES if r not in _rules.RULES_NEEDING_REFERENCE)


def gradient_attacks() -> tuple[Any, ...]:
    return tuple(_attacks.ALL_ATTACKS)


def all_attacks() -> tuple[Any, ...]:
    return ("none",) + gradient_attacks() + _data.DATA_ATTACKS


@dataclass
class RuleSpec:
    """One aggregation rule to compare: its name, extra parameters and a display label."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            if self.params:
                self.label = (
                    self.name + "[" + ",".join(f"{k}={v}" for k, v in self.params.items()) + "]"
                )
            else:
                self.label = self.name


def _parse_value(s: str) -> Any:
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            pass
    if s in ("true", "false"):
        return s == "true"
    return s


def parse_rule_spec(spec: str) -> RuleSpec:
    """ "median" or "flag[max_iter=50,scale=median_norm]" -> RuleSpec."""
    if not isinstance(spec, str):
        raise TypeError(f"parse_rule_spec: spec must be a str, got {spec!r}")
    m = _SPEC_RE.match(spec.strip())
    if not m:
        raise ValueError(f"rules: bad rule spec {spec!r}; expected NAME or NAME[key=value,...]")
    params = {}
    if m.group(2):
        for item in m.group(2).split(","):
            if "=" not in item:
                raise ValueError(f"rules: bad parameter {item!r} in {spec!r}; expected key=value")
            k, v = item.split("=", 1)
            params[k.strip()] = _parse_value(v.strip())
    return RuleSpec(m.group(1), params, spec.strip() if params else "")


def split_rule_list(text: str) -> list[Any]:
    """Split "flag[max_iter=5,scale=paper],mean" at the commas outside brackets."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [s.strip() for s in out if s.strip()]


@dataclass
class RobustnessConfig:
    """Options of one robustness comparison (the CLI flags of ``flagcore robustness``).

    rules: rule specs (names from flagcore.rules.RULES, optionally NAME[key=value,...]).
    attack: "none", a gradient attack of flagcore.attacks (random, sign_flip, ...), or a data
        attack: label_flip, shuffle_labels, noise, warp, or distorted (warp/noise/shuffled
        labels in turn: honest workers on distorted data).
    workers, byzantine: p and f; the Byzantine workers are the last f. f is also passed to the
        rules that need it (RULES_TAKING_F).
    steps, batch_size (per worker, drawn without replacement from its shard), lr, momentum,
        weight_decay: SGD as in the FA paper (momentum 0.9, weight decay 5e-4).
    seeds: number of seeds, seed, seed + 1, ...; each seed changes the model initialisation,
        the split, the shards, the mini-batches and the attack's randomness.
    r, lam, max_iter, scale: the Flag Aggregator's options (r None: (p + 1) // 2, the paper's).
    eval_every: test accuracy/loss every that many steps (and at the last step).
    threads: torch intra-op threads during the run (restored after); None leaves torch's
        setting. Default 1: these models are tiny, so more threads buy little and, on cores
        shared with other work, OpenMP oversubscription can slow a run tenfold.
    flag_history: FA's per-step, per-worker weights and ratios kept in the results for "all"
        seeds, the "first_seed" only, or "none" (the per-seed mean ratios are always kept).
    attack_params: extra keyword arguments for the gradient attack (e.g. {"scale": 4.0}).
    heterogeneity: how the training set is split over the workers: "iid", "dirichlet:ALPHA"
        or "gamma:GAMMA" (flagcore.experiments.data.split_indices). Non-iid shards differ in
        size; mini-batches are drawn from each worker's own samples (with replacement when a
        shard is smaller than batch_size).
    """

    rules: Sequence[str] = ("flag", "median", "mean")
    attack: str = "random"
    workers: int = 15
    byzantine: int = 3
    dataset: str = "digits"
    model: str = "mlp"
    steps: int = 200
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seeds: int = 3
    seed: int = 0
    device: str = "cpu"
    r: int | None = None
    lam: float = 0.0
    max_iter: int = 1
    scale: str = "paper"
    eval_every: int = 10
    threads: int | None = 1
    flag_history: str = "all"
    attack_params: dict[str, Any] = field(default_factory=dict)
    heterogeneity: str = "iid"

    def validate(
        self,
        custom_data: bool = False,
        custom_model: bool = False,
        *,
        options: bool = False,
        where: str = "robustness",
    ) -> list[Any]:
        """Check every field before any work; return the parsed rule specs. Messages start with
        ``where`` and name the field, or with ``options=True`` the command-line option
        (``--weight-decay``, ``OPTION_OF``)."""
        fn = where

        def n(name: str) -> str:
            return OPTION_OF.get(name, "--" + name.replace("_", "-")) if options else name

        p = check_int(self.workers, fn, n("workers"), low=1, high=100_000)
        check_int(self.byzantine, fn, n("byzantine"), low=0, high=p - 1)
        check_int(self.steps, fn, n("steps"), low=1)
        check_int(self.batch_size, fn, n("batch_size"), low=1)
        for name, strict in (("lr", True), ("weight_decay", False)):
            v = check_float(getattr(self, name), fn, n(name), low=0.0, strict_low=strict)
            if v > FLOAT32_MAX:
                raise ValueError(
                    f"{fn}: {n(name)} must be at most {FLOAT32_MAX:.7g} (the largest float32: "
                    f"the optimiser computes in float32), got {v:g}"
                )
        m = check_float(self.momentum, fn, n("momentum"), low=0.0)
        if m >= 1.0:
            raise ValueError(f"{fn}: {n('momentum')} must be in [0, 1), got {m:g}")
        seeds = check_int(self.seeds, fn, n("seeds"), low=1, high=1000)
        seed = check_int(self.seed, fn, n("seed"), low=0)
        if seed > SEED_MAX - (seeds - 1):
            raise ValueError(
                f"{fn}: {n('seed')} must be at most {SEED_MAX - (seeds - 1)}, got {seed} (with "
                f"{seeds} seed(s) the last one, {n('seed')} + {seeds - 1}, must be at most "
                f"{SEED_MAX}: torch takes the seeds derived from it as signed 64-bit integers)"
            )
        check_int(self.eval_every, fn, n("eval_every"), low=1)
        if self.threads is not None:
            check_int(self.threads, fn, n("threads"), low=1, high=1024)
        if not isinstance(self.attack_params, dict):
            raise TypeError(
                f"{fn}: {n('attack_params')} must be a dict, got {self.attack_params!r}"
            )
        if self.r is not None:
            check_int(self.r, fn, n("r"), low=1, high=p)
        check_float(self.lam, fn, n("lam"), low=0.0)
        check_int(self.max_iter, fn, n("max_iter"), low=1, high=1_000_000)
        check_choice(self.scale, fn, n("scale"), SCALES)
        check_choice(self.flag_history, fn, n("flag_history"), FLAG_HISTORY)
        check_choice(self.attack, fn, n("attack"), all_attacks())
        if self.attack_params and self.attack not in gradient_attacks():
            raise ValueError(
                f"{fn}: attack {self.attack!r} takes no parameters, got {n('attack_params')} "
                + ", ".join(f"{k}={v!r}" for k, v in self.attack_params.items())
            )
        try:
            _data.parse_heterogeneity(self.heterogeneity, fn)
        except (ValueError, TypeError) as exc:
            msg = str(exc).replace(f"{fn}: heterogeneity", f"{fn}: {n('heterogeneity')}", 1)
            raise type(exc)(msg) from None
        if not custom_data:
            check_choice(self.dataset, fn, n("dataset"), _data.DATASETS)
        if not custom_model:
            check_choice(self.model, fn, n("model"), _models.MODELS)
        if (
            not custom_data
            and not custom_model
            and self.model == "cnn"
            and self.dataset not in IMAGE_DATASETS
        ):
            raise ValueError(
                f"{fn}: {n('model')} 'cnn' needs images ({n('dataset')} "
                f"{' or '.join(IMAGE_DATASETS)}), got {n('dataset')} {self.dataset!r}"
            )
        if not isinstance(self.device, str) or not re.match(r"^(cpu|cuda(:\d+)?)$", self.device):
            raise ValueError(
                f"{fn}: {n('device')} must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ValueError(
                    f"{fn}: {n('device')} {self.device!r} requested but torch sees no CUDA GPU "
                    f"(torch {torch.__version__})"
                )
        if isinstance(self.rules, str) or len(self.rules) == 0:
            raise ValueError(
                f"{fn}: {n('rules')} must be a non-empty list of rule names, got {self.rules!r}"
            )
        specs = [s if isinstance(s, RuleSpec) else parse_rule_spec(s) for s in self.rules]
        known = available_rules()
        for s in specs:
            if s.name not in known:
                raise ValueError(
                    f"{fn}: {n('rules')}: unknown rule {s.name!r}; available: {', '.join(known)}"
                )
        labels = [s.label for s in specs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"{fn}: {n('rules')} must be distinct, got {', '.join(labels)}")
        return specs


def rule_params(spec: RuleSpec, cfg: RobustnessConfig) -> dict[str, Any]:
    """The keyword arguments passed to the rule: FA's options from the config, f for the rules
    that need it, then the spec's own parameters (which win)."""
    if spec.name == "flag":
        base = {
            "r": cfg.r if cfg.r is not None else (cfg.workers + 1) // 2,
            "lam": cfg.lam,
            "max_iter": cfg.max_iter,
            "scale": cfg.scale,
        }
    elif spec.name in RULES_TAKING_F:
        base = {"f": cfg.byzantine}
    else:
        base = {}
    base.update(spec.params)
    return base


def _check_rule_runs(spec: RuleSpec, params: dict[str, Any], p: int) -> None:
    """Build the rule and call it once on a small random stack so a rule that cannot run with
    these options fails before any training, with the rule named."""
    x = np.random.default_rng(0).standard_normal((p, 8))
    try:
        make_rule(spec.name, _fn="robustness", **params)(x)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"robustness: rule {spec.label!r} cannot run with {p} workers and params "
            f"{params}: {exc}"
        ) from exc


def _attack_kwargs(cfg: RobustnessConfig, spec: RuleSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for flagcore.attacks.attack: the config's attack parameters and, for an
    adaptive attack, the attacker's own copy of the rule under test (built once per run) unless
    attack_params names a rule itself (a transfer attack)."""
    kw = dict(cfg.attack_params)
    if cfg.attack in _attacks.ADAPTIVE_ATTACKS and "rule" not in kw:
        kw["rule"] = make_rule(spec.name, _fn="robustness", **params)
        if cfg.attack == "fa_aware" and spec.name == "flag" and "flag_params" not in kw:
            kw["flag_params"] = {
                k: v
                for k, v in params.items()
                if k in ("r", "lam", "max_iter", "eps", "tol", "scale")
            }
    return kw


def check_attack_runs(cfg: RobustnessConfig, spec: RuleSpec, params: dict[str, Any]) -> None:
    """Call the gradient attack once on small random honest gradients, against this rule, so
    bad attack parameters fail before any training, with the attack and rule named."""
    if cfg.attack not in gradient_attacks() or cfg.byzantine == 0:
        return
    h = np.random.default_rng(0).standard_normal((cfg.workers - cfg.byzantine, 8))
    try:
        _attacks.attack(cfg.attack, h, cfg.byzantine, **_attack_kwargs(cfg, spec, params))
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"robustness: attack {cfg.attack!r} with {cfg.attack_params} cannot run against rule "
            f"{spec.label!r}: {exc}"
        ) from exc


class _Gradients:
    """Per-worker gradients of the mean cross-entropy: (p, B, ...) batches -> (p, n) stack and
    (p,) losses. One vmapped pass (torch.func) when the model allows it, else a loop."""

    def __init__(self, model: Any) -> None:
        import torch
        import torch.nn.functional as F
        from torch.func import functional_call, grad_and_value, vmap

        self.model = model
        self.names = [k for k, v in model.named_parameters() if v.requires_grad]
        buffers = dict(model.named_buffers())

        def loss_fn(params: dict[str, Any], x: Any, y: Any) -> Any:
            out = functional_call(model, (params, buffers), (x,))
            return F.cross_entropy(out, y)

        self._vmapped = vmap(grad_and_value(loss_fn), in_dims=(None, 0, 0))
        self._use_vmap = True
        self._torch = torch
        self._F = F

    def __call__(self, xb: Any, yb: Any) -> tuple[Any, ...]:
        torch = self._torch
        params = {k: v for k, v in self.model.named_parameters() if v.requires_grad}
        if self._use_vmap:
            try:
                detached = {k: v.detach() for k, v in params.items()}
                grads, losses = self._vmapped(detached, xb, yb)
                p = xb.shape[0]
                return torch.cat([grads[k].reshape(p, -1) for k in self.names], dim=1), losses
            except RuntimeError:
                # Some modules (batch norm in training mode, in-place ops) cannot be vmapped.
                self._use_vmap = False
        rows, losses = [], []
        for w in range(xb.shape[0]):
            loss = self._F.cross_entropy(self.model(xb[w]), yb[w])
            g = torch.autograd.grad(loss, list(params.values()))
            rows.append(torch.cat([t.reshape(-1) for t in g]))
            losses.append(loss.detach())
        return torch.stack(rows), torch.stack(losses)


def _evaluate(model: Any, x: Any, y: Any) -> tuple[Any, ...]:
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        out = model(x)
        loss = float(F.cross_entropy(out, y))
        acc = float((out.argmax(dim=1) == y).float().mean())
    return acc, loss


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def run_robustness(
    config: RobustnessConfig | None = None,
    *,
    task: _data.TaskData | None = None,
    model: Any = None,
    progress: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Run every (rule, seed) of ``config`` and return the results dict (results.json's content).

    task: a TaskData (see flagcore.experiments.data.from_torch_dataset) instead of
        config.dataset. model: a torch nn.Module (copied per run, re-initialised per seed when
        it has reset_parameters on its layers) or a callable (input_shape, n_classes) -> Module,
        instead of config.model (a string here is a built-in model's name). overrides: config
        fields, e.g. steps=50.
    """
    import torch

    cfg = copy.deepcopy(config) if config is not None else RobustnessConfig()
    if isinstance(model, str):  # a built-in model's name: the config field
        overrides["model"], model = model, None
    for k, v in overrides.items():
        if not hasattr(cfg, k):
            raise TypeError(f"run_robustness: unknown option {k!r}")
        setattr(cfg, k, v)
    specs = cfg.validate(custom_data=task is not None, custom_model=model is not None)
    p, f = cfg.workers, cfg.byzantine
    params_by_rule = {s.label: rule_params(s, cfg) for s in specs}
    for s in specs:
        _check_rule_runs(s, params_by_rule[s.label], p)
        check_attack_runs(cfg, s, params_by_rule[s.label])
    grad_attack = cfg.attack in gradient_attacks()
    data_attack = cfg.attack in _data.DATA_ATTACKS
    byz = list(range(p - f, p))
    dev = torch.device(cfg.device)
    seeds = [cfg.seed + i for i in range(cfg.seeds)]

    old_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    bar = _progress_bar(len(seeds) * len(specs) * cfg.steps, progress)
    try:
        results, meta = _run_all(
            cfg, specs, params_by_rule, seeds, task, model, byz, grad_attack, data_attack, dev, bar
        )
    finally:
        if bar is not None:
            bar.close()
        torch.set_num_threads(old_threads)
    return _collect(cfg, specs, params_by_rule, seeds, byz, meta, results)


def _run_all(
    cfg: RobustnessConfig,
    specs: list[Any],
    params_by_rule: dict[str, Any],
    seeds: list[Any],
    task: Any,
    model: Any,
    byz: list[Any],
    grad_attack: bool,
    data_attack: bool,
    dev: Any,
    bar: Any,
) -> tuple[Any, ...]:
    import torch

    p = cfg.workers
    results: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    for seed in seeds:
        t_task = task if task is not None else _data.load_task(cfg.dataset, seed)
        distorted = (
            [(w, _data.distortion_of(cfg.attack, k)) for k, w in enumerate(byz)]
            if data_attack
            else []
        )
        xs, ys, sizes = _data.shard(
            t_task, p, seed, distorted, heterogeneity=cfg.heterogeneity, return_sizes=True
        )
        m = xs.shape[1]
        if cfg.heterogeneity == "iid" and cfg.batch_size > m:
            raise ValueError(
                f"robustness: batch_size must be at most the shard size {m} "
                f"({t_task.x_train.shape[0]} training samples / {p} workers), got {cfg.batch_size}"
            )
        xs, ys = xs.to(dev), ys.to(dev)
        x_test, y_test = t_task.x_test.to(dev), t_task.y_test.to(dev)
        torch.manual_seed(seed)
        net0 = _build_model(model, cfg, t_task)
        n_params = _models.count_parameters(net0)
        meta = {
            "dataset": {
                "name": t_task.name,
                "train": int(t_task.x_train.shape[0]),
                "test": int(t_task.x_test.shape[0]),
                "classes": t_task.n_classes,
                "input_shape": list(t_task.input_shape),
                "shard_size": int(m),
                "shard_sizes": sizes.tolist(),
                "class_histograms": _data.class_histograms(
                    ys.cpu(), sizes, t_task.n_classes
                ).tolist(),
            },
            "model": {
                "name": cfg.model if model is None else type(net0).__name__,
                "parameters": n_params,
            },
            "distortions": {str(w): k for w, k in distorted},
        }
        for s in specs:
            if bar is not None:
                bar.set_postfix_str(f"{s.label} seed {seed}")
            run = _train_one(
                s,
                params_by_rule[s.label],
                cfg,
                seed,
                net0,
                xs,
                ys,
                sizes.to(dev),
                x_test,
                y_test,
                byz,
                grad_attack,
                dev,
                bar,
            )
            results.setdefault(s.label, []).append(run)
    return results, meta


def _build_model(model: Any, cfg: RobustnessConfig, task: _data.TaskData) -> Any:
    import torch.nn as nn

    if model is None:
        net = _models.make_model(cfg.model, task.input_shape, task.n_classes)
    elif isinstance(model, nn.Module):
        net = copy.deepcopy(model)
        for mod in net.modules():
            reset = getattr(mod, "reset_parameters", None)
            if callable(reset):
                reset()
    elif callable(model):
        net = model(task.input_shape, task.n_classes)
        if not isinstance(net, nn.Module):
            raise TypeError(
                "run_robustness: model callable must return a torch nn.Module, got "
                f"{type(net).__name__}"
            )
    else:
        raise TypeError(
            f"run_robustness: model must be an nn.Module or a callable, got {type(model).__name__}"
        )
    return net.to(cfg.device)


def _train_one(
    spec: RuleSpec,
    params: dict[str, Any],
    cfg: RobustnessConfig,
    seed: int,
    net0: Any,
    xs: Any,
    ys: Any,
    sizes: Any,
    x_test: Any,
    y_test: Any,
    byz: list[Any],
    grad_attack: bool,
    dev: Any,
    bar: Any,
) -> dict[str, Any]:
    import torch

    p, f, B = cfg.workers, cfg.byzantine, cfg.batch_size
    net = copy.deepcopy(net0)
    opt = torch.optim.SGD(
        net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    grads_of = _Gradients(net)
    plist = [v for v in net.parameters() if v.requires_grad]
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 17)
    rows = torch.arange(p, device=dev)[:, None]
    m = xs.shape[1]
    honest = [w for w in range(p) if w not in set(byz)]
    honest_idx = torch.tensor(honest, device=dev)
    is_flag = spec.name == "flag"
    # built once, reused every step; the run's seed seeds its draws (bucketing, dnc, signguard)
    # unless the rule spec sets one, so the seeds of a config vary them too
    rule = make_rule(spec.name, _fn="robustness", **{"seed": seed, **params})
    attack_kw = _attack_kwargs(cfg, spec, params) if grad_attack else {}
    equal = bool((sizes == m).all())
    short = sizes < B  # shards smaller than a batch: drawn with replacement
    steps_eval, acc_curve, loss_curve, train_loss = [], [], [], []
    weights_hist, ratios_hist = [], []
    agg_time = 0.0
    acc, loss = _evaluate(net, x_test, y_test)
    steps_eval.append(0)
    acc_curve.append(acc)
    loss_curve.append(_finite_or_none(loss))
    t_start = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        if equal:
            idx = torch.rand(p, m, generator=gen).argsort(dim=1)[:, :B].to(dev)
        else:  # only each worker's real samples: padding keys sort last
            keys = torch.rand(p, m, generator=gen).to(dev)
            keys[torch.arange(m, device=dev)[None, :] >= sizes[:, None]] = 2.0
            idx = keys.argsort(dim=1)[:, :B]
            if bool(short.any()):
                draw = (torch.rand(p, B, generator=gen).to(dev) * sizes[:, None]).long()
                idx = torch.where(short[:, None], draw, idx)
        xb, yb = xs[rows, idx], ys[rows, idx]
        stack, losses = grads_of(xb, yb)
        stack = stack.detach()
        train_loss.append(_finite_or_none(float(losses[honest_idx].mean())))
        if grad_attack and f > 0:
            bad = _attacks.attack(
                cfg.attack, stack[honest_idx], f, seed=seed * 1_000_003 + step, **attack_kw
            )
            stack = torch.cat(
                [stack[honest_idx], torch.as_tensor(bad, dtype=stack.dtype, device=dev)]
            )
        _sync(cfg.device)
        t0 = time.perf_counter()
        if is_flag:
            agg, info = rule(stack, return_info=True)
            if not hasattr(info, "reconstruction_ratios"):
                info = None
        else:
            agg, info = rule(stack), None
        _sync(cfg.device)
        agg_time += time.perf_counter() - t0
        if info is not None:
            weights_hist.append(np.asarray(info.weights, dtype=float).tolist())
            ratios_hist.append(np.asarray(info.reconstruction_ratios, dtype=float).tolist())
        agg = torch.as_tensor(agg, device=dev).to(stack.dtype)
        off = 0
        for prm in plist:
            k = prm.numel()
            prm.grad = agg[off : off + k].view_as(prm).clone()
            off += k
        opt.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            acc, loss = _evaluate(net, x_test, y_test)
            steps_eval.append(step)
            acc_curve.append(acc)
            loss_curve.append(_finite_or_none(loss))
        if bar is not None:
            bar.update(1)
    wall = time.perf_counter() - t_start
    out = {
        "seed": seed,
        "step": steps_eval,
        "accuracy": acc_curve,
        "loss": loss_curve,
        "train_loss": train_loss,
        "final_accuracy": acc_curve[-1],
        "final_loss": loss_curve[-1],
        "wall_time_s": wall,
        "agg_time_ms": 1e3 * agg_time / cfg.steps,
    }
    if is_flag and ratios_hist:
        rat = np.asarray(ratios_hist)
        bad = sorted(set(byz))
        out["flag_mean_ratio"] = {
            "honest": float(rat[:, honest].mean()) if honest else None,
            "byzantine": float(rat[:, bad].mean()) if bad else None,
        }
        out["flag_weights"] = weights_hist
        out["flag_ratios"] = ratios_hist
    return out


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="step", dynamic_ncols=True, leave=False)


def _collect(
    cfg: RobustnessConfig,
    specs: list[Any],
    params_by_rule: dict[str, Any],
    seeds: list[Any],
    byz: list[Any],
    meta: dict[str, Any],
    runs: dict[str, Any],
) -> dict[str, Any]:
    import torch

    from .. import build_info

    rules_out = {}
    for s in specs:
        rs = runs[s.label]
        finals = [r["final_accuracy"] for r in rs]
        entry = {
            "rule": s.name,
            "params": params_by_rule[s.label],
            "final_accuracy_mean": float(np.mean(finals)),
            "final_accuracy_std": float(np.std(finals, ddof=1)) if len(finals) > 1 else 0.0,
            "final_accuracy": finals,
            "final_loss": [r["final_loss"] for r in rs],
            "step": rs[0]["step"],
            "accuracy": [r["accuracy"] for r in rs],
            "loss": [r["loss"] for r in rs],
            "train_loss": [r["train_loss"] for r in rs],
            "wall_time_s": [r["wall_time_s"] for r in rs],
            "agg_time_ms": [r["agg_time_ms"] for r in rs],
            "agg_time_ms_mean": float(np.mean([r["agg_time_ms"] for r in rs])),
        }
        if s.name == "flag" and "flag_mean_ratio" in rs[0]:
            keep = {"all": len(rs), "first_seed": 1, "none": 0}[cfg.flag_history]
            entry["flag"] = {
                "mean_ratio": [r["flag_mean_ratio"] for r in rs],
                # per kept seed (the first `keep`), per step, per worker
                "weights": [r["flag_weights"] for r in rs[:keep]],
                "ratios": [r["flag_ratios"] for r in rs[:keep]],
            }
        rules_out[s.label] = entry
    c = asdict(cfg)
    c["rules"] = [s.label for s in specs]
    return {
        "schema": SCHEMA,
        "config": c,
        "seeds": seeds,
        "byzantine_workers": byz,
        **meta,
        "rules": rules_out,
        "environment": {
            "flagcore": build_info()["version"],
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "device": cfg.device,
        },
    }

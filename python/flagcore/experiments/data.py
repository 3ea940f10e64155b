"""Data for the robustness harness: built-in tasks, worker shards and data-level distortions.

Nothing is downloaded: ``digits`` is scikit-learn's bundled 8x8 handwritten digits (1797
images, 10 classes), ``blobs`` is a generated Gaussian-cluster classification task (NumPy
only). A user may pass any ``torch.utils.data.Dataset`` of (input tensor, int label) pairs
instead (see ``from_torch_dataset``).

Every worker gets its own shard (a seeded, iid, equal-size split of the training set); a
distorted worker's shard is transformed once at the start ("honest workers on distorted
data", the FA paper's augmented-data setting).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DATASETS = ("digits", "blobs")

# Data-level attacks: the worker computes an honest gradient, but on a transformed shard.
# "distorted" gives the f bad workers warp, noise and shuffle_labels in turn.
DATA_ATTACKS = ("label_flip", "shuffle_labels", "noise", "warp", "distorted")
_DISTORTED_CYCLE = ("warp", "noise", "shuffle_labels")


@dataclass
class TaskData:
    """Train/test tensors of one classification task (torch, on the CPU)."""

    name: str
    x_train: Any  # (N, *input_shape) float32
    y_train: Any  # (N,) int64
    x_test: Any
    y_test: Any
    n_classes: int

    @property
    def input_shape(self) -> tuple[Any, ...]:
        return tuple(self.x_train.shape[1:])


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[Any, ...]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    n_test = round(float(test_fraction * len(y)))
    te, tr = perm[:n_test], perm[n_test:]
    return x[tr], y[tr], x[te], y[te]


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> TaskData:
    """scikit-learn's bundled digits as (N, 1, 8, 8) images in [0, 1], a seeded 80/20 split."""
    import torch

    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:  # pragma: no cover - sklearn is in the demo/test extras
        raise ImportError(
            "dataset 'digits' needs scikit-learn (pip install 'flagcore[demo]'); "
            "or use --dataset blobs"
        ) from exc
    d = _sk_load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    xtr, ytr, xte, yte = _split(x, y, test_fraction, seed)
    t = torch.from_numpy
    return TaskData("digits", t(xtr), t(ytr), t(xte), t(yte), 10)


def make_blobs(
    seed: int = 0,
    n_samples: int = 3000,
    n_features: int = 20,
    n_classes: int = 4,
    separation: float = 3.0,
    test_fraction: float = 0.2,
) -> TaskData:
    """A generated task: n_classes Gaussian clusters (unit covariance) in n_features dimensions
    whose centres are random directions scaled to ``separation``; features standardised."""
    import torch

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, n_features))
    centres *= separation / np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, n_classes, n_samples)
    x = centres[y] + rng.standard_normal((n_samples, n_features))
    x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    xtr, ytr, xte, yte = _split(x, y.astype(np.int64), test_fraction, seed + 1)
    t = torch.from_numpy
    return TaskData("blobs", t(xtr), t(ytr), t(xte), t(yte), n_classes)


def from_torch_dataset(train: Any, test: Any, n_classes: int, name: str = "custom") -> TaskData:
    """Materialise two map-style torch Datasets of (input tensor, int label) into a TaskData
    (the harness keeps every shard in memory; meant for small data sets)."""
    import torch

    def stack(ds: Any, which: str) -> tuple[Any, ...]:
        if not hasattr(ds, "__len__") or len(ds) == 0:
            raise ValueError(
                f"from_torch_dataset: {which} must be a non-empty map-style Dataset, got {ds!r}"
            )
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in xs]), torch.as_tensor(
            [int(v) for v in ys], dtype=torch.int64
        )

    xtr, ytr = stack(train, "train")
    xte, yte = stack(test, "test")
    for which, yy in (("train", ytr), ("test", yte)):
        if int(yy.min()) < 0 or int(yy.max()) >= n_classes:
            raise ValueError(
                f"from_torch_dataset: {which} labels must be in [0, {n_classes - 1}], "
                f"got [{int(yy.min())}, {int(yy.max())}]"
            )
    return TaskData(name, xtr, ytr, xte, yte, int(n_classes))


def load_task(name: str, seed: int = 0) -> TaskData:
    if name == "digits":
        return load_digits(seed)
    if name == "blobs":
        return make_blobs(seed)
    raise ValueError(f"load_task: dataset must be one of {', '.join(DATASETS)}, got {name!r}")


def distortion_of(attack: str, k: int) -> str:
    """The distortion applied to the k-th bad worker under a data-level attack."""
    return _DISTORTED_CYCLE[k % len(_DISTORTED_CYCLE)] if attack == "distorted" else attack


def parse_heterogeneity(spec: str, fn: str = "robustness") -> tuple[Any, ...]:
    """ "iid" -> ("iid", None); "dirichlet:0.5" -> ("dirichlet", 0.5); "gamma:0.3" ->
    ("gamma", 0.3) (see ``split_indices``)."""
    if not isinstance(spec, str):
        raise TypeError(
            f"{fn}: heterogeneity must be a str like 'iid', 'dirichlet:0.5' or 'gamma:0.3', got "
            f"{spec!r}"
        )
    kind, _, val = spec.partition(":")
    if kind == "iid" and not val:
        return "iid", None
    if kind in ("dirichlet", "gamma") and val:
        try:
            v = float(val)
        except ValueError:
            v = math.nan
        if kind == "dirichlet" and math.isfinite(v) and v > 0:
            return kind, v
        if kind == "gamma" and 0.0 <= v <= 1.0:
            return kind, v
        rng = "alpha > 0" if kind == "dirichlet" else "gamma in [0, 1]"
        raise ValueError(f"{fn}: heterogeneity {spec!r} needs {rng}")
    raise ValueError(
        f"{fn}: heterogeneity must be 'iid', 'dirichlet:ALPHA' or 'gamma:GAMMA', got {spec!r}"
    )


def split_indices(labels: Any, p: int, seed: int, heterogeneity: str = "iid") -> list[Any]:
    """Worker shards as lists of training-sample indices (numpy int64 arrays), seeded.

    "iid": a random permutation cut into p equal shards (the remainder of N / p is left out).
    "dirichlet:ALPHA" (Hsu et al. 2019, as in ByzFL): for every class, proportions q ~
    Dirichlet(ALPHA 1_p) and the class's samples (shuffled) are cut at the cumulative q; small
    ALPHA gives each worker few classes, large ALPHA approaches iid. Shard sizes differ; the
    draw is repeated (same stream) until every worker has at least one sample (at most 1000
    draws, else ValueError). Every sample goes to exactly one worker.
    "gamma:GAMMA" (ByzFL's gamma-similarity): a fraction GAMMA of the samples (random) is dealt
    iid, the rest is sorted by label and cut into p contiguous chunks, one per worker; GAMMA = 1
    is iid, GAMMA = 0 gives each worker a contiguous run of labels (one or two classes here).
    Equal shards up to one sample; the remainder of N / p is left out.
    """
    kind, val = parse_heterogeneity(heterogeneity, "split_indices")
    y = np.asarray(labels).reshape(-1)
    n = y.shape[0]
    if n < p:
        raise ValueError(f"split_indices: {p} workers need at least {p} training samples, got {n}")
    if kind == "iid":
        import torch

        g = torch.Generator().manual_seed(seed)  # the generator the iid split always used
        m = n // p
        perm = torch.randperm(n, generator=g)[: p * m].reshape(p, m).numpy()
        return [perm[w].astype(np.int64) for w in range(p)]
    rng = np.random.default_rng([seed, 0x5E11])
    if kind == "dirichlet":
        classes = np.unique(y)
        for _ in range(1000):
            parts: list[Any] = [[] for _ in range(p)]
            for c in classes:
                idx = rng.permutation(np.flatnonzero(y == c))
                q = rng.dirichlet(np.full(p, val))
                cuts = (np.cumsum(q)[:-1] * len(idx)).astype(np.int64)
                for w, chunk in enumerate(np.split(idx, cuts)):
                    parts[w].append(chunk)
            shards = [np.sort(np.concatenate(ch)).astype(np.int64) for ch in parts]
            if min(len(s) for s in shards) >= 1:
                return shards
        raise ValueError(
            f"split_indices: no Dirichlet({val}) split in 1000 draws gave all {p} workers a sample"
        )
    m = n // p
    perm = rng.permutation(n)[: p * m]
    k_iid = round(float(val * p * m)) // p * p  # a multiple of p, dealt evenly
    iid_part, rest = perm[:k_iid], perm[k_iid:]
    rest = rest[np.argsort(y[rest], kind="stable")]
    iid_chunks = iid_part.reshape(p, -1) if k_iid else np.zeros((p, 0), np.int64)
    sorted_chunks = np.array_split(rest, p)
    return [
        np.sort(np.concatenate([iid_chunks[w], sorted_chunks[w]])).astype(np.int64)
        for w in range(p)
    ]


def shard(
    task: TaskData,
    p: int,
    seed: int,
    distorted: Sequence[tuple[int, str]] = (),
    heterogeneity: str = "iid",
    return_sizes: bool = False,
) -> tuple[Any, ...]:
    """Split the training set into p worker shards (``split_indices``: iid by default) and apply
    ``distorted`` = [(worker, distortion), ...].

    Returns (xs, ys): (p, m, *input_shape) float32 and (p, m) int64 tensors, m the largest
    shard; a shorter shard is padded by repeating its samples (so every row is a real sample)
    and ``return_sizes=True`` adds the (p,) int64 tensor of true shard sizes, which the harness
    uses to draw mini-batches from the real samples only.
    """
    import torch

    parts = split_indices(task.y_train.numpy(), p, seed, heterogeneity)
    sizes = np.array([len(s) for s in parts], dtype=np.int64)
    m = int(sizes.max())
    idx = np.stack([np.resize(s, m) for s in parts])  # np.resize repeats the shard cyclically
    t_idx = torch.from_numpy(idx)
    xs = task.x_train[t_idx].clone()
    ys = task.y_train[t_idx].clone()
    for w, kind in distorted:
        xs[w], ys[w] = distort(xs[w], ys[w], kind, task.n_classes, seed=seed * 7919 + w)
    if return_sizes:
        return xs, ys, torch.from_numpy(sizes)
    return xs, ys


def class_histograms(ys: Any, sizes: Any, n_classes: int) -> np.ndarray:
    """(p, n_classes) label counts of the shards (the first sizes[w] rows of each)."""
    y = np.asarray(ys)
    s = np.asarray(sizes)
    return np.stack([np.bincount(y[w, : s[w]], minlength=n_classes) for w in range(y.shape[0])])


def distort(x: Any, y: Any, kind: str, n_classes: int, seed: int = 0) -> tuple[Any, ...]:
    """Transform one shard. label_flip: y -> C - 1 - y. shuffle_labels: labels permuted (no
    longer related to inputs). noise: x + N(0, (2 std(x))^2). warp: images get a strong random
    affine map per sample (rotation up to 60 degrees, shear, scale 0.6-1.4, shift); flat
    inputs get one random rotation of feature space."""
    import torch

    g = torch.Generator().manual_seed(seed)
    if kind == "label_flip":
        return x, (n_classes - 1) - y
    if kind == "shuffle_labels":
        return x, y[torch.randperm(len(y), generator=g)]
    if kind == "noise":
        return x + 2.0 * float(x.std()) * torch.randn(x.shape, generator=g), y
    if kind == "warp":
        if x.dim() == 4:
            return _affine_warp(x, g), y
        flat = x.reshape(len(x), -1)
        q, _ = torch.linalg.qr(torch.randn(flat.shape[1], flat.shape[1], generator=g))
        return (flat @ q).reshape(x.shape), y
    raise ValueError(
        f"distort: kind must be one of label_flip, shuffle_labels, noise, warp, got {kind!r}"
    )


def _affine_warp(x: Any, g: Any) -> Any:
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    ang = (torch.rand(b, generator=g) * 2 - 1) * math.pi / 3
    sc = 0.6 + 0.8 * torch.rand(b, generator=g)
    sh = (torch.rand(b, generator=g) * 2 - 1) * 0.5
    tr = (torch.rand(b, 2, generator=g) * 2 - 1) * 0.3
    c, s = torch.cos(ang), torch.sin(ang)
    theta = torch.stack(
        [
            torch.stack([c * sc, -s * sc + sh, tr[:, 0]], 1),
            torch.stack([s * sc, c * sc, tr[:, 1]], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")

"""PNG plots of a robustness results dict (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .._paths import atomic_savefig  # a failed write keeps a previous PNG and names the path


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(res: dict[str, Any]) -> str:
    c = res["config"]
    return (
        f"{res['dataset']['name']}/{res['model']['name']}, p = {c['workers']}, f = "
        f"{c['byzantine']}, "
        f"attack = {c['attack']}, {len(res['seeds'])} seed(s)"
    )


def plot_accuracy(res: dict[str, Any], path: str) -> str:
    """Test accuracy vs step per rule: mean over seeds, min-max band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, e in res["rules"].items():
        acc = np.asarray(e["accuracy"], dtype=float)
        st = np.asarray(e["step"])
        (line,) = ax.plot(st, acc.mean(axis=0), label=f"{label} ({e['final_accuracy_mean']:.3f})")
        if acc.shape[0] > 1:
            ax.fill_between(
                st, acc.min(axis=0), acc.max(axis=0), color=line.get_color(), alpha=0.15
            )
    ax.set_xlabel("step")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", title="rule (final mean)", title_fontsize=8)
    ax.set_title(_title(res), fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot_flag_heatmap(res: dict[str, Any], label: str, path: str, seed_index: int = 0) -> str:
    """Which workers FA trusted: reconstruction ratios and IRLS weights per worker over steps
    (one seed); the Byzantine / distorted workers are marked on the worker axis."""
    plt = _plt()
    e = res["rules"][label]
    ratios = np.asarray(e["flag"]["ratios"][seed_index], dtype=float).T  # (p, steps)
    weights = np.asarray(e["flag"]["weights"][seed_index], dtype=float).T
    p, steps = ratios.shape
    byz = set(res["byzantine_workers"])
    fig, axes = plt.subplots(2, 1, figsize=(8, 1.6 + 0.2 * min(p, 30) * 2), sharex=True)
    extent = (0.5, steps + 0.5, p - 0.5, -0.5)
    im0 = axes[0].imshow(
        ratios,
        aspect="auto",
        interpolation="nearest",
        cmap="viridis",
        vmin=0,
        vmax=1,
        extent=extent,
    )
    fig.colorbar(im0, ax=axes[0], label="ratio v_i")
    axes[0].set_title(
        f"FA ({label}): reconstruction ratio per worker, seed {res['seeds'][seed_index]}",
        fontsize=9,
    )
    lw = np.log10(np.maximum(weights, 1e-12))
    im1 = axes[1].imshow(lw, aspect="auto", interpolation="nearest", cmap="magma", extent=extent)
    fig.colorbar(im1, ax=axes[1], label="log10 IRLS weight")
    axes[1].set_title("IRLS weight per worker (large = trusted)", fontsize=9)
    axes[1].set_xlabel("step")
    ticks = list(range(p)) if p <= 30 else list(range(0, p, max(1, p // 15)))
    for ax in axes:
        ax.set_ylabel("worker")
        ax.set_yticks(ticks)
        ax.set_yticklabels([f"{w}*" if w in byz else str(w) for w in ticks], fontsize=7)
        for w, tl in zip(ticks, ax.get_yticklabels()):
            if w in byz:
                tl.set_color("red")
    fig.text(
        0.01,
        0.005,
        f"* red: Byzantine/distorted workers ({res['config']['attack']})",
        fontsize=7,
        color="red",
    )
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def plot_agg_time(res: dict[str, Any], path: str) -> str:
    """Aggregation time per step, per rule (mean over seeds; min-max as error bar)."""
    plt = _plt()
    labels = list(res["rules"])
    t = [np.asarray(res["rules"][k]["agg_time_ms"], dtype=float) for k in labels]
    mean = np.array([v.mean() for v in t])
    err = np.array([[v.mean() - v.min() for v in t], [v.max() - v.mean() for v in t]])
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(labels) + 2), 3.6))
    ax.bar(range(len(labels)), mean, yerr=err, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ms per aggregation")
    n = res["model"]["parameters"]
    ax.set_title(
        f"Aggregation time: p = {res['config']['workers']}, n = {n}, {res['config']['device']}",
        fontsize=9,
    )
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def write_plots(res: dict[str, Any], out_dir: str, prefix: str = "") -> list[Any]:
    """All plots of one results dict into out_dir; returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [plot_accuracy(res, os.path.join(out_dir, f"{prefix}accuracy.png"))]
    flag_labels = [k for k, e in res["rules"].items() if "flag" in e and e["flag"]["ratios"]]
    for k in flag_labels:
        name = "flag_workers.png" if len(flag_labels) == 1 else f"flag_workers_{_safe(k)}.png"
        paths.append(plot_flag_heatmap(res, k, os.path.join(out_dir, prefix + name)))
    paths.append(plot_agg_time(res, os.path.join(out_dir, f"{prefix}agg_time.png")))
    return paths


def _safe(s: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in s).strip("_")


def _heatmap(ax: Any, mat: np.ndarray, rows: list[Any], cols: list[Any], fig: Any) -> None:
    masked = np.ma.masked_invalid(mat)
    cmap = _plt().get_cmap("RdYlGn").with_extremes(bad="lightgrey")
    im = ax.imshow(masked, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(rows, fontsize=8)
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            v = mat[i, j]
            ax.text(
                j,
                i,
                "n/a" if not np.isfinite(v) else f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=7,
            )
    fig.colorbar(im, ax=ax, label="test accuracy")


def _acc(v: Any) -> float:
    return float("nan") if v is None else float(v)


def write_grid_heatmaps(res: dict[str, Any], out_dir: str, prefix: str = "") -> list[Any]:
    """Heat maps of a grid's results: per (f, heterogeneity), rule x attack accuracy at each
    rule's chosen learning rate with the worst case as the last column; per f, rule x
    heterogeneity worst-case accuracy. Returns the paths written."""
    plt = _plt()
    g = res["grid"]
    rules, attacks = res["rules"], g["attacks"]
    cell = {
        (c["rule"], c["byzantine"], c["heterogeneity"], c["lr"], c["attack"]): c["accuracy_mean"]
        for c in res["cells"]
    }
    worst = {(w["rule"], w["byzantine"], w["heterogeneity"]): w for w in res["worst_case"]}
    base = g["base"]
    sub = (
        f"{res['dataset']['name']}/{res['model']['name']}, {base.get('workers', 15)} workers, "
        f"{base.get('steps', 200)} steps, {len(res['seeds'])} seed(s)"
    )
    paths = []
    for f in g["byzantine"]:
        for het in g["heterogeneity"]:
            mat = np.array(
                [
                    [_acc(cell[(r, f, het, worst[(r, f, het)]["lr"], a)]) for a in attacks]
                    + [_acc(worst[(r, f, het)]["accuracy"])]
                    for r in rules
                ]
            )
            fig, ax = plt.subplots(figsize=(1.1 * (len(attacks) + 1) + 3, 0.45 * len(rules) + 1.8))
            _heatmap(ax, mat, rules, list(attacks) + ["worst case"], fig)
            ax.axvline(len(attacks) - 0.5, color="black", lw=1.5)
            ax.set_title(f"Accuracy, rule x attack: f = {f}, {het}\n{sub}", fontsize=9)
            fig.tight_layout()
            path = os.path.join(out_dir, f"{prefix}heatmap_attack_f{f}_{_safe(het)}.png")
            atomic_savefig(fig, path, dpi=120)
            plt.close(fig)
            paths.append(path)
        hets = g["heterogeneity"]
        mat = np.array([[_acc(worst[(r, f, h)]["accuracy"]) for h in hets] for r in rules])
        fig, ax = plt.subplots(figsize=(1.3 * len(hets) + 4.5, 0.45 * len(rules) + 1.8))
        _heatmap(ax, mat, rules, hets, fig)
        ax.set_title(f"Worst-case accuracy over attacks: f = {f}\n{sub}", fontsize=9)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{prefix}heatmap_heterogeneity_f{f}.png")
        atomic_savefig(fig, path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths

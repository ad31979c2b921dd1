"""Figures of the paper, shared by experiment scripts and notebooks (matplotlib).

Every function draws on a given or new axes and returns the figure; :func:`save`
writes PNG and PDF atomically.
"""

from __future__ import annotations

import io as stdio
from pathlib import Path
from typing import Sequence

import numpy as np

from . import io
from .sweep.analysis import method_cells, select, uniform_and_md
from .sweep.methods import METHODS
from .sweep.ctr import CTR_METHODS, ctr_cells, ctr_method_cells

__all__ = ["budget_curves", "method_curves", "alpha_ablation", "block_dims", "frequency_curve", "ctr_curves",
           "ctr_learning_curves", "ctr_method_curves", "save"]


def _axes(ax=None, size=(6.0, 4.0)):
    if ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=size)
        return fig, ax
    return ax.figure, ax


def _by_alpha(rows, metric):
    """{alpha: [(params, mean, std)]} over seeds, from each cell's best-validation run."""
    chosen = select(uniform_and_md(rows))
    out: dict[float, list[tuple[float, float, float]]] = {}
    for alpha in sorted({r["alpha"] for r in chosen}):
        points = []
        for budget in sorted({r["budget"] for r in chosen if r["alpha"] == alpha}):
            cell = [r for r in chosen if r["alpha"] == alpha and r["budget"] == budget]
            values = [r[metric] for r in cell]
            points.append((float(np.mean([r["params"] for r in cell])), float(np.mean(values)), float(np.std(values))))
        out[alpha] = points
    return out


def budget_curves(rows, metric: str = "test_mse", ax=None, title: str | None = None):
    """Test MSE against the number of parameters (log x), one curve per alpha (0 is uniform),
    mean +- std over seeds of each cell's best-validation run (the paper's Fig. 3a/3d)."""
    curves = _by_alpha(rows, metric)
    if not curves:
        raise ValueError("budget_curves: no finished run to plot (every run is infeasible or diverged, or none ran)")
    fig, ax = _axes(ax)
    for alpha, points in curves.items():
        params, mean, std = (np.array(v) for v in zip(*points))
        label = "uniform (alpha = 0)" if alpha == 0 else f"MD, alpha = {alpha:g}"
        style = dict(color="black", linestyle="--", marker="s") if alpha == 0 else dict(marker="o")
        ax.errorbar(params, mean, yerr=std, capsize=3, label=label, **style)
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short log ranges
    ax.set_xlabel("parameters (embeddings with projections, biases, MLP)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return fig


def method_curves(rows, metric: str = "test_mse", ax=None, title: str | None = None):
    """Test MSE against size (parameters, or bytes for a sweep in bytes; log x), one curve
    per method at its validation-chosen setting per budget, mean +- std over seeds."""
    cells = method_cells(rows)
    if not cells:
        raise ValueError("method_curves: no finished run to plot (every run is infeasible or diverged, or none ran)")
    in_bytes = any(r.get("budget_unit") == "bytes" for r in rows)
    fig, ax = _axes(ax)
    for method, marker in zip(METHODS, "sov^<>DxP*"):
        points = sorted((budget, cell) for (budget, m), (_, cell) in cells.items() if m == method)
        if not points:
            continue
        size = [float(np.mean([r["nbytes" if in_bytes else "params"] for r in cell])) for _, cell in points]
        values = [[r[metric] for r in cell] for _, cell in points]
        style = dict(color="black", linestyle="--") if method == "uniform" else {}
        ax.errorbar(size, [np.mean(v) for v in values], yerr=[np.std(v) for v in values], capsize=3,
                    marker=marker, label=method, **style)
    ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("bytes (float32, int8 rows with scale and offset)" if in_bytes
                  else "parameters (embeddings with projections, biases, MLP)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def alpha_ablation(rows, axes=None, title: str | None = None):
    """Train and test MSE on the most popular and the rarest third of items against alpha
    (the paper's Fig. 3c/3f), mean +- std over seeds of each cell's best-validation run."""
    import matplotlib.pyplot as plt

    chosen = select(rows)
    if not chosen:
        raise ValueError("alpha_ablation: no finished run to plot (every run is infeasible or diverged, or none ran)")
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0))
    else:
        fig = axes[0].figure
    alphas = sorted({r["alpha"] for r in chosen})
    for ax, third in zip(axes, ("popular", "rare")):
        for split, style in (("train", "-o"), ("test", "--s")):
            metric = f"{split}_mse_{third}"
            mean = [np.mean([r[metric] for r in chosen if r["alpha"] == a]) for a in alphas]
            std = [np.std([r[metric] for r in chosen if r["alpha"] == a]) for a in alphas]
            ax.errorbar(alphas, mean, yerr=std, fmt=style, capsize=3, label=f"{split}")
        ax.set_xlabel("alpha (temperature)")
        ax.set_ylabel("MSE")
        ax.set_title(f"{'most popular' if third == 'popular' else 'rarest'} third of items")
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig


def block_dims(spec, ax=None, label: str = ""):
    """Dimension of each block, with the block's row count on the bars."""
    fig, ax = _axes(ax, (6.0, 3.5))
    blocks = np.arange(spec.n_blocks)
    bars = ax.bar(blocks, spec.dims, color="tab:blue", alpha=0.8)
    for bar, size in zip(bars, spec.sizes):
        ax.annotate(f"{size:,}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8)
    ax.axhline(spec.base_dim, color="gray", linestyle=":", label=f"base dim {spec.base_dim}")
    ax.set_xlabel("block (most popular first); numbers: rows")
    ax.set_ylabel("dimension")
    ax.set_xticks(blocks)
    ax.legend()
    if label:
        ax.set_title(label)
    return fig


def frequency_curve(counts: Sequence[float], blocking=None, ax=None, label: str = ""):
    """Row frequencies sorted most frequent first (log y), with the blocks' boundaries."""
    fig, ax = _axes(ax, (6.0, 3.5))
    counts = np.sort(np.asarray(counts, dtype=float))[::-1]
    ax.plot(np.arange(1, len(counts) + 1), np.maximum(counts, 0.5), color="tab:blue")
    if blocking is not None:
        for bound in np.cumsum(blocking.sizes)[:-1]:
            ax.axvline(bound + 0.5, color="tab:red", alpha=0.5, linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("rank (most frequent first)")
    ax.set_ylabel("training frequency")
    if label:
        ax.set_title(label)
    return fig


def save(fig, path) -> list[Path]:
    """Write ``fig`` as ``path.png`` and ``path.pdf`` (atomically); returns the two paths."""
    path = Path(path)
    written = []
    for suffix in (".png", ".pdf"):
        target = path.with_suffix(suffix)
        buffer = stdio.BytesIO()
        fig.savefig(buffer, format=suffix[1:], dpi=150, bbox_inches="tight")
        with io.atomic_write(target, "wb") as f:
            f.write(buffer.getvalue())
        written.append(target)
    return written


def _axes_row(axes, count: int):
    """``(figure, axes)``: the given axes, or a new row of ``count``."""
    if axes is not None:
        return axes[0].figure, axes
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, count, figsize=(5.5 * count, 4.0), squeeze=False)
    return fig, axes[0]


def ctr_curves(rows, metrics: Sequence[str] = ("test_accuracy", "test_logloss"), axes=None,
               title: str | None = None):
    """Click-sweep metrics against embedding parameters (log x), one curve per alpha and the
    uniform tables, mean +- std over seeds (:func:`mdcf.sweep.ctr_cells`)."""
    cells = ctr_cells(rows)
    if not cells:
        raise ValueError("ctr_curves: no finished run to plot (every run is infeasible or diverged, or none ran)")
    fig, axes = _axes_row(axes, len(metrics))
    curves = sorted({(method, alpha) for _, method, alpha in cells}, key=lambda c: (c[0] != "uniform", c[1]))
    for ax, metric in zip(axes, metrics):
        for method, alpha in curves:
            keys = sorted(k for k in cells if k[1:] == (method, alpha))
            params = [np.mean([r["embedding_params"] for r in cells[k]]) for k in keys]
            values = [[r[metric] for r in cells[k]] for k in keys]
            style = dict(color="black", linestyle="--", marker="s") if method == "uniform" else \
                dict(marker="o" if method == "md" else "^", linestyle="-" if method == "md" else ":")
            label = {"uniform": "uniform", "md": f"MD per field, alpha = {alpha:g}"}.get(
                method, f"MD by frequency, alpha = {alpha:g}")
            ax.errorbar(params, [np.mean(v) for v in values], yerr=[np.std(v) for v in values], capsize=3,
                        label=label, **style)
        ax.set_xscale("log")
        ax.set_xlabel("embedding parameters (projections included)")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    return fig


def ctr_method_curves(rows, metrics: Sequence[str] = ("test_logloss", "test_auc"), axes=None,
                      title: str | None = None, unit: str = "params"):
    """Click-sweep metrics against embedding parameters (embedding bytes with
    ``unit="bytes"``; log x), one curve per method at its validation-chosen setting per
    budget (:func:`mdcf.sweep.ctr_method_cells`), mean +- std over seeds."""
    if unit not in ("params", "bytes"):
        raise ValueError(f"unit must be 'params' or 'bytes', got {unit!r}")
    cells = ctr_method_cells(rows)
    if not cells:
        raise ValueError("ctr_method_curves: no finished run to plot (every run is infeasible or diverged, or none ran)")
    fig, axes = _axes_row(axes, len(metrics))
    for ax, metric in zip(axes, metrics):
        for method, marker in zip(CTR_METHODS, "sov^<>DPX"):
            points = sorted((dim, runs) for (dim, m), (_, runs) in cells.items() if m == method)
            if not points:
                continue
            params = [np.mean([r[f"embedding_{unit}"] for r in runs]) for _, runs in points]
            values = [[r[metric] for r in runs] for _, runs in points]
            style = dict(color="black", linestyle="--") if method == "uniform" else {}
            ax.errorbar(params, [np.mean(v) for v in values], yerr=[np.std(v) for v in values], capsize=3,
                        marker=marker, label=method, **style)
        ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("embedding bytes (scales and offsets, projections and cores included)" if unit == "bytes"
                      else "embedding parameters (projections and cores included)")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def ctr_learning_curves(rows, budget_dim: int, ax=None, title: str | None = None):
    """Training logloss along training (the click sweep's ``train_curve``: the mean over
    each sixteenth of every epoch) at one budget, one curve per method and alpha, mean
    over seeds."""
    cells = {key: runs for key, runs in ctr_cells(rows).items() if key[0] == budget_dim}
    if not cells:
        raise ValueError(f"ctr_learning_curves: no finished run at budget d = {budget_dim}")
    fig, ax = _axes(ax)
    for (_, method, alpha), runs in cells.items():
        curves = [np.array(r["train_curve"].split(), float) for r in runs if r.get("train_curve")]
        if not curves:
            continue
        curve = np.mean([c[: min(map(len, curves))] for c in curves], axis=0)
        epochs = runs[0]["epochs"]
        x = (np.arange(len(curve)) + 0.5) * epochs / len(curve)
        label = {"uniform": f"uniform d = {budget_dim}", "md": f"MD per field, alpha = {alpha:g}"}.get(
            method, f"MD by frequency, alpha = {alpha:g}")
        ax.plot(x, curve, label=label, **(dict(color="black", linestyle="--") if method == "uniform" else {}))
    ax.set_xlabel("epochs")
    ax.set_ylabel("train logloss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    return fig

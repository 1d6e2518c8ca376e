"""Evaluation figures built as ``matplotlib.figure.Figure`` objects.

Every ``plot_*`` function returns a new :class:`matplotlib.figure.Figure` and never
touches pyplot's global state, so it is safe in worker processes and threads. The
caller saves it (``fig.savefig(path, dpi=150)``). ``roc_points`` and ``pr_points`` return
plain rows for the ROC and precision-recall plot files DVC draws (a ``class`` column, one curve each).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)


def _one_vs_rest(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Validate inputs and return (int labels (N,), float probs (N, K))."""
    y = np.asarray(y_true).reshape(-1).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0] or p.shape[1] != len(classes):
        raise ValueError(f"expected probs (N={y.shape[0]}, K={len(classes)}), got {p.shape}")
    return y, p


def _both_present(mask: np.ndarray) -> bool:
    """True when a binary label vector has at least one positive and one negative."""
    return bool(mask.any() and (~mask).any())


def _roc_curves(
    y: np.ndarray, p: np.ndarray, classes: Sequence[str], caller: str
) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, fpr, tpr, thresholds) of each class's one-vs-rest ROC; a class without both sides is logged, skipped."""
    from sklearn.metrics import roc_curve

    for c, name in enumerate(classes):
        pos = y == c
        if not _both_present(pos):
            logger.warning("%s: class %r skipped (needs positives and negatives)", caller, name)
            continue
        fpr, tpr, thr = roc_curve(pos, p[:, c])
        yield name, fpr, tpr, thr


def _pr_curves(
    y: np.ndarray, p: np.ndarray, classes: Sequence[str], caller: str
) -> Iterator[tuple[int, str, np.ndarray, np.ndarray, np.ndarray]]:
    """(index, name, precision, recall, thresholds) of each class's one-vs-rest precision-recall curve.

    sklearn's order: thresholds rising, recall falling, ending at (recall 0, precision 1) with no threshold. A
    class without positives is logged and skipped.
    """
    from sklearn.metrics import precision_recall_curve

    for c, name in enumerate(classes):
        pos = y == c
        if not pos.any():
            logger.warning("%s: class %r skipped (no positives)", caller, name)
            continue
        precision, recall, thr = precision_recall_curve(pos, p[:, c])
        yield c, name, precision, recall, thr


def _curve_figure() -> tuple[Figure, Axes]:
    """A new figure with one axes, the size the ROC and precision-recall plots share."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 5.5), layout="constrained")
    return fig, fig.subplots()


def _finish_curve(ax: Axes, xlabel: str, ylabel: str, title: str, legend_loc: str) -> None:
    """Unit axes (a little headroom above 1), labels, title and a small legend."""
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc=legend_loc, fontsize=8)


def plot_confusion_matrix(cm: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str]) -> Figure:
    """Two panels: counts and row-normalised (recall) confusion matrix, true on y, predicted on x."""
    cm = np.asarray(cm, dtype=np.float64)
    k = len(classes)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {k} classes")
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(4.0, 0.9 * k + 2.5)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2 * size + 1.0, size), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, data, title, fmt, vmax in (
        (axes[0], cm, "Counts", "{:.0f}", max(cm.max(), 1.0)),
        (axes[1], norm, "Row-normalised", "{:.2f}", 1.0),
    ):
        im = ax.imshow(data, cmap="Blues", vmin=0.0, vmax=vmax)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right")
        ax.set_yticks(range(k), labels=list(classes))
        ax.set_xlabel("Predicted")
        ax.set_ylabel("True")
        ax.set_title(title)
        for i in range(k):
            for j in range(k):
                colour = "white" if data[i, j] > 0.6 * vmax else "black"
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", color=colour, fontsize=9)
    return fig


def plot_roc(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> Figure:
    """One-vs-rest ROC curve per class plus the macro-average curve (mean TPR on a common FPR grid)."""
    from sklearn.metrics import auc

    y, p = _one_vs_rest(y_true, probs, classes)
    fig, ax = _curve_figure()
    grid = np.linspace(0.0, 1.0, 201)
    tprs = []
    for name, fpr, tpr, _ in _roc_curves(y, p, classes, "ROC"):
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC={auc(fpr, tpr):.3f})")
        interp = np.interp(grid, fpr, tpr)
        interp[0] = 0.0
        tprs.append(interp)
    if tprs:
        mean_tpr = np.mean(tprs, axis=0)
        mean_tpr[-1] = 1.0
        ax.plot(grid, mean_tpr, "k--", lw=2.0, label=f"macro (AUC={auc(grid, mean_tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    _finish_curve(
        ax,
        "False positive rate (1 - specificity)",
        "True positive rate (sensitivity)",
        "ROC (one-vs-rest)",
        "lower right",
    )
    return fig


def plot_pr(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> Figure:
    """One-vs-rest precision-recall curve per class with average precision and prevalence lines."""
    from sklearn.metrics import average_precision_score

    y, p = _one_vs_rest(y_true, probs, classes)
    fig, ax = _curve_figure()
    for c, name, precision, recall, _ in _pr_curves(y, p, classes, "PR"):
        pos = y == c
        ap = average_precision_score(pos, p[:, c])
        (line,) = ax.step(recall, precision, where="post", lw=1.5, label=f"{name} (AP={ap:.3f})")
        ax.axhline(pos.mean(), color=line.get_color(), lw=0.7, ls=":")
    _finish_curve(ax, "Recall (sensitivity)", "Precision (PPV)", "Precision-recall (one-vs-rest)", "lower left")
    return fig


def plot_reliability(
    y_true: np.ndarray,
    probs: np.ndarray,
    n_bins: int = 15,
    ece_ci: tuple[float | None, float | None] = (None, None),
) -> Figure:
    """Reliability diagram of top-1 confidence vs accuracy over a histogram of the bins' image counts (each bar
    labelled with its count: a bin of three images says little); ECE, with its interval when given, in the title."""
    from cxr.stats.calibration import calibration

    cal = calibration(y_true, probs, n_bins=n_bins)
    edges = np.asarray(cal["bin_edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    acc = np.array([np.nan if v is None else v for v in cal["bin_accuracy"]])
    conf = np.array([np.nan if v is None else v for v in cal["bin_confidence"]])
    count = np.asarray(cal["bin_count"], dtype=np.float64)
    filled = count > 0

    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 6.5), layout="constrained")
    ax, hx = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centres[filled], acc[filled], width=width, edgecolor="black", color="tab:blue", alpha=0.8, label="accuracy")
    ax.bar(
        centres[filled],
        conf[filled] - acc[filled],
        bottom=acc[filled],
        width=width,
        edgecolor="tab:red",
        color="tab:red",
        alpha=0.25,
        label="gap",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1.0, label="perfect calibration")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("Accuracy")
    lo, hi = ece_ci
    interval = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    ax.set_title(f"Reliability (ECE={cal['ece']:.3f}{interval}, Brier={cal['brier']:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    bars = hx.bar(centres, count, width=width, color="grey", edgecolor="black")
    hx.bar_label(bars, labels=[f"{int(c)}" if c else "" for c in count], fontsize=7, padding=1)
    hx.set_ylim(0, max(1.0, float(count.max())) * 1.25)  # room for the labels
    hx.set_xlabel("Confidence (max probability)")
    hx.set_ylabel("Images")
    return fig


def roc_points(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> list[dict]:
    """Rows {class, fpr, tpr, threshold} of one-vs-rest ROC curves (sklearn's infinite first threshold -> 1.0)."""
    y, p = _one_vs_rest(y_true, probs, classes)
    rows: list[dict] = []
    for name, fpr, tpr, thr in _roc_curves(y, p, classes, "roc_points"):
        thr = np.where(np.isfinite(thr), thr, 1.0)
        rows.extend(
            {"class": str(name), "fpr": float(f), "tpr": float(t), "threshold": float(h)}
            for f, t, h in zip(fpr, tpr, thr, strict=True)
        )
    return rows


def pr_points(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> list[dict]:
    """Rows {class, recall, precision, threshold} of one-vs-rest precision-recall curves, each from recall 0 up.

    Each curve runs in the order it is drawn (thresholds falling), from sklearn's end point at recall 0, whose
    threshold is none (nothing flagged) and is written as 1.0, as ``roc_points`` writes the infinite one.
    """
    y, p = _one_vs_rest(y_true, probs, classes)
    rows: list[dict] = []
    for _, name, precision, recall, thr in _pr_curves(y, p, classes, "pr_points"):
        thr = np.append(thr, 1.0)
        rows.extend(
            {"class": str(name), "recall": float(r), "precision": float(q), "threshold": float(h)}
            for r, q, h in zip(recall[::-1], precision[::-1], thr[::-1], strict=True)
        )
    return rows

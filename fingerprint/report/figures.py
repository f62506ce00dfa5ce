"""The report's figures, rendered with matplotlib (Agg) to PNG bytes without timestamps (reruns are identical).

Sample grids of each split, training curves, ROC curves of every scorer,
per-class score histograms with each scorer's threshold, and neighbour
strips (a real image beside its nearest generated images).
"""

from __future__ import annotations

import io

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from fingerprint.report.data import RunInputs, truth_for

matplotlib.use("Agg")  # figures are only ever written to files


def fig_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes (no timestamp metadata, so reruns are byte-identical) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def sample_grid(groups: dict[str, list[str]], pixels: dict[str, np.ndarray], split: str) -> bytes:
    """One row of sample images per role/label group."""
    ncols = max(len(v) for v in groups.values())
    fig, axes = plt.subplots(len(groups), ncols, figsize=(1.6 * ncols, 1.8 * len(groups)), squeeze=False)
    for row, (g, keys) in zip(axes, sorted(groups.items())):
        for ax, key in zip(row, keys + [None] * (ncols - len(keys))):
            ax.axis("off")
            if key is not None and key in pixels:
                ax.imshow(pixels[key], cmap="gray", vmin=0, vmax=255)
                ax.set_title(f"{g}\n{key}", fontsize=7)
    fig.suptitle(split, fontsize=9)
    fig.tight_layout()
    return fig_png(fig)


def _loss_panel(ax, steps: list[dict]) -> None:
    x = [r["step"] for r in steps]
    y = np.array([r["loss"] for r in steps], dtype=float)
    ax.plot(x, y, lw=0.8, alpha=0.45, label="logged loss")
    w = max(1, len(y) // 20)
    if w > 1:
        ax.plot(x[w - 1 :], np.convolve(y, np.ones(w) / w, mode="valid"), lw=1.6, label=f"mean of {w}")
    ax.set_xlabel("step"), ax.set_title("training loss", fontsize=10), ax.legend(fontsize=7)


def _val_panel(ax, epochs: list[dict]) -> None:
    ev = [e for e in epochs if "val_auc" in e]
    ax.plot([e["epoch"] for e in ev], [e["val_auc"] for e in ev], "o-", label="val AUC")
    ax.set_ylim(0, 1.02), ax.set_xlabel("epoch"), ax.set_title("validation", fontsize=10)
    handles = ax.get_lines()
    if any("val_loss" in e for e in ev):
        ax2 = ax.twinx()
        x, y = [e["epoch"] for e in ev], [e.get("val_loss", np.nan) for e in ev]
        handles += ax2.plot(x, y, "s--", color="tab:red", label="val loss")
        ax2.set_ylabel("val loss", fontsize=8)
    ax.legend(handles=handles, fontsize=7, loc="lower right")


def training_figure(steps: list[dict], epochs: list[dict]) -> bytes:
    """Loss and learning rate per logged step; validation AUC and loss per epoch."""
    has_val = any("val_auc" in e for e in epochs)
    panels = [p for p in ("loss", "lr", "val") if (p != "val" and steps) or (p == "val" and has_val)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.2), squeeze=False)
    for ax, p in zip(axes[0], panels):
        if p == "loss":
            _loss_panel(ax, steps)
        elif p == "lr":
            ax.plot([r["step"] for r in steps], [r.get("lr", np.nan) for r in steps], lw=1.2)
            ax.set_xlabel("step"), ax.set_title("learning rate", fontsize=10)
        else:
            _val_panel(ax, epochs)
    fig.tight_layout()
    return fig_png(fig)


def gan_curve_figure(curve: list[dict]) -> bytes:
    """A GAN's adversarial training: discriminator and generator losses, and D's mean output on real and
    generated images, per logged step (synth.json `generator.curve` of the gan family)."""
    x = [r["step"] for r in curve]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8.8, 3.2))
    a.plot(x, [r["d_loss"] for r in curve], lw=1.2, label="discriminator")
    a.plot(x, [r["g_loss"] for r in curve], lw=1.2, label="generator")
    a.set_xlabel("step"), a.set_title("adversarial losses", fontsize=10), a.legend(fontsize=7)
    b.plot(x, [r["d_real"] for r in curve], lw=1.2, label="D(real)")
    b.plot(x, [r["d_fake"] for r in curve], lw=1.2, label="D(generated)")
    b.set_ylim(0, 1), b.set_xlabel("step"), b.set_title("discriminator output", fontsize=10), b.legend(fontsize=7)
    fig.tight_layout()
    return fig_png(fig)


def roc_figure(curves: list[tuple[float, str, np.ndarray, np.ndarray]]) -> bytes:
    """ROC curves (auc, name, fpr, tpr), best first, on one plot."""
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    cmap = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    for i, (auc, name, fpr, tpr) in enumerate(curves):
        ax.plot(fpr, tpr, lw=1.6 if i < 3 else 1.0, color=cmap(i % cmap.N), label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="0.5", lw=1)
    ax.set_xlabel("false positive rate"), ax.set_ylabel("true positive rate"), ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig_png(fig)


def histogram_figure(run: RunInputs) -> bytes:
    """Per scorer: used and not-used score histograms where the truth is known (else all scores), threshold dashed."""
    names = list(run.scores)
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 2.7 * nrows), squeeze=False)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        table = run.scores[name]
        bins = np.histogram_bin_edges(table.scores, bins=20)
        t = truth_for(run, name) if run.truth else None
        if t is not None:
            y, sc, _ = t
            ax.hist(sc[y == 1], bins=bins, alpha=0.6, color="tab:red", label="used")
            ax.hist(sc[y == 0], bins=bins, alpha=0.6, color="tab:blue", label="not used")
        else:
            ax.hist(table.scores, bins=bins, color="0.5", label="all")
        thr = run.score_meta.get(name, {}).get("threshold")
        if isinstance(thr, (int, float)):
            ax.axvline(thr, color="k", ls="--", lw=1, label="threshold")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig_png(fig)


def strip_figure(members, nb, row_of, k, pixels, score, pair) -> bytes:
    """One row per real image: it (red frame) and its k nearest generated images, with similarities."""
    fig, axes = plt.subplots(len(members), k + 1, figsize=(1.45 * (k + 1), 1.75 * len(members)), squeeze=False)
    for row, key in zip(axes, members):
        i = row_of[key]
        cells = [(key, f"{key}\nscore {score[key]:.3f}")]
        for j in range(k):
            cap = f"{nb['neighbour_keys'][i, j]}\nsim {nb['neighbour_sims'][i, j]:.3f}"
            cap += f", p {pair[i, j]:.3f}" if pair is not None else ""
            cells.append((str(nb["neighbour_keys"][i, j]), cap))
        for ax, (ck, cap) in zip(row, cells):
            ax.set_xticks([]), ax.set_yticks([])
            if ck in pixels:
                ax.imshow(pixels[ck], cmap="gray", vmin=0, vmax=255)
            else:
                ax.text(0.5, 0.5, "image\nnot found", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            ax.set_title(cap, fontsize=6.5)
        for side in row[0].spines.values():
            side.set_color("tab:red"), side.set_linewidth(2)
    fig.tight_layout()
    return fig_png(fig)

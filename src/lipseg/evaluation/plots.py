"""Figures for people (PNG: training curves, BIC, CED curves) and the BIC and CED tables `dvc plots` draws."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from lipseg.core.files import write_bytes_atomic


def save_figure(figure: plt.Figure, path: Path) -> None:
    """`figure` as a PNG at `path`, written whole or not at all; the figure is closed."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    write_bytes_atomic(path, buffer.getvalue())


def training_curves(
    history: Sequence[dict],
    path: Path,
    title: str,
    metric_key: str = "val_nme",
    metric_label: str = "NME (mouth width)",
    loss_label: str = "loss (MSE / mouth width²)",
) -> None:
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, metric_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], label="train")
    loss_axis.plot(epochs, [row["val_loss"] for row in history], label="validation")
    loss_axis.set(xlabel="epoch", ylabel=loss_label, yscale="log", title="loss")
    loss_axis.legend()
    metric_axis.plot(epochs, [row[metric_key] for row in history], color="tab:green")
    metric_axis.set(xlabel="epoch", ylabel=metric_label, title=f"validation {metric_label}")
    figure.suptitle(title)
    save_figure(figure, path)


def bic_curve(table: Sequence[dict], chosen_k: int, path: Path) -> None:
    ks = [row["k"] for row in table]
    figure, axis = plt.subplots(figsize=(5, 3.5))
    axis.plot(ks, [row["bic"] for row in table], marker="o")
    axis.axvline(chosen_k, color="tab:red", linestyle="--", label=f"chosen K = {chosen_k}")
    axis.set(xlabel="K (components)", ylabel="BIC (lower is better)", title="GMM model selection on FC5 features")
    axis.set_xticks(ks)
    axis.legend()
    save_figure(figure, path)


def ced_curves(thresholds: np.ndarray, curves: dict[str, np.ndarray], path: Path, xlabel: str) -> None:
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for label, fractions in curves.items():
        axis.plot(thresholds, fractions, label=label)
    axis.set(xlabel=xlabel, ylabel="fraction of test images", ylim=(0, 1.01), title="Cumulative error distribution")
    axis.grid(alpha=0.3)
    axis.legend()
    save_figure(figure, path)


# The CSVs below are what `dvc plots` draws (dvc.yaml's top-level `plots:` names their columns as x and y).


def bic_csv(table: Sequence[dict]) -> str:
    """One row per K tried: k, bic, aic."""
    return "k,bic,aic\n" + "".join(f"{row['k']},{row['bic']:.3f},{row['aic']:.3f}\n" for row in table)


def ced_csv(thresholds: np.ndarray, curves: dict[str, np.ndarray]) -> str:
    """One row per NME threshold: the fraction of test faces at or below it, one column per model."""
    header = "threshold," + ",".join(curves) + "\n"
    rows = (
        f"{threshold:.4f}," + ",".join(f"{curves[label][index]:.4f}" for label in curves) + "\n"
        for index, threshold in enumerate(thresholds)
    )
    return header + "".join(rows)


SEGMENTER_F1_COLUMNS = ("f1_lips", "f1_upper_lip", "f1_lower_lip", "f1_inner_mouth", "f1_mouth")


def segmenter_f1_csv(summaries: dict[str, dict]) -> str:
    """One row per mask source (the landmark polygons and each segmenter): its test F1 per class."""
    rows = (
        name + "," + ",".join(f"{summary[column]:.4f}" for column in SEGMENTER_F1_COLUMNS) + "\n"
        for name, summary in summaries.items()
    )
    return "model," + ",".join(SEGMENTER_F1_COLUMNS) + "\n" + "".join(rows)

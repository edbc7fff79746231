"""What the models do: plots and tables from a run's artifacts, on one page (made by `python -m src.report`).

Reads runs/<run>/ and writes to an output folder: confusion.png (counts and row-normalised), classes.csv
(precision/recall/F1/AUC per class), roc.png (one-vs-rest), learning_curves.png (per fold, train vs
validation), mistakes.png (the most confident errors), label_issues.png and label_issues.csv (training rows
whose label the out-of-fold probabilities contradict, by confident learning), samples.png (training digits
per class) and index.html showing them with the run's CV and config.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import pandas as pd

from src import data, ensemble
from src.errors import DigitsError

PNGS = ("confusion.png", "roc.png", "learning_curves.png", "mistakes.png", "label_issues.png", "samples.png")


def load_run(run_dir: Path) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """(config, images uint8 [N, 28, 28], labels [N], OOF probabilities float32 [N, 10]) of a finished run.

    Row i is train.csv row `train_rows.npy[i]` of the run.
    """
    for name in ("config.json", "cv.json", "oof_probs.npy", "train_rows.npy"):
        if not (run_dir / name).is_file():
            raise DigitsError(f"{run_dir}: no {name}; is it a finished run folder?")
    config = json.loads((run_dir / "config.json").read_text())
    folder = Path(config["data"]["folder"])
    if not data.has_data(folder):
        raise DigitsError(f"{run_dir}: its training data {folder} is gone; the report needs train.csv")
    images, labels, _, _ = data.load_train(folder)
    rows = np.load(run_dir / "train_rows.npy")
    return config, images[rows], labels[rows], np.load(run_dir / "oof_probs.npy")


def confusion(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """int [10, 10]: row = true digit, column = predicted digit."""
    matrix = np.zeros((10, 10), np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def class_table(labels: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

    predicted = probs.argmax(1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=range(10), zero_division=0
    )
    aucs = [roc_auc_score(labels == k, probs[:, k]) if 0 < (labels == k).sum() < len(labels) else np.nan
            for k in range(10)]  # fmt: skip
    return pd.DataFrame({"digit": range(10), "precision": precision, "recall": recall, "f1": f1,
                         "auc": aucs, "support": support}).round(5)  # fmt: skip


def plot_confusion(matrix: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax, values, title, fmt in ((axes[0], matrix, "counts", "d"), (axes[1], normalised, "row-normalised", ".3f")):
        ax.imshow(np.log1p(values * (1000 if fmt != "d" else 1)), cmap="Blues")
        for (i, j), v in np.ndenumerate(values):
            if v:
                ax.text(j, i, format(v, fmt) if fmt == "d" else f"{v:.3f}".lstrip("0"), ha="center", va="center",
                        fontsize=7, color="white" if i == j else "black")  # fmt: skip
        ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true", title=f"Confusion ({title})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_roc(labels: np.ndarray, probs: np.ndarray, table: pd.DataFrame, path: Path) -> None:
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12, 5))
    for k in range(10):
        if np.isnan(table.auc[k]):
            continue
        fpr, tpr, _ = roc_curve(labels == k, probs[:, k])
        for a in (ax, zoom):
            a.plot(fpr, tpr, lw=1.2, label=f"{k}: AUC {table.auc[k]:.5f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="One-vs-rest ROC (out-of-fold)")
    zoom.set(xlim=(0, 0.02), ylim=(0.9, 1.0), xlabel="false positive rate", title="Top-left corner")
    zoom.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_learning_curves(run_dir: Path, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for history_csv in (d / "history.csv" for d in ensemble.fold_dirs(run_dir) if (d / "history.csv").is_file()):
        history = pd.read_csv(history_csv)
        epochs = history["epoch"] + 1
        for ax, metric in zip(axes, ("loss", "accuracy")):
            (line,) = ax.plot(epochs, history[metric], lw=1, alpha=0.8, label=f"{history_csv.parent.name} train")
            ax.plot(epochs, history[f"val_{metric}"], lw=1.5, ls="--", color=line.get_color(), label="validation")
    axes[0].set(xlabel="epoch", ylabel="loss", title="Loss (solid: train, dashed: validation)", yscale="log")
    axes[1].set(xlabel="epoch", ylabel="accuracy", title="Accuracy (solid: train, dashed: validation)")
    axes[1].legend(fontsize=7, ncol=2)
    for ax in axes:
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_grid(images: np.ndarray, titles: list[str], path: Path, columns: int, suptitle: str) -> None:
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(images) // columns))
    # 0.6 inch above the rows for the suptitle: a one-row grid (few label issues) was 148 px high, its titles cramped
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.2, rows * 1.35 + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, cmap="gray_r")
        ax.set_title(title, fontsize=7)
    fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confident_mistakes(labels: np.ndarray, probs: np.ndarray, n: int) -> np.ndarray:
    """Indices of the `n` wrong predictions with the highest predicted probability."""
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    return wrong[np.argsort(-probs[wrong].max(1))][:n]


def issues_table(rows: np.ndarray, train_rows: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """label_issues.csv: the train.csv row, its label, the likely digit and both probabilities."""
    likely = probs[rows].argmax(1)
    return pd.DataFrame({"train_row": train_rows[rows], "label": labels[rows], "likely": likely,
                         "p_label": probs[rows, labels[rows]].round(5),
                         "p_likely": probs[rows, likely].round(5)})  # fmt: skip


def samples_per_class(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == k), min(per_class, (labels == k).sum()), replace=False)
             for k in range(10)]  # fmt: skip
    return np.concatenate(picks)


def write_html(out: Path, run_dir: Path, config: dict, cv: dict, table: pd.DataFrame) -> Path:
    folds = pd.DataFrame(cv["folds"])
    columns = ["name", "seed", "fold", "val_accuracy", "best_epoch", "epochs_run", "train_seconds"]
    folds = folds[[c for c in columns if c in folds]]  # runs saved before folds had a name lack it
    images = "\n".join(f'<h2>{name[:-4].replace("_", " ")}</h2><img src="{name}" alt="{name}">' for name in PNGS)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Report: {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:2em auto}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style></head><body>
<h1>{html.escape(run_dir.name)}: CV accuracy {cv["cv_accuracy"]:.5f}</h1>
<p>{cv["models"]} models, {cv["oof_rows"]} out-of-fold rows, TTA rounds {cv["tta_rounds"]}.</p>
<h2>Folds</h2>{folds.to_html(index=False)}
<h2>Per class</h2>{table.to_html(index=False)}
{images}
<h2>Config</h2><pre>{html.escape(json.dumps(config, indent=2))}</pre></body></html>"""
    (out / "index.html").write_text(page)
    return out / "index.html"


def make_report(run_dir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    config, images, labels, probs = load_run(run_dir)
    cv = json.loads((run_dir / "cv.json").read_text())
    covered = probs.sum(1) > 0  # rows that some fold predicted (all of them in a full K-fold run)
    train_rows = np.load(run_dir / "train_rows.npy")[covered]
    images, labels, probs = images[covered], labels[covered], probs[covered]
    out.mkdir(parents=True, exist_ok=True)
    predicted = probs.argmax(1)
    matrix = confusion(labels, predicted)
    table = class_table(labels, probs)
    table.to_csv(out / "classes.csv", index=False)
    plot_confusion(matrix, out / "confusion.png")
    plot_roc(labels, probs, table, out / "roc.png")
    plot_learning_curves(run_dir, out / "learning_curves.png")
    worst = confident_mistakes(labels, probs, 40)
    titles = [f"true {labels[i]} pred {predicted[i]}\np={probs[i].max():.3f}" for i in worst]
    plot_grid(images[worst], titles, out / "mistakes.png", 10, f"Most confident mistakes ({len(worst)} shown)")
    issues = ensemble.label_issues(labels, probs)
    issues_table(issues, train_rows, labels, probs).to_csv(out / "label_issues.csv", index=False)
    titles = [f"label {labels[i]} likely {probs[i].argmax()}\np(label)={probs[i, labels[i]]:.3f}" for i in issues[:40]]
    plot_grid(images[issues[:40]], titles, out / "label_issues.png", 10,
              f"Likely mislabelled training rows ({len(issues)} found, {min(40, len(issues))} shown)")  # fmt: skip
    print(f"{len(issues)} training rows whose label the out-of-fold probabilities contradict: label_issues.csv")
    picks = samples_per_class(labels, 10)
    plot_grid(images[picks], [str(labels[i]) for i in picks], out / "samples.png", 10, "Training digits per class")
    print(table.to_string(index=False))
    return write_html(out, run_dir, config, cv, table)

"""Each GLUE task's official metrics, computed by scikit-learn and SciPy."""

from __future__ import annotations

import numpy as np

METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman")


def compute(names, predictions, labels) -> dict:
    """``predictions``: class ids (classification) or values (regression), aligned with ``labels``."""
    from scipy import stats  # noqa: PLC0415
    from sklearn import metrics  # noqa: PLC0415

    predictions, labels = np.asarray(predictions), np.asarray(labels)
    out = {}
    for name in names:
        if name == "accuracy":
            out[name] = float(metrics.accuracy_score(labels, predictions))
        elif name == "f1":
            average = "binary" if len(set(labels.tolist()) | set(predictions.tolist())) <= 2 else "macro"
            out[name] = float(metrics.f1_score(labels, predictions, average=average))
        elif name == "mcc":
            out[name] = float(metrics.matthews_corrcoef(labels, predictions))
        elif name == "pearson":
            out[name] = float(stats.pearsonr(predictions, labels)[0])
        elif name == "spearman":
            out[name] = float(stats.spearmanr(predictions, labels)[0])
        else:
            raise ValueError(f"unknown metric {name!r}; known: {METRICS}")
    return out


def selection_score(result: dict, names, selection: str | None) -> float:
    """The dev score that picks the best evaluation: the task's selection metric, else (as upstream) the mean of
    its metrics."""
    if selection:
        return result[selection]
    return float(np.mean([result[n] for n in names]))

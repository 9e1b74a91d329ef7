"""Plots of a run's ``metrics.jsonl`` (matplotlib, no display needed)."""

from __future__ import annotations

import os

from .metrics import read_metrics

# file name -> (metrics, y label); a figure is drawn when the run logged any of its metrics
PLOTS = {"loss": (("loss",), "loss"), "accuracy": (("accuracy",), "MLM accuracy"), "lr": (("lr",), "learning rate"),
         "throughput": (("tokens_per_s",), "tokens / s"),
         # objective=rtd
         "generator": (("generator_loss",), "generator MLM loss"),
         "discriminator": (("auc", "precision", "recall", "discriminator_accuracy"), "discriminator")}


def plot_run(run_dir, out_dir=None) -> list[str]:
    """Write ``loss.png``, ``lr.png``, ``throughput.png`` and ``accuracy.png`` (MLM) or ``generator.png`` and
    ``discriminator.png`` (RTD): train and, where logged, validation curves, to ``out_dir`` (default
    ``<run_dir>/plots``); returns the paths."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    run_dir = os.fspath(run_dir)
    if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (is this a run directory of launch/pretrain.py?)")
    records = read_metrics(run_dir)
    out_dir = os.fspath(out_dir or os.path.join(run_dir, "plots"))
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, (keys, label) in PLOTS.items():
        if not any(r.get(key) is not None for r in records for key in keys):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            for split in ("train", "validation"):
                points = [(r["step"], r[key]) for r in records if r.get("split") == split and r.get(key) is not None]
                if points:
                    steps, values = zip(*points)
                    ax.plot(steps, values, label=split if len(keys) == 1 else f"{split} {key}",
                            marker="o" if split == "validation" else None, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(f"{os.path.basename(os.path.abspath(run_dir))}: {label}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        path = os.path.join(out_dir, f"{name}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written

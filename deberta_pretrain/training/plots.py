"""Plots of a run's ``metrics.jsonl`` and of its checkpoints' fine-tuning scores (matplotlib, no display needed)."""

from __future__ import annotations

import os
import re

from ..fileio import claim_output, write_json_atomic
from ..layout import METRICS, PLOTS_DIR, PLOTS_MARKER, RESULTS, finetune_results_files, is_finetune_results
from .metrics import read_metrics

LEGEND_MAX = 10  # curves with a legend line each; beyond, the sources' curves share one
# file name -> (metrics, y label); a figure is drawn when the run logged any of its metrics
PLOTS = {"loss": (("loss",), "loss"), "accuracy": (("accuracy",), "MLM accuracy"), "lr": (("lr",), "learning rate"),
         "throughput": (("tokens_per_s",), "tokens / s"),
         # objective=rtd
         "generator": (("generator_loss",), "generator MLM loss"),
         "discriminator": (("auc", "precision", "recall", "discriminator_accuracy"), "discriminator")}


def plot_run(run_dir, out_dir=None) -> list[str]:
    """Write ``loss.png``, ``lr.png``, ``throughput.png`` and ``accuracy.png`` (MLM) or ``generator.png`` and
    ``discriminator.png`` (RTD): train and, where logged, validation curves (and one per source of a mixture), to
    ``out_dir`` (default ``<run_dir>/plots``; another folder must be new, empty or an earlier plots folder); returns
    the paths."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    run_dir = os.fspath(run_dir)
    if is_finetune_results(run_dir):
        raise ValueError(f"{run_dir} holds fine-tuning results (their table is results.md); plot the pretraining "
                         f"run: its plots include the fine-tuning scores of its checkpoints")
    if not os.path.isfile(os.path.join(run_dir, METRICS)):
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl (is this a run directory of launch/pretrain.py?)")
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{run_dir}/metrics.jsonl holds no records yet (the first is written at train.log_every)")
    own = os.path.join(run_dir, PLOTS_DIR)
    out_dir = os.path.abspath(os.fspath(out_dir or own))
    if out_dir != os.path.abspath(own):  # the run's own plots folder is always ours to refresh; another is checked
        claim_output(out_dir, PLOTS_MARKER, "plots folder", overwrite=True)
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, PLOTS_MARKER), {"run": os.path.abspath(run_dir)})
    written = []
    for name, (keys, label) in PLOTS.items():
        if not any(r.get(key) is not None for r in records for key in keys):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        drawn = curves(records, keys)
        for curve, steps, values in drawn:
            many = len(drawn) > LEGEND_MAX and curve.startswith("validation/")  # thin, unlabelled: one legend line
            ax.plot(steps, values, label=None if many else curve, marker="o" if "validation" in curve else None,
                    markersize=3, linewidth=0.6 if many else 1.5, alpha=0.5 if many else 1.0)
        if len(drawn) > LEGEND_MAX:
            ax.plot([], [], linewidth=0.6, color="gray", label=f"{len(drawn) - 2} sources (validation/<source>)")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_title(f"{os.path.basename(os.path.abspath(run_dir))}: {label}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        written.append(save(fig, os.path.join(out_dir, f"{name}.png")))
    written += plot_finetune(run_dir, out_dir)
    return written


def plot_comparison(run_dir, others, out_dir=None) -> str:
    """``compare.png`` in ``out_dir`` (default ``<run_dir>/plots``): the loss (train thin, validation with markers)
    and the learning rate of ``run_dir`` and of each run in ``others`` (branches forked from it, say) against the
    step, one colour per run. Returns its path."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    runs = [os.fspath(run_dir), *map(os.fspath, others)]
    for run in runs:
        if not os.path.isfile(os.path.join(run, METRICS)):
            raise FileNotFoundError(f"compare: {run} has no metrics.jsonl (is it a run directory of "
                                    f"launch/pretrain.py?)")
    out_dir = os.path.abspath(os.fspath(out_dir or os.path.join(runs[0], PLOTS_DIR)))
    if out_dir != os.path.abspath(os.path.join(runs[0], PLOTS_DIR)):
        claim_output(out_dir, PLOTS_MARKER, "plots folder", overwrite=True)
    os.makedirs(out_dir, exist_ok=True)
    write_json_atomic(os.path.join(out_dir, PLOTS_MARKER), {"run": os.path.abspath(runs[0])})
    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for index, run in enumerate(runs):
        records, color, name = read_metrics(run), f"C{index % 10}", os.path.basename(os.path.abspath(run))
        for split, style in (("train", {"linewidth": 0.8, "alpha": 0.5}), ("validation", {"marker": "o"})):
            points = [(r["step"], r["loss"]) for r in records if r.get("split") == split and r.get("loss") is not None]
            if points:
                loss_ax.plot(*zip(*points), color=color, markersize=3, label=f"{name} {split}", **style)
        points = [(r["step"], r["lr"]) for r in records if r.get("split") == "train" and r.get("lr") is not None]
        if points:
            lr_ax.plot(*zip(*points), color=color, label=name)
    for ax, label in ((loss_ax, "loss"), (lr_ax, "learning rate")):
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save(fig, os.path.join(out_dir, "compare.png"))


def curves(records: list[dict], keys) -> list[tuple[str, tuple, tuple]]:
    """(label, steps, values) of each curve of a figure showing ``keys``: train and validation, and where the figure
    shows one metric, each source of a mixture (``validation/<source>``)."""
    per_source = sorted({r["split"] for r in records if str(r.get("split")).startswith("validation/")},
                        key=lambda split: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", split)])
    out = []
    for key in keys:
        for split in ("train", "validation", *(per_source if len(keys) == 1 else ())):
            points = [(r["step"], r[key]) for r in records if r.get("split") == split and r.get(key) is not None]
            if points:
                steps, values = zip(*points)
                out.append((split if len(keys) == 1 else f"{split} {key}", steps, values))
    return out


def save(fig, path: str) -> str:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _finetune_medians(run_dir, from_scratch: bool):
    """(suite, "task metric", pretraining step, median score) of every suite's results of the run's checkpoints, or
    (``from_scratch``) of its from-scratch baselines."""
    import glob  # noqa: PLC0415
    import json  # noqa: PLC0415

    for path in sorted(glob.glob(finetune_results_files(os.fspath(run_dir), RESULTS, from_scratch=from_scratch))):
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
        for task, record in results["tasks"].items():
            for metric, value in record["summary"].items():
                if value.get("median") is not None:  # undefined on every seed (e.g. a constant prediction)
                    yield results["suite"], f"{task} {metric}", results["pretraining_step"], value["median"]


def finetune_scores(run_dir) -> dict:
    """{suite: {"task metric": [(pretraining step, median score), ...]}} from the fine-tuning results of the run's
    checkpoints (``<run>/finetune/<suite>/step_N/results.json``)."""
    scores: dict = {}
    for suite, label, step, median in _finetune_medians(run_dir, from_scratch=False):
        scores.setdefault(suite, {}).setdefault(label, []).append((step, median))
    return scores


def finetune_baselines(run_dir) -> dict:
    """{suite: {"task metric": median score}} of the from-scratch runs (``<run>/finetune/<suite>/from_scratch/``)."""
    baselines: dict = {}
    for suite, label, _, median in _finetune_medians(run_dir, from_scratch=True):
        baselines.setdefault(suite, {})[label] = median
    return baselines


def plot_finetune(run_dir, out_dir) -> list[str]:
    """``finetune-<suite>.png``: each task's dev score (median over seeds) against the pretraining step, for every
    suite evaluated on the run's checkpoints, with the from-scratch score as a dashed line where one was run."""
    import matplotlib.pyplot as plt  # noqa: PLC0415

    written = []
    baselines = finetune_baselines(run_dir)
    for suite, series in finetune_scores(run_dir).items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, points in sorted(series.items()):
            steps, values = zip(*sorted(points))
            line, = ax.plot(steps, values, marker="o", markersize=3, label=label)
            if label in baselines.get(suite, {}):
                ax.axhline(baselines[suite][label], linestyle="--", color=line.get_color(), linewidth=1,
                           label=f"{label}, from scratch")
        ax.set_xlabel("pretraining step")
        ax.set_ylabel("dev score")
        ax.set_title(f"{os.path.basename(os.path.abspath(run_dir))}: {suite}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(save(fig, os.path.join(out_dir, f"finetune-{suite}.png")))
    return written

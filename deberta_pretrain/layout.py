"""Where everything the tools write lives, and what a folder is. Every file and folder name of a run, a checkpoint,
fine-tuning results, an export and a prepared dataset is spelled here and nowhere else; the trainer, checkpointing,
the mirror, plots, export and fine-tuning ask this module.

A run directory (``outputs/<name>``, written by ``launch/pretrain.py``)::

    train.log  metrics.jsonl  config_changes.jsonl  .hydra/config.yaml  model_config.json  [generator_config.json]
    spm.model | bpe_encoder.bin  STOP (a request to stop)  wandb/  plots/
    checkpoints/latest  checkpoints/step_NNNNNNNN/{complete.json (written last), universal/, DeepSpeed's files}
    finetune/<suite>/step_NNNNNNNN/   fine-tuning results of that checkpoint

Fine-tuning results: ``finetune.json`` (written first: the folder is known as results even after a failure),
``<task>.json``, ``results.json``, ``results.md``, ``metrics.jsonl``. An export: the model's files, ``README.md``
(the model card) and ``export.json`` (written last). A prepared dataset: shards and ``manifest.json`` (last).
"""

from __future__ import annotations

import json
import os

# ---- a run directory ----------------------------------------------------------------------------------------
LOG = "train.log"
METRICS = "metrics.jsonl"
CONFIG_CHANGES = "config_changes.jsonl"  # one record per key a restart changed
HYDRA_DIR = ".hydra"
RECORDED_CONFIG = HYDRA_DIR + "/config.yaml"  # the config the run runs with ("/": also a key in object storage)
MODEL_CONFIG = "model_config.json"  # also the release format's name: a run directory holds what an export needs
GENERATOR_CONFIG = "generator_config.json"  # objective=rtd
STOP = "STOP"  # created by a user or launch/slurm/pretrain.sbatch to stop the run
WANDB_DIR = "wandb"
PLOTS_DIR = "plots"
CHECKPOINTS = "checkpoints"
FINETUNE_DIR = "finetune"
RUN_MARKERS = (LOG, METRICS, CHECKPOINTS)  # not .hydra/: any Hydra app may leave one

MODEL_CONFIGS = {"model": MODEL_CONFIG, "generator": GENERATOR_CONFIG}  # by an objective's model names


def model_config_file(name: str) -> str:
    """The file of the objective's model ``name`` (``model``, ``generator``) in a run directory or an export."""
    return MODEL_CONFIGS[name]


# ---- a checkpoint (``checkpoints/step_NNNNNNNN``) -------------------------------------------------------------
LATEST = "latest"  # DeepSpeed's pointer to the newest tag, so its own tools keep working
CHECKPOINT_MARKER = "complete.json"  # written last: its files and sizes, the layout that wrote them, the config
UNIVERSAL = "universal"  # a checkpoint converted for another process count
_TAG_PREFIX = "step_"

# ---- fine-tuning results, an export, a prepared dataset -------------------------------------------------------
FINETUNE_MARKER = "finetune.json"
FROM_SCRATCH_DIR = "from_scratch"  # results of the same model freshly initialised, beside the checkpoints'
PLOTS_MARKER = "plots.json"  # in every folder of plots: drawing again into it is known to be safe
RESULTS = "results.json"
RESULTS_TABLE = "results.md"
EXPORT_MARKER = "export.json"
MODEL_CARD = "README.md"
MANIFEST = "manifest.json"


def checkpoint_tag(step: int) -> str:
    """The folder name of the checkpoint after ``step`` optimizer steps."""
    return f"{_TAG_PREFIX}{step:08d}"


def is_checkpoint_tag(name: str) -> bool:
    return name.startswith(_TAG_PREFIX) and name[len(_TAG_PREFIX):].isdigit()


def step_of(tag: str) -> int:
    """The step of a checkpoint tag (``step_00000008`` or ``step_00000008/...``)."""
    return int(tag.split("/")[0].split("_")[-1])


def newest_first(names) -> list[str]:
    """The checkpoint tags among ``names``, newest first."""
    return sorted((n for n in names if is_checkpoint_tag(n)), key=step_of, reverse=True)


def checkpoints_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS)


def recorded_config(run_dir: str) -> str:
    return os.path.join(run_dir, RECORDED_CONFIG)


def finetune_results_dir(where: str, suite: str, step: int | None, from_scratch: bool = False) -> str:
    """Where the fine-tuning results of ``suite`` are written by default: for the run (or model folder) at
    ``where``, per checkpoint step (a model folder without one: the suite's folder), or for the same model freshly
    initialised."""
    folder = os.path.join(where, FINETUNE_DIR, suite)
    if from_scratch:
        return os.path.join(folder, FROM_SCRATCH_DIR)
    return os.path.join(folder, checkpoint_tag(step)) if step is not None else folder


def finetune_results_files(run_dir: str, file: str, step: int | None = None, from_scratch: bool = False) -> str:
    """A glob of ``file`` in every suite's results of the run: of the checkpoint of ``step`` (None: every
    checkpoint), or of the from-scratch baselines."""
    folder = FROM_SCRATCH_DIR if from_scratch else checkpoint_tag(step) if step is not None else _TAG_PREFIX + "*"
    return os.path.join(run_dir, FINETUNE_DIR, "*", folder, file)


def task_record(task_name: str) -> str:
    """The file of one task's trials in a fine-tuning results folder (a task may not be named after ``RESULTS``)."""
    return f"{task_name}.json"


def default_finetune_root(name: str) -> str:
    """Where results go for a model that is not a local run or folder (a release name, an export in storage)."""
    return os.path.join("outputs", FINETUNE_DIR, name)


def is_finetune_results(path: str) -> bool:
    return os.path.isfile(os.path.join(path, FINETUNE_MARKER))


def is_run_directory(path: str) -> bool:
    """A folder ``launch/pretrain.py`` made (its log, metrics or checkpoints are there; not fine-tuning results)."""
    return any(os.path.exists(os.path.join(path, name)) for name in RUN_MARKERS) and not is_finetune_results(path)


def has_started(run_dir: str) -> bool:
    """Whether a run wrote anything of its own into ``run_dir`` (a log, metrics or its recorded config)."""
    return any(os.path.exists(os.path.join(run_dir, name)) for name in (LOG, METRICS, HYDRA_DIR))


def names_a_checkpoint(path: str) -> bool:
    """A run directory, its ``checkpoints/`` folder or one ``step_N`` checkpoint (also fine-tuning results, which the
    readers of checkpoints refuse by name)."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, name)) for name in (
        *RUN_MARKERS, CHECKPOINT_MARKER, LATEST, FINETUNE_MARKER))


def _json_with(path: str, key: str, prefix: str = "") -> bool:
    """Whether ``path`` is a JSON object whose ``key`` is present (and a string starting with ``prefix``, if
    given): a marker file is recognised by its content, not by its name alone."""
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except (OSError, ValueError):
        return False
    value = content.get(key) if isinstance(content, dict) else None
    return value is not None and (not prefix or str(value).startswith(prefix))


def owned_by_another_tool(path: str) -> str | None:
    """The folder above ``path`` whose whole tree belongs to another output (a run's ``checkpoints/``, a prepared
    dataset, an export), or None."""
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        if os.path.basename(folder) == CHECKPOINTS and os.path.isfile(os.path.join(folder, LATEST)):
            return folder
        if _json_with(os.path.join(folder, MANIFEST), "format", "deberta_pretrain.shards") or \
                _json_with(os.path.join(folder, EXPORT_MARKER), "checkpoint"):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent

"""The structured schema of the fine-tuning config (``conf/finetune.yaml``, its ``task`` and ``suite`` groups),
registered with Hydra's ConfigStore, and the checks across fields that run before any checkpoint is loaded."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import ListConfig, MISSING, OmegaConf

from ..choices import PRECISIONS, WANDB_MODES, ZERO_STAGES
from ..config import DeepSpeedSchema
from ..config_keys import check_keys
from ..layout import FINETUNE_MARKER, RESULTS, task_record

# ---- fine-tuning (conf/finetune.yaml) ------------------------------------------------------------------------
@dataclass
class FinetuneTrainSchema:
    micro_batch_size: Optional[int] = MISSING
    gradient_clipping: float = MISSING
    max_steps: Optional[int] = MISSING
    eval_every: Optional[int] = MISSING
    max_train_samples: Optional[int] = MISSING
    max_eval_samples: Optional[int] = MISSING


@dataclass
class FinetuneOptimSchema:
    weight_decay: float = MISSING
    beta1: float = MISSING
    beta2: float = MISSING
    eps: float = MISSING


@dataclass
class FinetuneWandbSchema:
    mode: str = MISSING
    project: str = MISSING
    entity: Optional[str] = MISSING


@dataclass
class FinetuneLoggingSchema:
    progress_bar: bool = MISSING
    wandb: FinetuneWandbSchema = field(default_factory=FinetuneWandbSchema)


@dataclass
class RecipeSchema:
    lr: float = MISSING
    batch_size: int = MISSING
    epochs: float = MISSING
    warmup_steps: int = MISSING
    max_length: int = MISSING
    cls_dropout: float = MISSING


@dataclass
class TaskSchema:
    """The keys of ``conf/task/*.yaml`` (checked, not registered: a task's values all come from its file). A
    ``data_from: files`` task also takes one key per name in ``eval_splits`` (``train``, ``validation``, ``test`` ...)."""

    name: str = MISSING
    data_from: str = MISSING  # glue | files | a built-in task: where the examples come from
    hub_dataset: Optional[str] = None
    glue_config: Optional[str] = None
    data_dir: Optional[str] = None
    train: Optional[str] = None
    validation: Optional[str] = None
    text_fields: list = MISSING
    label_field: str = MISSING
    problem: Optional[str] = None
    num_labels: Optional[int] = None
    metrics: Optional[list] = None
    selection: Optional[str] = None
    eval_splits: list = MISSING
    recipe: RecipeSchema = field(default_factory=RecipeSchema)


@dataclass
class SuiteSchema:
    name: str = MISSING
    tasks: list = MISSING
    overrides: Optional[TaskSchema] = None


@dataclass
class FinetuneSchema:
    checkpoint: str = MISSING
    output: Optional[str] = MISSING
    seeds: Any = MISSING  # a list; any type here, so that seeds=3 gets our message rather than a type error
    precision: str = MISSING
    export: bool = MISSING
    from_scratch: bool = MISSING
    task: Any = None  # conf/task/<name>.yaml
    suite: Any = None  # conf/suite/<name>.yaml
    train: FinetuneTrainSchema = field(default_factory=FinetuneTrainSchema)
    optim: FinetuneOptimSchema = field(default_factory=FinetuneOptimSchema)
    deepspeed: DeepSpeedSchema = field(default_factory=DeepSpeedSchema)
    logging: FinetuneLoggingSchema = field(default_factory=FinetuneLoggingSchema)


def check_finetune_keys(cfg) -> None:
    """Unknown keys of a fine-tuning config, the task's and the suite's included."""
    task_keys = {f.name for f in dataclasses.fields(TaskSchema)} - {"recipe"}
    splits = set(OmegaConf.select(cfg, "task.eval_splits", default=None) or [])
    check_keys(cfg, FinetuneSchema, {"task": TaskSchema if not splits - task_keys else
                                     {*task_keys, *splits, "recipe"}, "task.recipe": RecipeSchema,
                                     "suite": SuiteSchema})


def register_finetune_configs() -> None:
    ConfigStore.instance().store(name="finetune_schema", node=FinetuneSchema)


def validate_finetune(cfg) -> None:
    """Checks of a fine-tuning config before anything is loaded or trained; raises ``ValueError`` naming the key.
    Every task (each of a suite, with its overrides) is checked by :func:`validate_finetune_task`."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ValueError(f"no value for {', '.join(missing)}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision: {cfg.precision!r} is not one of {PRECISIONS}")
    if isinstance(cfg.seeds, int) and not isinstance(cfg.seeds, bool):
        raise ValueError(f"seeds={cfg.seeds} is not a list of seeds: write seeds='[{cfg.seeds}]' for the one seed "
                         f"{cfg.seeds}, or seeds='[1,2,3]' for three seeds")
    if not isinstance(cfg.seeds, (list, tuple, ListConfig)):
        raise ValueError(f"seeds: a list of distinct integers, e.g. seeds='[1,2,3]', got {cfg.seeds!r}")
    if not cfg.seeds:
        raise ValueError("seeds: at least one seed")
    seeds = list(cfg.seeds)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) < len(seeds):
        raise ValueError(f"seeds: distinct integers (the table's median is over them), got {seeds}")
    if cfg.task and cfg.suite:
        raise ValueError("choose task= or suite=, not both")
    if cfg.deepspeed.zero_stage not in ZERO_STAGES:
        raise ValueError(f"deepspeed.zero_stage: {cfg.deepspeed.zero_stage!r} is not one of {ZERO_STAGES}")
    if cfg.logging.wandb.mode not in WANDB_MODES:
        raise ValueError(f"logging.wandb.mode: {cfg.logging.wandb.mode!r} is not one of {WANDB_MODES}")
    for key in ("micro_batch_size", "max_steps", "eval_every", "max_train_samples", "max_eval_samples"):
        _finetune_number(f"train.{key}", cfg.train[key], 1, integer=True, optional=True)
    _finetune_number("optim.weight_decay", cfg.optim.weight_decay, 0)
    _finetune_number("optim.eps", cfg.optim.eps, 0, strict=True)
    for key in ("beta1", "beta2"):
        _finetune_number(f"optim.{key}", cfg.optim[key], 0, below=1)
    from .tasks import suite_tasks  # noqa: PLC0415

    _, tasks = suite_tasks(cfg.suite, cfg.task)
    names = [task.name for task in tasks]
    if len(set(names)) < len(names):
        raise ValueError(f"suite.tasks: each task once (one results file each), got {names}")
    for task in tasks:
        validate_finetune_task(task)


def validate_finetune_task(task) -> None:
    """One task's config (``conf/task/<name>.yaml``, a suite's overrides applied): name, data_from, fields, problem,
    number of labels, metrics and selection, recipe; ``ValueError`` names the task and key."""
    from .labels import configured_problem  # noqa: PLC0415
    from .tasks import BUILT_IN  # noqa: PLC0415
    from .metrics import PROBLEM_METRICS, check_metrics  # noqa: PLC0415

    def fail(key, message):
        raise ValueError(f"task {task.name}: task.{key}: {message}")

    name = task.name
    if not isinstance(name, str) or name in ("", ".", "..") or task_record(name) in (RESULTS, FINETUNE_MARKER) or \
            "/" in name or "\\" in name:
        raise ValueError(f"task.name: {task.name!r} cannot name the results file <output>/<name>.json")
    origins = ("glue", "files", *BUILT_IN)
    if task.data_from not in origins:
        fail("data_from", f"{task.data_from!r} is not one of {origins}")
    for key in ("text_fields", "eval_splits"):
        value = task[key]
        if not OmegaConf.is_list(value) or not value or len(set(value)) < len(value) or not all(
                isinstance(v, str) and v for v in value):
            fail(key, f"a list of distinct names, e.g. [a, b], got {value!r}")
    if len(task.text_fields) > 2:
        fail("text_fields", f"one or two fields (a text or a pair), got {list(task.text_fields)}")
    if not isinstance(task.label_field, str) or not task.label_field:
        fail("label_field", f"the name of the label field, got {task.label_field!r}")
    if task.data_from == "files":
        for split in ("train", *task.eval_splits):
            if not isinstance(task.get(split), str) or not task.get(split):
                fail(split, f"a file (or glob) for split {split} (data_from=files), got {task.get(split)!r}")
    if task.problem not in (*PROBLEM_METRICS, None):
        fail("problem", f"{task.problem!r} is not one of {list(PROBLEM_METRICS)} or null (inferred from the labels)")
    if task.num_labels is not None:
        _finetune_number(f"task {task.name}: task.num_labels", task.num_labels, 1, integer=True)
        if task.problem and (task.problem == "regression") != (task.num_labels == 1):
            fail("num_labels", f"1 for a regression, the number of classes (2 or more) for a classification; got "
                               f"{task.num_labels} with task.problem={task.problem}")
    if task.metrics is not None and not OmegaConf.is_list(task.metrics):
        fail("metrics", f"a list, e.g. [accuracy], got {task.metrics!r}")
    check_metrics(task, configured_problem(task))
    _check_recipe(task)


def _check_recipe(task) -> None:
    """``task.recipe``: each value a number in its range, or (lr, batch_size, epochs, warmup_steps) a grid."""
    recipe = task.recipe
    for key, low, integer, strict in (("lr", 0, False, True), ("batch_size", 1, True, False),
                                      ("epochs", 0, False, True), ("warmup_steps", 0, True, False),
                                      ("max_length", 4, True, False)):
        values = recipe[key]
        if OmegaConf.is_list(values) and key != "max_length":  # a grid (finetune/grid.py)
            if not values or len(set(values)) < len(values):
                raise ValueError(f"task {task.name}: task.recipe.{key}: a value, or a list of distinct values (a "
                                 f"grid), got {list(values)}")
        else:
            values = [values]
        for value in values:
            _finetune_number(f"task {task.name}: task.recipe.{key}", value, low, integer=integer, strict=strict,
                             optional=key == "warmup_steps")  # null: a share of the run's steps
    _finetune_number(f"task {task.name}: task.recipe.cls_dropout", recipe.cls_dropout, 0, below=1)


def _finetune_number(key: str, value, low, integer: bool = False, strict: bool = False, below=None,
                     optional: bool = False) -> None:
    """``value`` is a number (an integer where ``integer``) >= ``low`` (> where ``strict``) and < ``below`` where
    set, or None where ``optional``; else ``ValueError`` naming ``key``."""
    if value is None and optional:
        return
    kinds = (int,) if integer else (int, float)
    if isinstance(value, kinds) and not isinstance(value, bool) and (value > low if strict else value >= low) and (
            below is None or value < below):
        return
    wanted = f"{'an integer' if integer else 'a number'} {'>' if strict else '>='} {low}"
    wanted += f" and < {below}" if below is not None else ""
    raise ValueError(f"{key}: {wanted}{' or null' if optional else ''}, got {value!r}")

"""One command from a checkpoint to a score table: every task of the suite (or the one task), every point of its
recipe's grid (:mod:`.grid`) with every seed, the setting chosen by its median dev score, and the median and spread
over seeds, written as ``results.json`` and ``results.md`` and printed.

Results go to ``<run dir>/finetune/<suite>/step_<N>/`` for a checkpoint of one of our runs (so that several
pretraining steps can be compared, and pruning old checkpoints keeps them), else to ``<model folder>/finetune/
<suite>/``; ``from_scratch=true`` (the same model freshly initialised) to ``.../finetune/<suite>/from_scratch/``;
``output=`` overrides. Each finished trial (:class:`~.trial.Trial`) is saved in ``<task>.json`` at once, with the
settings the task was made with (:func:`~.results.task_settings`: everything but the seed and the grid's values,
which identify a trial): the same command again trains only the trials that are missing (a grid that grew: only its
new points), and a command with other settings is refused before anything trains, never reusing or replacing
results of other settings.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from ..fileio import claim_output, write_json_atomic
from ..layout import FINETUNE_MARKER, RESULTS, finetune_results_dir, task_record
from ..training.distributed import init_distributed, on_cpu
from ..training.metrics import MetricsLogger
from .batches import TaskData
from .config import validate_finetune
from .data import load_task
from .engine import EngineOptions, check_engine
from .grid import choose, describe, grid_points, point_key, score, trial_key, trials_by_key, with_point
from .loop import NonFiniteLoss, TrialOptions, finetune_once
from .metrics import learned_nothing
from .pretrained import load_pretrained
from .results import earlier_record, nothing_learned_warning, summarize, task_settings, write_results
from .tasks import suite_tasks
from .trial import Trial

__all__ = ["run_finetune"]
logger = logging.getLogger("deberta_pretrain.finetune")


def output_folder(output, from_scratch: bool, suite: str, pretrained) -> str:
    """``output`` where set, else beside the checkpoint (see the module's doc)."""
    if output:
        return os.path.abspath(output)
    return finetune_results_dir(pretrained.where, suite, pretrained.step, from_scratch)


def run_finetune(cfg) -> dict:
    """Fine-tune and evaluate every task of ``cfg`` (``conf/finetune.yaml``); returns the results written. Before
    anything trains, the config, the results already in the output folder and every task's data are checked."""
    validate_finetune(cfg)
    rank, world, local_rank = init_distributed()
    device = torch.device("cpu" if on_cpu() else f"cuda:{local_rank}")
    suite, tasks = suite_tasks(cfg.suite, cfg.task)
    engine = EngineOptions(cfg.precision, cfg.train.micro_batch_size, cfg.train.gradient_clipping, cfg.optim,
                           cfg.deepspeed)
    for task in tasks:
        check_engine(engine, task, world, device.type == "cuda")
    pretrained = load_pretrained(cfg.checkpoint)
    out = output_folder(cfg.output, cfg.from_scratch, suite, pretrained)
    # Results of other settings are refused task by task below. The default folder lies inside the model's folder
    # (an export, a run) by design; output= may not lie in another tool's output.
    claim_output(out, (FINETUNE_MARKER, RESULTS, *(task_record(task.name) for task in tasks)),
                 "fine-tuning results folder", overwrite=True, nested_ok=not cfg.output)
    seeds = [int(seed) for seed in cfg.seeds]
    settings = {task.name: task_settings(cfg, task, pretrained) for task in tasks}
    records, todo, prepared = plan_trials(tasks, seeds, settings, cfg.train, pretrained, out)
    dist.barrier()  # every rank checked the folder before rank 0 writes to it
    if rank == 0:
        os.makedirs(out, exist_ok=True)
        # written first: a re-run after a failure knows the folder as its own
        write_json_atomic(os.path.join(out, FINETUNE_MARKER),
                          {"suite": suite, "checkpoint": os.path.abspath(cfg.checkpoint)})
    log = MetricsLogger(out, cfg.logging, f"finetune-{suite}", OmegaConf.to_container(cfg, resolve=True),
                        enabled=rank == 0, start_step=None, wandb_step=False)  # every trial's records, kept
    results = {"suite": suite, "checkpoint": os.path.abspath(str(cfg.checkpoint)), "from_scratch": cfg.from_scratch,
               "pretraining_step": None if cfg.from_scratch else pretrained.step, "seeds": seeds, "tasks": {}}
    options = TrialOptions(cfg.train, engine, cfg.from_scratch, cfg.checkpoint, cfg.export, cfg.logging.progress_bar)
    warning_sections = OmegaConf.masked_copy(cfg, ["suite", "train"])
    for task in tasks:
        record = {**records[task.name], "settings": settings[task.name]}
        record.pop("export", None)  # said again below, for the trial it is of
        trials, states, data = train_task(options, task, record, todo[task.name], prepared, pretrained,
                                          (rank, world, device), log, out)
        chosen, chosen_trials = choose_setting(task, seeds, record, trials, warning_sections, rank)
        if rank == 0:
            if cfg.export:
                export_chosen(record, task, chosen, chosen_trials, states, pretrained, data, out)
            write_json_atomic(os.path.join(out, task_record(task.name)), record)
        results["tasks"][task.name] = record
    if rank == 0:
        write_results(results, out, log)
    results["output"] = out
    return results


def plan_trials(tasks, seeds: list, settings: dict, train, pretrained, out: str) -> tuple[dict, dict, dict]:
    """Per task: the record of earlier trials in ``out`` (refused where their ``settings`` differ), the trials still
    to train; and the first pending task's data (``train``: the config's section, which caps the splits). Every
    task's data is checked before anything is written or trained: the first task's is kept, the others' are read
    again in their turn (a whole suite's would not fit in memory at once)."""
    records = {task.name: earlier_record(task, out, settings[task.name]) for task in tasks}
    todo = {task.name: missing_trials(task, seeds, records[task.name]) for task in tasks}
    pending = [task for task in tasks if todo[task.name]]
    prepared = {pending[0].name: TaskData(pending[0], pretrained.tokenizer, train)} if pending else {}
    for task in pending[1:]:
        load_task(task)
    return records, todo, prepared


def missing_trials(task, seeds, record: dict) -> list:
    """(point, seed) of every trial of ``task``'s grid and ``seeds`` that ``record`` does not hold."""
    done = trials_by_key(record.get("runs", []))
    return [(point, seed) for point in grid_points(task.recipe) for seed in seeds
            if trial_key(seed, point) not in done]


def train_task(options: TrialOptions, task, record: dict, todo: list, prepared: dict, pretrained, where: tuple, log,
               out: str) -> tuple[dict, dict, TaskData | None]:
    """Train the trials ``todo`` of ``task`` (``where``: rank, world size, device), each added to ``record`` and
    written to ``<out>/<task>.json`` at once (an interrupted grid resumes where it stopped). Returns the records of
    all the task's trials by key, the weights of each point's best trial trained now (``export=true``: {point key:
    (trial key, state)}), and the task's data (None when nothing was trained)."""
    trials = trials_by_key(record.get("runs", []))
    states, data = {}, None
    if not todo:
        logger.info("%s: every run finished earlier with these settings, skipped (%s)", task.name,
                    os.path.join(out, task_record(task.name)))
    for point, seed in todo:
        data = data or prepared.pop(task.name, None) or TaskData(task, pretrained.tokenizer, options.train)
        trial = train_trial(options, task, point, seed, pretrained, data, where, log)
        key, kept, trial_record = trial_key(seed, point), states.get(point_key(point)), trial.to_json()
        if trial.state is not None and (kept is None or score(trial_record) > score(trials[kept[0]])):
            states[point_key(point)] = (key, trial.state)
        trials[key] = trial_record
        record.update(problem=data.problem, labels=list(data.labels), runs=list(trials.values()))
        if where[0] == 0:
            write_json_atomic(os.path.join(out, task_record(task.name)), record)
    return trials, states, data


def train_trial(options: TrialOptions, task, point: dict, seed: int, pretrained, data: TaskData, where: tuple,
                log) -> Trial:
    """The trial of ``task`` at grid ``point`` with ``seed``, with whether it learned anything. A trial of a grid
    whose loss turns non-finite is recorded as diverged (the grid's other points go on); with a single point there
    is nothing to choose from, and the error stops the command."""
    try:
        trial = finetune_once(options, with_point(task, point), pretrained, data, seed, *where, log)
    except NonFiniteLoss as e:
        if len(grid_points(task.recipe)) == 1:
            raise
        if where[0] == 0:
            logger.warning("%s (grid point %s: recorded as diverged)", e, trial_key(seed, point))
        return Trial(seed, recipe=point, diverged=str(e), nothing_learned="diverged")
    dev_targets = {split: dev["labels"] for split, dev in data.dev.items()}
    trial.recipe = point
    trial.nothing_learned = learned_nothing(trial.to_json(), data.train["labels"], dev_targets, data.problem,
                                            data.metrics, task.selection)
    return trial


def choose_setting(task, seeds: list, record: dict, trials: dict, warning_sections, rank: int) -> tuple[dict, list]:
    """(the chosen point, its trials' records); ``record`` gets every trial (this command's and earlier ones), the
    grid's median dev scores, the chosen setting and its summary over seeds, and a warning when its trials learned
    nothing (``warning_sections``: the config's ``suite`` and ``train``)."""
    points = grid_points(task.recipe)
    try:
        chosen, chosen_trials, scored = choose(trials, points, seeds)
    except ValueError as e:
        raise NonFiniteLoss(f"task {task.name}: {e}") from None
    setting = describe(chosen, points)
    record.update(runs=list(trials.values()), summary=summarize(chosen_trials),
                  chosen={**chosen, "described": setting},
                  grid=[{"recipe": point, "median_selection_score": median} for point, median in scored],
                  warning=nothing_learned_warning(warning_sections, task, chosen, chosen_trials, points))
    if record["warning"] and rank == 0:
        logger.warning(record["warning"])
    return chosen, chosen_trials


def export_chosen(record: dict, task, chosen: dict, chosen_trials: list, states: dict, pretrained, data,
                  out: str) -> None:
    """Export the chosen setting's best seed to ``<out>/<task>/`` when its weights are at hand (it was trained by
    this command); else say that the export is not of it."""
    best = max(chosen_trials, key=score)
    kept = states.get(point_key(chosen))
    if kept is None or kept[0] != trial_key(best["seed"], chosen):
        logger.warning("%s: the chosen setting's best run (%s) was trained by an earlier command, whose weights are "
                       "not kept: no export; delete %s and run again to export it", task.name,
                       trial_key(best["seed"], chosen), os.path.join(out, task_record(task.name)))
        return
    from .export import export_classifier  # noqa: PLC0415

    record["export"] = {"folder": export_classifier(kept[1], pretrained, data, os.path.join(out, task.name)),
                        "run": kept[0]}

"""DeepSpeed checkpoints that are never trusted half-written, and that resume on any number of processes.

Saving: every rank calls ``engine.save_checkpoint`` into ``checkpoints/step_NNNNNNNN``; when every rank has written
its files, rank 0 records them with their sizes, the layout that wrote them (world size, ZeRO stage, whether the
optimizer state is partitioned) and the run's config (``client_state["config"]``) in ``complete.json``, then points
``latest`` at the new tag (DeepSpeed's own format, so its tools such as ``zero_to_fp32.py`` keep working) and prunes
old checkpoints down to ``keep_last``. A save that
fails on any rank (a full disk, say) leaves ``latest`` on the previous checkpoint and raises ``CheckpointError``.

Resuming: the complete checkpoints are tried newest first. One whose optimizer state was partitioned over another
number of processes (or another ZeRO stage) is converted once to DeepSpeed's universal format, which DeepSpeed
re-partitions for any layout; the converted form is cached in the checkpoint's own folder (``universal/``, renamed
into place when complete). Deciding what to load is this module's policy; building the engine is the caller's.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
from dataclasses import dataclass
from types import SimpleNamespace

import torch

import torch.distributed as dist

from ..fileio import atomic_write, write_json_atomic
from ..layout import CHECKPOINT_MARKER, LATEST, UNIVERSAL, checkpoint_tag, model_config_file
from ..layout import checkpoints_dir, is_finetune_results, is_run_directory, newest_first, step_of
from .distributed import first_error

logger = logging.getLogger(__name__)
run_logger = logging.getLogger("deberta_pretrain")  # the lines of train.log
PARTITIONED_FILES = "*zero_pp_rank_*_optim_states.pt"  # ZeRO 1-3: one optimizer shard per data-parallel rank


class CheckpointError(RuntimeError):
    """A checkpoint could not be saved or loaded; the message names it and the cause."""


def read_marker(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, CHECKPOINT_MARKER), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def checkpoint_problem(folder: str) -> str | None:
    """Why the checkpoint in ``folder`` cannot be trusted (no ``complete.json``, a file missing or of another size
    than was written), or None."""
    marker = read_marker(folder)
    if marker is None:
        return "incomplete (no complete.json: the save did not finish)"
    for name, size in marker["files"].items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"file {name} is missing"
        if os.path.getsize(path) != size:
            return f"file {name} has {os.path.getsize(path)} bytes, {size} were written"
    return None


def checkpoint_tags(directory: str) -> list[str]:
    """The ``step_N`` folders of a ``checkpoints/`` directory, newest first."""
    if not os.path.isdir(directory):
        return []
    return newest_first(os.listdir(directory))


def usable_checkpoints(directory: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(usable tags newest first, [(tag, why it is not usable)]) of a ``checkpoints/`` directory: what resuming and
    exporting trust. ``latest`` is not consulted: a damaged newest checkpoint falls back to the one before."""
    usable, refused = [], []
    for tag in checkpoint_tags(directory):
        problem = checkpoint_problem(os.path.join(directory, tag))
        (refused.append((tag, problem)) if problem else usable.append(tag))
    return usable, refused


class Checkpointer:
    """Saves and finds the checkpoints of one run directory for a job of ``world_size`` ranks at ``zero_stage``.

    Its policy, for a run being trained (:meth:`step_done`): a checkpoint every ``save_every`` steps, at
    ``last_step`` and when a stop was requested; the newest ``keep_last`` complete ones are kept, and those the
    ``mirror`` (a ``RunMirror``, told of each save) has not uploaded yet."""

    def __init__(self, directory: str, keep_last: int, rank: int, world_size: int, zero_stage: int,
                 universal_root: str | None = None, save_every: int = 0, last_step: int = 0, mirror=None):
        self.directory, self.keep_last, self.rank = directory, keep_last, rank
        self.world_size, self.zero_stage = world_size, zero_stage
        # where a checkpoint's universal form is written and read: beside it, or (for a checkpoint of another run,
        # which is never written to) in the reading run's own checkpoints folder
        self.universal_root = universal_root or directory
        self.save_every, self.last_step, self.mirror = save_every, last_step, mirror

    @classmethod
    def for_run(cls, run_dir: str, train, rank: int, world_size: int, zero_stage: int, mirror) -> Checkpointer:
        """The checkpointer of the run in ``run_dir``, saving as the ``train`` config section says."""
        return cls(checkpoints_dir(run_dir), train.keep_last, rank, world_size, zero_stage,
                   save_every=train.checkpoint_every, last_step=train.max_steps, mirror=mirror)

    def path(self, tag: str) -> str:
        return os.path.join(self.directory, tag)

    # ---- saving ---------------------------------------------------------------------------------------
    def step_done(self, engine, step: int, client_state, stop_requested: bool) -> str | None:
        """Save a checkpoint after ``step`` when the policy says so (``client_state()`` gives what it carries
        besides the engine) and queue its upload; returns its tag, or None when this step is not saved."""
        if not (step % self.save_every == 0 or step == self.last_step or stop_requested):
            return None
        tag = self.save(engine, step, client_state())
        if self.rank == 0:
            run_logger.info("checkpoint of step %d saved: %s", step, self.path(tag))
        if self.mirror is not None:
            self.mirror.checkpoint_saved(tag)
        return tag

    def save(self, engine, step: int, client_state: dict) -> str:
        tag = checkpoint_tag(step)
        if self.rank == 0 and os.path.isdir(self.path(tag)):  # the leftover of an interrupted save of this step:
            shutil.rmtree(self.path(tag))  # its files (of another world size, say) must not mix with the new ones
        dist.barrier()
        error = None
        try:
            engine.save_checkpoint(self.directory, tag=tag, client_state=client_state, save_latest=False)
        except OSError as e:  # a full disk or a lost mount: no rank may go on as if the checkpoint existed
            error = f"rank {self.rank}: {e}"
        error = first_error(error)
        if error is None and self.rank == 0:
            try:
                self._mark_complete(tag, step, client_state.get("config"))
            except OSError as e:
                error = f"rank 0: {e}"
        error = first_error(error)
        if error is not None:
            raise CheckpointError(f"checkpoint {self.path(tag)} could not be written ({error}); "
                                  f"{self.describe_latest()}")
        return tag

    def _mark_complete(self, tag: str, step: int, config: dict | None) -> None:
        folder = self.path(tag)
        files = {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
                 if os.path.isfile(os.path.join(folder, name)) and name != CHECKPOINT_MARKER}
        partitioned = bool(glob.glob(os.path.join(folder, PARTITIONED_FILES)))
        write_json_atomic(os.path.join(folder, CHECKPOINT_MARKER), {
            "step": step, "files": files, "world_size": self.world_size, "zero_stage": self.zero_stage,
            "partitioned": partitioned, "config": config})
        atomic_write(os.path.join(self.directory, LATEST), lambda f: f.write(tag.encode()))
        self.prune()

    def describe_latest(self) -> str:
        """Where ``latest`` points, in words for an error message."""
        try:
            with open(os.path.join(self.directory, LATEST), encoding="utf-8") as f:
                return f"`latest` still names the previous checkpoint {self.path(f.read().strip())}"
        except OSError:
            return "there is no earlier checkpoint"

    def prune(self) -> None:
        """Keep the newest ``keep_last`` complete checkpoints (and those the mirror has not uploaded yet)."""
        complete = self.complete_tags()
        keep = set(complete[: self.keep_last]) | {tag for tag in complete if self.mirror and self.mirror.keeps(tag)}
        for tag in complete:
            if tag not in keep:
                shutil.rmtree(self.path(tag), ignore_errors=True)
        newest = step_of(complete[0]) if complete else -1
        for tag in self.all_tags():  # leftovers of interrupted saves older than the newest complete one
            if tag not in keep and step_of(tag) < newest:
                shutil.rmtree(self.path(tag), ignore_errors=True)

    # ---- finding --------------------------------------------------------------------------------------
    def all_tags(self) -> list[str]:
        return checkpoint_tags(self.directory)

    def marker(self, tag: str) -> dict | None:
        return read_marker(self.path(tag))

    def complete_tags(self) -> list[str]:
        return usable_checkpoints(self.directory)[0]

    def survey(self) -> tuple[list[str], list[tuple[str, str]]]:
        """:func:`usable_checkpoints`, decided on rank 0 and shared."""
        shared = [usable_checkpoints(self.directory) if self.rank == 0 else None]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]

    # ---- loading --------------------------------------------------------------------------------------
    def layout(self, tag: str) -> dict:
        """How ``tag`` was written; for checkpoints older than that record, read off its files."""
        marker = self.marker(tag) or {}
        if "world_size" in marker:
            return {k: marker[k] for k in ("world_size", "zero_stage", "partitioned")}
        shards = glob.glob(os.path.join(self.path(tag), PARTITIONED_FILES))
        return {"world_size": len(shards) or None, "zero_stage": None, "partitioned": bool(shards)}

    def load_plan(self, tag: str) -> tuple[str, bool]:
        """(the tag to load, whether it is in universal form). Converts on rank 0 when the layout changed; raises
        ``CheckpointError`` (on every rank) when no conversion can bridge the change."""
        layout = self.layout(tag)
        now_partitioned = self.zero_stage > 0
        error, universal = None, False
        if not layout["partitioned"]:
            if now_partitioned:
                error = (f"its optimizer state is not partitioned (deepspeed.zero_stage=0), and this run uses "
                         f"deepspeed.zero_stage={self.zero_stage}; resume with deepspeed.zero_stage=0")
        elif not now_partitioned:
            error = (f"its optimizer state is partitioned (ZeRO stage {layout['zero_stage'] or '1-3'}), and this run "
                     f"uses deepspeed.zero_stage=0; resume with a ZeRO stage of 1 to 3")
        else:
            universal = (layout["world_size"] != self.world_size
                         or (layout["zero_stage"] is not None and layout["zero_stage"] != self.zero_stage))
        if universal and self.rank == 0:
            try:
                self._convert_to_universal(tag, layout)
            except Exception as e:  # noqa: BLE001 - any failure of the conversion refuses this checkpoint
                error = f"conversion to DeepSpeed's universal format failed: {type(e).__name__}: {e}"
        error = first_error(error)
        if error:
            raise CheckpointError(error)
        return (f"{tag}/{UNIVERSAL}" if universal else tag), universal

    def _convert_to_universal(self, tag: str, layout: dict) -> None:
        folder = os.path.join(self.universal_root, tag)
        target = os.path.join(folder, UNIVERSAL)
        if os.path.isfile(os.path.join(target, CHECKPOINT_MARKER)):
            logger.info("using the universal form of %s cached in %s", self.path(tag), target)
            return
        from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal  # noqa: PLC0415

        logger.warning("checkpoint %s was written by %s ranks at ZeRO stage %s; this run has %d at stage %d: "
                       "converting it once to DeepSpeed's universal format in %s", self.path(tag),
                       layout["world_size"], layout["zero_stage"], self.world_size, self.zero_stage, target)
        os.makedirs(folder, exist_ok=True)
        partial = os.path.join(folder, f".{UNIVERSAL}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        try:
            ds_to_universal(SimpleNamespace(input_folder=self.path(tag), output_folder=partial, num_extract_workers=1,
                                            num_merge_workers=1, keep_temp_folder=False, strict=True,
                                            inject_missing_state=True))
            write_json_atomic(os.path.join(partial, CHECKPOINT_MARKER), {"from": tag, "layout": layout})
            shutil.rmtree(target, ignore_errors=True)  # an earlier, unmarked attempt
            os.replace(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
            stray = os.path.join(folder, "latest_universal")  # DeepSpeed's pointer to the partial folder
            if os.path.exists(stray):
                os.remove(stray)

    def load(self, engine, load_tag: str, schedule: bool = True) -> tuple[int, dict]:
        """Load ``load_tag`` into ``engine`` (with its learning-rate schedule's position unless ``schedule`` is
        False); returns (step, client_state) or raises ``CheckpointError`` on every rank. After a failure the engine
        is half-loaded and must be discarded."""
        error, client_state = None, None
        directory = self.universal_root if load_tag.endswith(f"/{UNIVERSAL}") else self.directory
        try:
            path, client_state = engine.load_checkpoint(directory, tag=load_tag, load_lr_scheduler_states=schedule)
            if path is None:
                error = "DeepSpeed found nothing to load"
        except Exception as e:  # noqa: BLE001 - any failure refuses this checkpoint
            error = f"{type(e).__name__}: {e}"
        error = first_error(error)
        if error:
            raise CheckpointError(error)
        return step_of(load_tag), client_state or {}


# ---- the weights of a run, for export, continued pretraining and fine-tuning ------------------------------------
def find_checkpoint(path) -> tuple[str, str, str]:
    """A run directory, its ``checkpoints/`` folder or one ``step_N`` checkpoint -> (checkpoints folder, tag, run
    directory). A run directory means its newest checkpoint that resuming would trust (a damaged newest one falls
    back to the one before); a ``step_N`` folder must pass the same check."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        what = "is a file, not a folder" if os.path.isfile(path) else "does not exist"
        raise FileNotFoundError(f"checkpoint: {path} {what}")
    if is_finetune_results(path):
        raise ValueError(f"checkpoint: {path} holds fine-tuning results, not a checkpoint (an export of a fine-tuned "
                         f"model lies in <results>/<task>/ with export=true)")
    if is_run_directory(path) and not checkpoint_tags(checkpoints_dir(path)):
        raise ValueError(f"checkpoint: {path} is a run directory with no checkpoint yet (the first is written after "
                         f"train.checkpoint_every steps, or when the run is stopped)")
    if os.path.isdir(checkpoints_dir(path)):
        path = checkpoints_dir(path)
    if checkpoint_tags(path):
        usable, refused = usable_checkpoints(path)
        if not usable:
            listing = "; ".join(f"{os.path.join(path, tag)}: {why}" for tag, why in refused)
            raise ValueError(f"checkpoint: {path} holds no usable checkpoint ({listing})")
        root, tag = path, usable[0]
        for bad, why in refused:
            if step_of(bad) > step_of(tag):
                logger.warning("%s is not usable (%s): using %s", os.path.join(path, bad), why, tag)
    elif glob.glob(os.path.join(path, "*model_states.pt")):
        root, tag = os.path.dirname(path), os.path.basename(path)
        problem = checkpoint_problem(path)
        if problem:
            raise ValueError(f"checkpoint: {path} is {problem}" if problem.startswith("incomplete")
                             else f"checkpoint: {path} is damaged: {problem}")
    else:
        raise FileNotFoundError(f"checkpoint: {path} is neither a run directory, its checkpoints/ folder, nor a "
                                f"DeepSpeed checkpoint (no *model_states.pt)")
    return root, tag, os.path.dirname(root)


def is_partitioned(folder: str) -> bool:
    """True for ZeRO stage 1-3 checkpoints (per-rank optimizer shards), False for stage 0."""
    return bool(glob.glob(os.path.join(folder, PARTITIONED_FILES)))


def consolidated_state_dict(root: str, tag: str) -> dict[str, torch.Tensor]:
    """The full model state of checkpoint ``root/tag`` in fp32 (stage 1-3: the optimizer's fp32 master weights)."""
    folder = os.path.join(root, tag)
    if not is_partitioned(folder):
        path = os.path.join(folder, "mp_rank_00_model_states.pt")
        state = torch.load(path, map_location="cpu", weights_only=True)["module"]
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # noqa: PLC0415

        state = get_fp32_state_dict_from_zero_checkpoint(root, tag=tag)
    return {k: v.detach().float() for k, v in state.items()}


@dataclass
class TrainedModels:
    """The consolidated weights of one checkpoint of a run: ``model`` (an MLM, or an RTD run's discriminator with its
    shared embedding tables merged) and, for an RTD run, ``generator`` (an MLM); each ``(state dict, ModelConfig)``."""

    model: tuple
    generator: tuple | None
    run_dir: str
    checkpoint: str  # the checkpoint folder
    step: int


def trained_models(path) -> TrainedModels:
    """The weights of the checkpoint ``path`` names (see :func:`find_checkpoint`), with the model configs the run
    wrote beside them; raises ``FileNotFoundError``/``ValueError`` naming what is missing."""
    from ..deberta import ModelConfig  # noqa: PLC0415
    from ..deberta.rtd import merged_tables  # noqa: PLC0415

    root, tag, run_dir = find_checkpoint(path)

    def config(name: str):
        file = os.path.join(run_dir, model_config_file(name))
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{run_dir}: no {model_config_file(name)} (written by launch/pretrain.py in the "
                                    f"run directory)")
        return ModelConfig.from_json_file(file)

    model_config = config("model")  # before the consolidation, which takes a while
    state = consolidated_state_dict(root, tag)
    if any(k.startswith("discriminator.") for k in state):  # objective=rtd
        discriminator, generator = merged_tables(state)
        models = (discriminator, model_config), (generator, config("generator"))
    else:
        models = (state, model_config), None
    return TrainedModels(*models, run_dir, os.path.join(root, tag), step_of(tag))

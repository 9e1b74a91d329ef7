"""A fork: a new run (its own ``name``) that starts from another run's checkpoint in that checkpoint's exact state:
weights, optimizer moments, the schedule's step, the data position and the random state (all of which follow from
the step). What resuming may change may change here (the schedule: a decay branch; the engine: another process
count or ZeRO stage), and the mixture too: from the fork's step on, each source is read where the new mixture's
interleave puts it at that sample index. The source run is only read: a checkpoint that must be converted for
another process count is converted into the fork's own folder; one in object storage is downloaded into the user's
cache first (``fetch_source``).

A fork that was stopped and is started again resumes from its own checkpoints, like any run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import yaml

from .. import remote
from ..layout import CHECKPOINTS, checkpoints_dir, has_started, is_checkpoint_tag, is_finetune_results, is_run_directory
from ..layout import recorded_config
from .checkpoint import Checkpointer, checkpoint_problem, checkpoint_tags, find_checkpoint, usable_checkpoints
from .mirror import fetch_checkpoint

logger = logging.getLogger("deberta_pretrain")


@dataclass
class ForkSource:
    """The checkpoint a fork starts from: ``root/tag`` of the run in ``run_dir``."""

    root: str
    tag: str
    run_dir: str
    url: str | None = None  # where it came from, for a checkpoint downloaded from object storage

    @property
    def path(self) -> str:
        return os.path.join(self.root, self.tag)

    @property
    def label(self) -> str:
        """The checkpoint as the user knows it."""
        return f"{self.url} (copied to {self.path})" if self.url else self.path


def remote_parts(fork_from: str) -> tuple[str, str | None, str]:
    """(the run's URL, the checkpoint's tag or None for the newest, the local copy's run folder) of a fork from
    object storage: ``s3://.../<run>`` or ``s3://.../<run>/checkpoints/step_N``."""
    url = fork_from.rstrip("/")
    tag = url.rsplit("/", 1)[-1] if is_checkpoint_tag(url.rsplit("/", 1)[-1]) else None
    run_url = url.rsplit(f"/{CHECKPOINTS}/", 1)[0] if tag else url
    return run_url, tag, remote.cache_dir("forks", remote.local_name(run_url))


def local_copy(fork_from: str) -> str:
    """Where a fork from object storage reads its checkpoint: the run folder of its copy in the user's cache, or
    the step's folder in it."""
    _, tag, folder = remote_parts(fork_from)
    return os.path.join(checkpoints_dir(folder), tag) if tag else folder


def fetch_source(fork_from: str) -> None:
    """Download the checkpoint a fork from object storage starts from into :func:`local_copy` (once: a complete
    copy is kept), complete.json last as a fresh machine resumes; ``ValueError`` naming the URL and what is
    wrong."""
    run_url, tag, folder = remote_parts(fork_from)
    if tag and checkpoint_problem(local_copy(fork_from)) is None:
        return
    parent, name = run_url.rsplit("/", 1)
    try:
        remote.check_reachable(run_url, "train.fork_from")
        fetched = fetch_checkpoint(parent, name, folder, tag)
    except OSError as e:
        raise ValueError(f"train.fork_from: cannot download from {run_url}: {e}") from None
    if fetched is None:
        raise ValueError(f"train.fork_from: {run_url} holds no complete checkpoint")


def fork_source(fork_from: str, run_dir: str) -> ForkSource:
    """The checkpoint ``train.fork_from`` names (a run directory: its newest complete checkpoint; or one
    ``checkpoints/step_N``); ``ValueError`` naming what is wrong: no checkpoint, a step that does not exist (with
    the ones that do), a fine-tuning results folder, the fork's own directory, or a ``name`` that is another run."""
    path = local_copy(fork_from) if remote.is_remote(fork_from) else os.path.abspath(fork_from)
    if is_checkpoint_tag(os.path.basename(path)) and not os.path.exists(path):
        folder = os.path.dirname(path)
        there = usable_checkpoints(folder)[0] if os.path.isdir(folder) else []
        raise ValueError(f"train.fork_from: {path} does not exist; the complete checkpoints of "
                         f"{os.path.dirname(folder)} are: {', '.join(sorted(there)) or 'none'}")
    if is_finetune_results(path):
        raise ValueError(f"train.fork_from: {path} holds fine-tuning results, not a pretraining run")
    try:
        root, tag, source_run = find_checkpoint(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"train.fork_from: {str(e).removeprefix('checkpoint: ')}") from None
    if os.path.realpath(source_run) == os.path.realpath(run_dir):
        raise ValueError(f"train.fork_from: {path} is this run's own checkpoint; a fork needs a new name= (to "
                         f"continue this run, drop train.fork_from)")
    check_new_run(run_dir, fork_from)
    return ForkSource(root, tag, source_run, fork_from if remote.is_remote(fork_from) else None)


def check_new_run(run_dir: str, fork_from: str) -> None:
    """A fork starts a new run: ``run_dir`` must not be another run, unless it is this fork started again (its
    recorded config names the same source; it then resumes itself). A folder holding only what a fork's start left
    before it failed (a conversion, no complete checkpoint, no log) is not a run yet."""
    if not is_run_directory(run_dir) or not (has_started(run_dir) or is_restart(run_dir)):
        return
    recorded = recorded_config(run_dir)
    source = None
    if os.path.isfile(recorded):
        with open(recorded, encoding="utf-8") as f:
            source = ((yaml.safe_load(f) or {}).get("train") or {}).get("fork_from")
    same = source is not None and (source == fork_from if remote.is_remote(fork_from)
                                   else os.path.abspath(source) == os.path.abspath(fork_from))
    if not same:
        raise ValueError(f"name: {run_dir} is an existing run{'' if source is None else f' forked from {source}'}; "
                         f"a fork starts a new run: choose another name= (nothing was changed)")


def is_restart(run_dir: str) -> bool:
    """Whether the fork in ``run_dir`` has complete checkpoints of its own (it then resumes from them)."""
    folder = checkpoints_dir(run_dir)
    return bool(checkpoint_tags(folder)) and bool(usable_checkpoints(folder)[0])


def source_checkpointer(source: ForkSource, rank: int, world: int, zero_stage: int,
                        own_checkpoints: str) -> Checkpointer:
    """A reader of the source's checkpoints that converts into the fork's own folder, never the source's."""
    return Checkpointer(source.root, keep_last=1, rank=rank, world_size=world, zero_stage=zero_stage,
                        universal_root=own_checkpoints)

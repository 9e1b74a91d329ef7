"""DeepSpeed checkpoints that are never trusted half-written.

Every rank calls ``engine.save_checkpoint`` into ``checkpoints/step_NNNNNNNN``; after a barrier, rank 0 records the
files and their sizes in ``complete.json`` and only then points ``latest`` at the new tag (DeepSpeed's own
``latest`` format, so DeepSpeed's tools such as ``zero_to_fp32.py`` keep working), and prunes old checkpoints down
to ``keep_last``. On resume, a checkpoint without ``complete.json``, with missing or resized files, or that fails
to load is reported and the previous complete one is used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import torch.distributed as dist

from ..fileio import atomic_write, write_json_atomic

logger = logging.getLogger(__name__)
MARKER = "complete.json"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def step_of(tag: str) -> int:
    return int(tag.split("_")[-1])


class Checkpointer:
    def __init__(self, directory: str, engine, keep_last: int, rank: int):
        self.directory, self.engine, self.keep_last, self.rank = directory, engine, keep_last, rank

    # ---- saving ---------------------------------------------------------------------------------------
    def save(self, step: int, client_state: dict) -> str:
        tag = tag_for(step)
        self.engine.save_checkpoint(self.directory, tag=tag, client_state=client_state, save_latest=False)
        dist.barrier()
        if self.rank == 0:
            folder = os.path.join(self.directory, tag)
            files = {name: os.path.getsize(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
                     if os.path.isfile(os.path.join(folder, name)) and name != MARKER}
            write_json_atomic(os.path.join(folder, MARKER), {"step": step, "files": files})
            atomic_write(os.path.join(self.directory, "latest"), lambda f: f.write(tag.encode()))
            self._prune()
        dist.barrier()
        return tag

    def _prune(self) -> None:
        complete = self.complete_tags()
        for tag in complete[self.keep_last:]:
            shutil.rmtree(os.path.join(self.directory, tag), ignore_errors=True)
        keep = set(complete[: self.keep_last])
        newest = step_of(complete[0]) if complete else -1
        for tag in self.all_tags():  # leftovers of interrupted saves older than the newest complete one
            if tag not in keep and step_of(tag) < newest:
                shutil.rmtree(os.path.join(self.directory, tag), ignore_errors=True)

    # ---- finding and loading --------------------------------------------------------------------------
    def all_tags(self) -> list[str]:
        if not os.path.isdir(self.directory):
            return []
        tags = [t for t in os.listdir(self.directory) if t.startswith("step_") and t[5:].isdigit()]
        return sorted(tags, key=step_of, reverse=True)

    def problem(self, tag: str) -> str | None:
        """Why checkpoint ``tag`` cannot be trusted, or None."""
        folder = os.path.join(self.directory, tag)
        try:
            with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
                marker = json.load(f)
        except (OSError, json.JSONDecodeError):
            return "incomplete (no complete.json: the save did not finish)"
        for name, size in marker["files"].items():
            path = os.path.join(folder, name)
            if not os.path.isfile(path):
                return f"file {name} is missing"
            if os.path.getsize(path) != size:
                return f"file {name} has {os.path.getsize(path)} bytes, {size} were written"
        return None

    def complete_tags(self) -> list[str]:
        return [t for t in self.all_tags() if self.problem(t) is None]

    def load_latest(self) -> tuple[int, dict] | None:
        """Load the newest usable checkpoint into the engine; returns (step, client_state) or None."""
        tags = self.all_tags() if self.rank == 0 else []
        candidates = []
        for tag in tags:
            problem = self.problem(tag)
            if problem:
                logger.warning("checkpoint %s is not usable: %s; trying the previous one",
                               os.path.join(self.directory, tag), problem)
            else:
                candidates.append(tag)
        shared = [candidates]
        dist.broadcast_object_list(shared, src=0)
        for tag in shared[0]:
            failed = None
            try:
                path, client_state = self.engine.load_checkpoint(self.directory, tag=tag)
                if path is None:
                    failed = "DeepSpeed found nothing to load"
            except Exception as e:  # noqa: BLE001 - any failure means: use the previous checkpoint
                failed = f"{type(e).__name__}: {e}"
            flags = [failed]
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, flags[0])
            errors = [g for g in gathered if g]
            if not errors:
                return step_of(tag), client_state or {}
            if self.rank == 0:
                logger.warning("checkpoint %s failed to load (%s); trying the previous one",
                               os.path.join(self.directory, tag), errors[0])
        return None

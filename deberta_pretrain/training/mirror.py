"""A run directory mirrored to object storage (``train.remote_dir``), and resuming from the mirror on a machine that
has nothing of the run.

Rank 0 uploads in a background thread, so training waits on the network only when two checkpoints are already
queued. A checkpoint is uploaded after it is complete locally, its ``complete.json`` last (a remote checkpoint
without it is an interrupted upload, which resuming ignores), followed by the run's files (``metrics.jsonl``,
``train.log``, configs, vocabulary). Failed uploads are retried with backoff; a checkpoint that could not be
uploaded stays queued for the next start (local checkpoints that have not reached the mirror are never pruned by
``keep_last``), and the end of the run waits a bounded time for pending uploads and names those that did not
finish. ``keep_last`` applies to the mirror too.
"""

from __future__ import annotations

import logging
import os
import queue
import threading

from .. import remote
from ..deberta.release import SPM_VOCAB, VOCAB
from ..layout import CHECKPOINT_MARKER, CHECKPOINTS, CONFIG_CHANGES, GENERATOR_CONFIG, LATEST, LOG, METRICS
from ..layout import MODEL_CONFIG, RECORDED_CONFIG, checkpoints_dir, newest_first, step_of
from .checkpoint import checkpoint_tags, read_marker

logger = logging.getLogger("deberta_pretrain")
RUN_FILES = (METRICS, LOG, CONFIG_CHANGES, RECORDED_CONFIG, MODEL_CONFIG, GENERATOR_CONFIG, SPM_VOCAB, VOCAB)
RESUME_FILES = (METRICS, CONFIG_CHANGES, LOG)  # what a fresh machine needs besides weights
QUEUED = 2  # checkpoints waiting for upload before training waits for the network
FINAL_WAIT_S = 600  # at the end of a run (or after a stop request): how long pending uploads may take


def remote_run(remote_dir: str, name: str) -> str:
    return remote.join(remote_dir, name)


def complete_remote_tags(url: str) -> tuple[list[str], list[str]]:
    """(tags whose ``complete.json`` is in the mirror, newest first; tags without it) of a mirrored run."""
    complete, interrupted = [], []
    for tag in newest_first(remote.listdir(remote.join(url, CHECKPOINTS))):
        (complete if remote.exists(remote.join(url, CHECKPOINTS, tag, CHECKPOINT_MARKER)) else interrupted).append(tag)
    return complete, interrupted


def fetch_checkpoint(remote_dir: str, name: str, run_dir: str, tag: str | None = None) -> str | None:
    """Download the newest complete checkpoint of the mirrored run (``tag``: that one; ``ValueError`` naming the
    complete ones when it is not one of them) and the files resuming reads into ``run_dir``; returns its tag, or
    None when the mirror has none. Its files are checked against the sizes ``complete.json`` records;
    ``complete.json`` is written last, so an interrupted download is never trusted."""
    url = remote_run(remote_dir, name)
    complete, interrupted = complete_remote_tags(url)
    if tag is not None:
        if tag not in complete:
            raise ValueError(f"{remote.join(url, CHECKPOINTS, tag)} is not a complete checkpoint; the complete "
                             f"checkpoints of {url} are: {', '.join(sorted(complete)) or 'none'}")
        complete, interrupted = [tag], []
    newer = [t for t in interrupted if not complete or step_of(t) > step_of(complete[0])]
    if newer:
        logger.warning("ignoring checkpoints in %s whose upload never completed (no complete.json): %s",
                       url, ", ".join(newer))
    for tag in complete:
        source, target = remote.join(url, CHECKPOINTS, tag), os.path.join(checkpoints_dir(run_dir), tag)
        marker = remote.read_json(remote.join(source, CHECKPOINT_MARKER))
        sizes = {name: remote.size(remote.join(source, name)) for name in marker["files"]}
        if any(sizes[n] != size for n, size in marker["files"].items()):
            logger.warning("ignoring %s: its files differ from what its complete.json records", source)
            continue
        logger.warning("no checkpoint in %s: downloading %s from %s", run_dir, tag, url)
        for file in marker["files"]:
            remote.download(remote.join(source, file), os.path.join(target, file))
        for file in RESUME_FILES:
            if remote.exists(remote.join(url, file)):
                remote.download(remote.join(url, file), os.path.join(run_dir, file))
        remote.download(remote.join(source, CHECKPOINT_MARKER), os.path.join(target, CHECKPOINT_MARKER))
        with open(os.path.join(checkpoints_dir(run_dir), LATEST), "w", encoding="utf-8") as f:
            f.write(tag)
        return tag
    return None


class RunMirror:
    """Uploads the checkpoints and files of ``run_dir`` to ``<remote_dir>/<name>`` (rank 0; a no-op elsewhere or
    without ``train.remote_dir``). A context manager: leaving it waits for pending uploads (bounded)."""

    def __init__(self, run_dir: str, remote_dir: str | None, name: str, keep_last: int, enabled: bool):
        self.run_dir, self.keep_last = run_dir, keep_last
        self.url = remote_run(remote_dir, name) if remote_dir and enabled else None
        self.uploaded: set[str] = set()
        self.failed: dict[str, str] = {}
        self.pending: list[str] = []  # after close: the complete local checkpoints that did not reach the mirror
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUED)
        self._thread = None

    def __enter__(self):
        if self.url:
            mirrored = complete_remote_tags(self.url)[0]
            newest = step_of(mirrored[0]) if mirrored else -1
            local = [t for t in checkpoint_tags(checkpoints_dir(self.run_dir))
                     if read_marker(self._local(t)) is not None]
            self.uploaded = set(mirrored) | {t for t in local if step_of(t) <= newest}  # there, or superseded there
            self._thread = threading.Thread(target=self._work, name="run-mirror", daemon=True)
            self._thread.start()
            for tag in reversed(local):
                if tag not in self.uploaded:
                    self.checkpoint_saved(tag)  # complete locally, never uploaded (the storage was down, say)
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def complete(self) -> bool:
        """Whether every complete local checkpoint has reached the mirror (True without a mirror); read after
        leaving the context."""
        return not self.pending

    def _local(self, tag: str) -> str:
        return os.path.join(checkpoints_dir(self.run_dir), tag)

    def keeps(self, tag: str) -> bool:
        """Whether the local checkpoint ``tag`` must stay (it has not reached the mirror yet)."""
        return bool(self.url) and tag not in self.uploaded

    def checkpoint_saved(self, tag: str) -> None:
        """Queue the complete local checkpoint ``tag`` for upload (waits while ``QUEUED`` are already waiting)."""
        if self.url:
            self._queue.put(tag)

    def close(self, timeout: float = FINAL_WAIT_S) -> None:
        """Wait up to ``timeout`` seconds for the queued uploads; name those that did not finish."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        pending = [t for t in checkpoint_tags(checkpoints_dir(self.run_dir))
                   if read_marker(self._local(t)) is not None and t not in self.uploaded]
        self.pending = pending + (["(uploads still running)"] if self._thread.is_alive() and not pending else [])
        if self._thread.is_alive() or pending:
            why = "; ".join(f"{tag}: {self.failed[tag]}" for tag in pending if tag in self.failed)
            logger.warning("checkpoints not uploaded to %s: %s%s. They stay in %s; the next start of this run "
                           "uploads them", self.url, ", ".join(pending) or "(uploads still running)",
                           f" ({why})" if why else "", checkpoints_dir(self.run_dir))
        self._thread = None

    def _work(self) -> None:
        while (tag := self._queue.get()) is not None:
            try:
                self._with_retries(f"checkpoint {tag}", lambda t=tag: self._upload_checkpoint(t))
                self.uploaded.add(tag)
                logger.info("checkpoint %s uploaded to %s", tag, remote.join(self.url, CHECKPOINTS, tag))
                self.failed.pop(tag, None)
                self._with_retries("run files", self._upload_run_files)
                self._with_retries("pruning", self._prune)
            except remote.StorageError as e:
                self.failed[tag] = str(e)

    def _with_retries(self, what: str, action) -> None:
        remote.with_retries(action, f"upload to {self.url} ({what})")

    def _upload_checkpoint(self, tag: str) -> None:
        local, target = self._local(tag), remote.join(self.url, CHECKPOINTS, tag)
        marker = read_marker(local)
        for name in marker["files"]:
            key = remote.join(target, name)
            if remote.size(key) != marker["files"][name]:
                remote.upload(os.path.join(local, name), key)
        remote.upload(os.path.join(local, CHECKPOINT_MARKER), remote.join(target, CHECKPOINT_MARKER))

    def _upload_run_files(self) -> None:
        for name in RUN_FILES:
            if os.path.isfile(os.path.join(self.run_dir, name)):
                remote.upload(os.path.join(self.run_dir, name), remote.join(self.url, name))

    def _prune(self) -> None:
        """``keep_last`` in the mirror: older complete checkpoints, and interrupted uploads older than the newest
        complete one, are deleted (only what this mirror wrote: ``step_N`` folders of this run)."""
        complete, interrupted = complete_remote_tags(self.url)
        newest = step_of(complete[0]) if complete else -1
        for tag in complete[self.keep_last:] + [t for t in interrupted if step_of(t) < newest]:
            remote.remove(remote.join(self.url, CHECKPOINTS, tag))

"""Training shards of data in object storage, streamed through a bounded node-local cache (``data.cache_limit``).

Without a limit, a dataset in a bucket is staged whole before the first step (``staging``). With one, only its
manifest, vocabulary and validation shards are fetched at start-up; the training shards come as the run reaches
them. The node's first rank runs :class:`ShardCache`: before each step it keeps the shards of the windows the step
reads (``windows.EpochOrder``, ``data.shuffle_window``) and fetches the next window ahead while there is room, in a
background thread, evicting every other training shard, so the training shards on the node's disk never exceed the
limit. Every rank of the node reads them through :class:`StreamedShards`, which waits for a shard that has not
arrived yet (the wait is reported as ``data/fetch_wait_s``).

A shard is downloaded under a temporary name, checked against the manifest's sha256, and only then given its name,
so a reader never sees a partial or altered shard. The cache folder has no ``manifest.json`` while it is partial
(the manifest is kept as ``manifest.stream.json``), so a later run without a limit never takes it for a complete copy;
it fetches what is missing and keeps the rest.
"""

from __future__ import annotations

import bisect
import errno
import glob
import logging
import math
import multiprocessing
import os
import re
import threading
import time
from dataclasses import dataclass

import numpy as np

from .. import remote
from ..fileio import atomic_write, sha256_file
from .sampler import StepSampler
from .shards import DataError

logger = logging.getLogger("deberta_pretrain")
STREAM_MANIFEST = "manifest.stream.json"  # a streamed (partial) copy's manifest: never taken for a complete copy
FETCH_ERROR = ".fetch-error"  # written by the node's fetcher when it gives up: readers stop waiting and raise it
FETCHING = ".fetching"  # suffix of a shard being downloaded and checked
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "k": 10**3, "m": 10**6, "g": 10**9,
         "t": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(value, key: str = "data.cache_limit") -> int:
    """Bytes of ``value``: an integer, or text with a unit (``500MB``, ``2GB``, ``1.5GiB``); ``ValueError`` naming
    ``key`` for anything else or a size below one byte."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", value)
        if match and match.group(2).lower() in UNITS:
            number = math.floor(float(match.group(1)) * UNITS[match.group(2).lower()])
    if number is None or number < 1:
        raise ValueError(f"{key} must be a size in bytes, e.g. {key}=500MB, {key}=2GB or {key}=1073741824 (units B, "
                         f"KB, MB, GB, TB, KiB, MiB, GiB, TiB), got {value!r}")
    return number


def human(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.3g} {unit}"
        size /= 1000
    return f"{size:.3g} TB"


class StreamedShards:
    """The training split of a streamed source, read like ``shards.ShardedDataset``: ``dataset[i]`` is block ``i``.

    A block whose shard is not in the cache yet is waited for (the seconds are added to ``waited``, shared by the
    data-loader workers); the node's fetcher giving up ends the wait with its message. Each read opens the file
    anew and keeps nothing open, so an evicted shard's disk space is freed at once.
    """

    def __init__(self, path: str, manifest: dict, waited=None):
        self.path, self.split, self.manifest = path, "train", manifest
        self.max_seq_length = int(manifest["max_seq_length"])
        self.dtype = np.dtype(manifest["dtype"])
        self.shards = manifest["splits"]["train"]["shards"]
        self._starts = list(np.cumsum([0] + [s["num_samples"] for s in self.shards]))
        self.waited = waited if waited is not None else multiprocessing.Value("d", 0.0)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} train samples of {self.path}")
        shard = bisect.bisect_right(self._starts, index) - 1
        file = os.path.join(self.path, self.shards[shard]["file"])
        size = self.max_seq_length * self.dtype.itemsize
        started = None
        while True:
            try:
                with open(file, "rb") as f:
                    f.seek((index - int(self._starts[shard])) * size)
                    data = f.read(size)
                break
            except FileNotFoundError:
                started = started or time.monotonic()
                if os.path.isfile(os.path.join(self.path, FETCH_ERROR)):
                    with open(os.path.join(self.path, FETCH_ERROR), encoding="utf-8") as f:
                        raise DataError(f.read()) from None
                time.sleep(0.02)
        if started is not None:
            with self.waited.get_lock():
                self.waited.value += time.monotonic() - started
        return np.frombuffer(data, dtype=self.dtype).astype(np.int64)


@dataclass
class StreamedSource:
    """A source whose training shards are streamed: ``index`` is its place in the sampler's sources."""

    index: int
    url: str
    folder: str
    shards: list  # the manifest's training shards


Window = tuple[int, int]  # (epoch, window) of one source


class ShardCache:
    """The fetcher of one node (see the module docstring).

    Args:
        sources: the streamed sources of the run.
        sampler: a step sampler of the run's order (its own instance: this object uses it from its thread).
        limit: ``data.cache_limit`` in bytes.
    """

    def __init__(self, sources: list[StreamedSource], sampler: StepSampler, limit: int):
        self.sources, self.sampler, self.limit = sources, sampler, limit
        self.present: dict[tuple[int, int], int] = {}  # (source, shard) -> bytes, of shards in the cache
        self._target: int | None = None
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._closed = False

    # ---- which shards a step needs --------------------------------------------------------------------------
    def _window_at(self, source: int, position: int) -> Window:
        epoch, offset = divmod(position, self.sampler.sizes[source])
        return epoch, int(self.sampler.epoch_order(source, epoch).window_of([offset])[0])

    def _shards_of(self, source: int, window: Window) -> list[int]:
        return self.sampler.epoch_order(source, window[0]).windows[window[1]].tolist()

    def _after(self, source: int, window: Window) -> Window:
        epoch, index = window
        return (epoch, index + 1) if index + 1 < len(self.sampler.epoch_order(source, epoch).windows) else (
            epoch + 1, 0)

    def plan(self, step: int) -> tuple[list, list]:
        """(required, ahead): the (source, shard) pairs step ``step`` reads, in reading order, and those of the
        window after them, per streamed source."""
        before, after = self.sampler.samples_per_source(step), self.sampler.samples_per_source(step + 1)
        required, ahead = [], []
        for source in self.sources:
            first, last = before[source.index], after[source.index] - 1
            window = self._window_at(source.index, first)
            if last >= first:
                end = self._window_at(source.index, last)
                while True:
                    required += [(source.index, s) for s in self._shards_of(source.index, window)]
                    if window == end:
                        break
                    window = self._after(source.index, window)
                window = self._after(source.index, window)
            ahead += [(source.index, s) for s in self._shards_of(source.index, window)]
        required = list(dict.fromkeys(required))
        return required, [item for item in dict.fromkeys(ahead) if item not in set(required)]

    # ---- the node's fetcher ---------------------------------------------------------------------------------
    def _source(self, index: int) -> StreamedSource:
        return next(source for source in self.sources if source.index == index)

    def _file(self, item) -> str:
        source = self._source(item[0])
        return os.path.join(source.folder, source.shards[item[1]]["file"])

    @property
    def cache_bytes(self) -> int:
        return sum(self.present.values())

    def start(self, step: int) -> str:
        """Make the cache ready for ``step`` (what it reads, and the next window if it fits), then keep it ahead of
        the run in a background thread; returns what was fetched, for the start-up line."""
        for source in self.sources:
            for leftover in glob.glob(os.path.join(glob.escape(source.folder), f"*{FETCHING}")) + glob.glob(
                    os.path.join(glob.escape(source.folder), "*.partial-*")):
                os.remove(leftover)  # a download a kill cut short
        required, ahead = self.plan(step)
        keep = set(required) | set(ahead)
        for source in self.sources:  # shards a previous start left: kept when this start needs them and intact
            for shard, entry in enumerate(source.shards):
                file = os.path.join(source.folder, entry["file"])
                if not os.path.isfile(file):
                    continue
                if (source.index, shard) in keep and sha256_file(file) == entry["sha256"]:
                    self.present[source.index, shard] = entry["bytes"]
                else:
                    os.remove(file)
        started, before = time.monotonic(), len(self.present)
        try:
            self._serve(step, wait=True)
        except BaseException as e:
            self._fail(e)
            raise
        fetched = len(self.present) - before
        self._target = step
        self._thread = threading.Thread(target=self._work, name="shard-cache", daemon=True)
        self._thread.start()
        return (f"{fetched} training shard{'s' * (fetched != 1)} fetched before the first step in "
                f"{time.monotonic() - started:.1f} s; {human(self.cache_bytes)} of the {human(self.limit)} cache "
                f"limit in use")

    def step_done(self, step: int) -> None:
        """The node is at ``step`` now: what earlier steps read may go, the next window may come. Raises the
        fetcher's error, if it gave up."""
        if self._error is not None:
            raise self._error
        with self._changed:
            self._target = step
            self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _work(self) -> None:
        served = self._target
        while True:
            with self._changed:
                while self._target == served and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                served = self._target
            try:
                self._serve(served, wait=False)
            except BaseException as e:  # noqa: BLE001 - every failure must reach the readers and the trainer
                self._fail(e)
                return

    def _fail(self, error: BaseException) -> None:
        """Give up: the trainer raises ``error`` at its next step, the node's readers at their next wait."""
        self._error = error
        for source in self.sources:
            try:
                atomic_write(os.path.join(source.folder, FETCH_ERROR), lambda f: f.write(str(error).encode()))
            except OSError:
                pass

    def _serve(self, step: int, wait: bool) -> None:
        """Evict what ``step`` does not need, fetch what it reads, then the next window while it fits. Without
        ``wait``, stop as soon as the node moved on to another step (the next call starts from there)."""
        required, ahead = self.plan(step)
        keep = set(required) | set(ahead)
        for item in [item for item in self.present if item not in keep]:
            os.remove(self._file(item))
            del self.present[item]
        for item in required + ahead:
            if not wait and self._target != step:
                return
            if item in self.present:
                continue
            size = self._source(item[0]).shards[item[1]]["bytes"]
            if item not in required and self.cache_bytes + size > self.limit:
                return  # the next window waits for room
            self._fetch(item)
            self.present[item] = size

    def _fetch(self, item) -> None:
        source = self._source(item[0])
        entry = source.shards[item[1]]
        url, file = remote.join(source.url, entry["file"]), self._file(item)
        partial = file + FETCHING
        for attempt in (1, 2):  # a shard whose sha256 differs is fetched once more, then named
            try:
                remote.with_retries(lambda: remote.download(url, partial), f"fetching {url}",
                                    final=(FileNotFoundError,))
            except FileNotFoundError:
                raise DataError(f"{url}: the shard is missing from the bucket (manifest.json lists it); prepare the "
                                f"data again") from None
            except OSError as e:
                if e.errno == errno.ENOSPC or "No space left" in str(e):
                    raise DataError(f"{source.folder}: the disk is full while fetching {entry['file']} "
                                    f"(data.cache_limit={human(self.limit)} of training shards are kept there, "
                                    f"plus the validation shards); free space or lower data.cache_limit") from e
                raise
            got = sha256_file(partial)
            if got == entry["sha256"]:
                os.replace(partial, file)
                return
            os.remove(partial)
            if attempt == 2:
                raise DataError(f"{url}: sha256 {got} differs from manifest.json's {entry['sha256']} (fetched twice); "
                                f"the object was altered or replaced after the data was prepared")


def cache_need(sampler: StepSampler, sources: list[StreamedSource], start_step: int, max_steps: int) -> int:
    """The bytes of training shards the cache must hold for steps ``[start_step, max_steps)`` of the run: per
    source, the largest union of the windows one step can read and the window after them, summed over the
    sources."""
    total = 0
    for source in sources:
        sizes = np.asarray([entry["bytes"] for entry in source.shards], dtype=np.int64)
        n = sampler.sizes[source.index]
        first = sampler.samples_per_source(start_step)[source.index]
        last = max(first, sampler.samples_per_source(max_steps)[source.index] - 1)
        orders = [sampler.epoch_order(source.index, epoch) for epoch in range(first // n, last // n + 2)]
        members = [order.windows[w].tolist() for order in orders for w in range(len(order.windows))]
        ends = np.cumsum([order.window_starts[w + 1] - order.window_starts[w] for order in orders
                          for w in range(len(order.windows))])
        # the most positions of this source one step reads (the interleave gives it q of every period positions)
        quota, period = int(sampler.interleave.quotas[source.index]), sampler.interleave.period
        per_step = min(sampler.global_batch, -(-sampler.global_batch * quota // period) + 1)
        need = 0
        for i in range(len(members) - 1):  # a step starting at the last position of window i reads the most after
            last_window = min(int(np.searchsorted(ends, ends[i] - 1 + per_step - 1, side="right")),
                              len(members) - 2)
            shards = {shard for window in members[i: last_window + 2] for shard in window}
            need = max(need, int(sizes[sorted(shards)].sum()))
        total += need
    return total


def write_stream_manifest(folder: str, manifest_bytes: bytes) -> None:
    atomic_write(os.path.join(folder, STREAM_MANIFEST), lambda f: f.write(manifest_bytes))
    error = os.path.join(folder, FETCH_ERROR)
    if os.path.exists(error):  # the previous start's; this start fetches again
        os.remove(error)

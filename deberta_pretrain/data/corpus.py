"""The prepared datasets a pretraining run reads (``cfg.data``): one ``data.path``, or a mixture of named
``data.sources``, each a directory written by ``data_prep/prepare.py``.

A single ``data.path`` is a mixture of one unnamed source, read exactly as before mixtures existed. Named sources
must share the vocabulary and the block length; their shares come from their weights or, when no weight is given,
from their sizes and ``data.alpha`` (``mixture.source_shares``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
from dataclasses import dataclass

from .. import remote
from ..fileio import describe_folder
from ..layout import MANIFEST
from .mixture import check_source_name, source_shares, stream_key
from .sampler import StepSampler
from .shards import DataError, ShardedDataset, read_manifest
from .shards import vocab_path as manifest_vocab_path
from .staging import fetch_dataset, remote_manifest, stage_dataset, staged_path
from .streaming import ShardCache, StreamedShards, StreamedSource, cache_need, human, parse_size

SOURCE_KEYS = ("path", "weight")


@dataclass
class Source:
    """One prepared dataset of the run. ``name`` is None for a run on a single ``data.path``."""

    name: str | None
    path: str  # as configured
    weight: float | None = None
    local: str = ""  # where it is read: ``path``, or its node-local copy under ``data.stage_dir``
    share: float = 1.0
    train: ShardedDataset | StreamedShards | None = None
    validation: ShardedDataset | None = None
    manifest: dict | None = None  # a streamed source's manifest (its copy holds none: ``streaming``)

    @property
    def key(self) -> str:
        """The config key that names this source's path, for messages."""
        return "data.path" if self.name is None else f"data.sources.{self.name}.path"

    @property
    def label(self) -> str:
        return self.path if self.name is None else f"{self.name} ({self.path})"


def configured_sources(data) -> list[Source]:
    """The sources of a data config, named ones sorted by name; raises ``ValueError`` naming the key for a config
    with both or neither of ``data.path`` and ``data.sources``, a bad name, or an entry without a path."""
    sources = data.get("sources")
    if data.get("path") and sources:
        raise ValueError("data.path and data.sources are both set: give one source as data.path, or every source "
                         "(that one included) in data.sources with data.path=null (an experiment= may set data.path)")
    if data.get("path"):
        return [Source(None, str(data.path))]
    if not sources:
        raise ValueError("no data: set data.path=<prepared dir> or data.sources={<name>: {path: <prepared dir>, "
                         "weight: <number>}, ...}")
    if not hasattr(sources, "keys"):
        raise ValueError(f"data.sources must be a mapping {{<name>: {{path: ..., weight: ...}}, ...}}, got "
                         f"{type(sources).__name__} {sources!r}")
    out = []
    for name in sorted(sources, key=str):
        check_source_name(name)
        entry = sources[name]
        if not hasattr(entry, "keys"):
            raise ValueError(f"data.sources.{name} must be a mapping with keys {SOURCE_KEYS}, got {entry!r}")
        path = entry.get("path")
        if not isinstance(path, str) or not path:
            raise ValueError(f"data.sources.{name}.path: a prepared directory is needed, got {path!r}")
        out.append(Source(str(name), path, entry.get("weight")))
    return out


class Corpus:
    """The run's sources, checked and opened in two steps (``locate`` on every rank, then ``open`` once every
    node's copies exist), and the step sampler over them."""

    def __init__(self, data):
        self.data = data
        self.sources = configured_sources(data)
        self.tokens: dict = {}
        self.used: list[Source] = self.sources  # the sources with a positive share, in sampler order
        self.cache_limit = parse_size(data.cache_limit) if data.get("cache_limit") is not None else None
        self.fetcher_here = False  # this process fetches the node's streamed shards (the node's first rank)
        self.cache: ShardCache | None = None
        self.waited = multiprocessing.Value("d", 0.0)  # seconds this process's reads waited for streamed shards
        self._waited_reported = 0.0

    @property
    def streamed(self) -> list[Source]:
        """The sources whose training shards are streamed through the cache (``data.cache_limit``)."""
        return [source for source in self.sources if source.manifest is not None]

    @property
    def mixture(self) -> bool:
        """Named sources (their metrics are reported per source), as opposed to one ``data.path``."""
        return self.sources[0].name is not None

    def locate(self, copy_here: bool) -> None:
        """Check that every source exists; with ``data.stage_dir`` (and always for a source in object storage), point
        at the node-local copies (made here when ``copy_here``: the first rank of each node)."""
        # real paths: a symbolic link to a dataset is the same data (it would be read with double weight)
        paths = [os.path.realpath(s.path) if not remote.is_remote(s.path) else s.path for s in self.sources]
        for path in {p for p in paths if paths.count(p) > 1}:
            same = [s for s, p in zip(self.sources, paths) if p == path]
            named = ", ".join(f"{s.name} ({s.path})" for s in same)
            raise ValueError(f"data.sources: {named} are the same data ({path}); give it once, with the sum of "
                             f"their weights")
        if self.cache_limit is not None and not any(remote.is_remote(s.path) for s in self.sources):
            raise ValueError(f"data.cache_limit streams data from object storage, but {self.sources[0].key}="
                             f"{self.sources[0].path} is local (read in place, or copied whole with data.stage_dir); "
                             f"drop data.cache_limit")
        self.fetcher_here = copy_here
        for source in self.sources:
            if remote.is_remote(source.path):
                remote.check_reachable(source.path, source.key)
                stage_dir = self.data.stage_dir or remote.cache_dir("data")
                source.local = staged_path(source.path, stage_dir)
                if self.cache_limit is not None and not os.path.isfile(os.path.join(source.local, MANIFEST)):
                    source.manifest = json.loads(remote_manifest(source.path))  # a complete copy is read as it is
                    if copy_here:
                        fetch_dataset(source.path, stage_dir, stream=True)
                elif copy_here:
                    fetch_dataset(source.path, stage_dir)
                continue
            if os.path.isfile(source.path):
                raise ValueError(f"{source.key}: {source.path} is a file; give the folder data_prep/prepare.py "
                                 f"wrote (it holds manifest.json)")
            if not os.path.isdir(source.path):
                raise FileNotFoundError(f"{source.key}: {source.path} does not exist; prepare data with "
                                        f"`python data_prep/prepare.py output={source.path} ...`")
            source.local = source.path
            if self.data.stage_dir:
                source.local = staged_path(source.path, self.data.stage_dir)
                if copy_here:
                    stage_dataset(source.path, self.data.stage_dir)

    def check_compatible(self) -> None:
        """Every source has the first one's vocabulary and block length (a mixture of ids of two vocabularies would
        train nonsense), and the shares are set."""
        manifests = {}
        for source in self.sources:
            if not remote.is_remote(source.path) and os.listdir(source.path) and not os.path.isfile(
                    os.path.join(source.local, MANIFEST)) and not os.path.isdir(
                    os.path.join(source.path, ".prepare")):  # a run, an export, a folder of other files
                raise DataError(f"{source.key}: {source.path} is not prepared data (no manifest.json; it holds "
                                f"{describe_folder(source.path)})")
            try:
                manifests[source.name] = source.manifest or read_manifest(source.local)
            except DataError as e:
                raise DataError(f"{source.key}: {e}") from e
        first = self.sources[0]
        for source in self.sources[1:]:
            for what, get in (("vocabulary sha256", lambda m: m["vocab"].get("sha256")),
                              ("block length (max_seq_length)", lambda m: m["max_seq_length"])):
                mine, theirs = get(manifests[first.name]), get(manifests[source.name])
                if mine != theirs:
                    raise DataError(f"data.sources: {first.name} and {source.name} differ in {what}: {mine} in "
                                    f"{first.path}, {theirs} in {source.path}; prepare every source with the same "
                                    f"vocab= and max_seq_length=")
        self.tokens = {source.name: int(manifests[source.name]["splits"]["train"].get("num_tokens", 0))
                       for source in self.sources}
        if self.mixture:
            shares = source_shares({s.name: s.weight for s in self.sources}, self.tokens, self.data.alpha)
            for source in self.sources:
                source.share = shares[source.name]
        self.used = [source for source in self.sources if source.share > 0]

    def open(self, verify: str, expected_vocab: dict) -> None:
        """Open the train and validation splits of every source (``verify``: see ``ShardedDataset``)."""
        for source in self.sources:
            if source.manifest is not None:
                source.train = StreamedShards(source.local, source.manifest, self.waited)
            else:
                source.train = ShardedDataset(source.local, "train", verify=verify, expected_vocab=expected_vocab)
            source.validation = ShardedDataset(source.local, "validation", verify=verify,
                                               expected_vocab=expected_vocab, manifest=source.manifest)
            if len(source.train) == 0 and source.share > 0:
                raise ValueError(f"{source.key}: {source.path} has no training samples")

    @property
    def vocab_path(self) -> str:
        return manifest_vocab_path(self.sources[0].local, self.sources[0].manifest)

    @property
    def max_seq_length(self) -> int:
        return self.sources[0].train.max_seq_length

    @property
    def train_samples(self) -> int:
        return sum(len(source.train) for source in self.sources)

    def sampler(self, seed: int, global_batch_size: int, micro_batch_size: int, world_size: int,
                rank: int) -> StepSampler:
        """The step sampler over the sources with a positive share (``data.shuffle_window`` decides the order
        within each epoch)."""
        used = self.used
        return StepSampler([len(s.train) for s in used], seed, global_batch_size, micro_batch_size, world_size, rank,
                           [s.share for s in used], [stream_key(s.name) for s in used],
                           [[shard["num_samples"] for shard in s.train.shards] for s in used], self.data.shuffle_window)

    # ---- streaming (data.cache_limit) --------------------------------------------------------------------------
    def _streamed_sources(self) -> list[StreamedSource]:
        return [StreamedSource(index, s.path, s.local, s.train.shards) for index, s in enumerate(self.used)
                if s.manifest is not None]

    def check_cache_limit(self, seed: int, global_batch_size: int, max_steps: int) -> str | None:
        """``ValueError`` when ``data.cache_limit`` cannot hold what one step reads and the window after it (with
        the number needed); else a description of the streaming, for the start-up line (None: nothing streamed)."""
        if not self.streamed:
            return None
        sampler = self.sampler(seed, global_batch_size, global_batch_size, 1, 0)
        need = cache_need(sampler, self._streamed_sources(), 0, max_steps)
        window = self.data.shuffle_window
        shards = f"data.shuffle_window={window} shards" if window else "data.shuffle_window=null: the whole dataset"
        if need > self.cache_limit:
            raise ValueError(f"data.cache_limit={self.data.cache_limit} ({human(self.cache_limit)}) cannot hold the "
                             f"training shards a step reads and the window after them: {need} bytes "
                             f"({human(need)}) with {shards}; raise data.cache_limit to at least {need} or lower "
                             f"data.shuffle_window")
        outside = sum(os.path.getsize(os.path.join(s.local, f)) for s in self.streamed
                      for f in os.listdir(s.local) if not f.startswith("train-"))
        return (f"streaming {', '.join(s.label for s in self.streamed)} into {', '.join(s.local for s in self.streamed)}"
                f": training shards within data.cache_limit={human(self.cache_limit)} (two windows need at most "
                f"{human(need)}; {shards}); the vocabulary, manifest and validation shards ({human(outside)}) are "
                f"outside the limit")

    def start_reading(self, seed: int, global_batch_size: int, step: int) -> str | None:
        """On the node's first rank with streamed sources: fetch what ``step`` reads (the next window too, if it
        fits), and keep fetching ahead in the background; returns what was fetched (None elsewhere)."""
        if not (self.fetcher_here and self._streamed_sources()):
            return None
        self.cache = ShardCache(self._streamed_sources(), self.sampler(seed, global_batch_size, global_batch_size, 1,
                                                                       0), self.cache_limit)
        return self.cache.start(step)

    def step_done(self, step: int) -> None:
        """The run reached ``step``: the cache may evict what earlier steps read and fetch further ahead."""
        if self.cache is not None:
            self.cache.step_done(step)

    def reading_metrics(self) -> dict:
        """For training records when streaming: seconds this process's reads waited for shards since the last call,
        and the bytes of training shards in the node's cache."""
        if not self.streamed:
            return {}
        waited, self._waited_reported = self.waited.value - self._waited_reported, self.waited.value
        return {"data/fetch_wait_s": waited, "data/cache_bytes": self.cache.cache_bytes if self.cache else None}

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()

    def validation_blocks(self, source: Source, limit: int) -> int:
        """How many validation blocks of ``source`` an evaluation reads: its first ``limit`` (train.eval_samples)."""
        return min(len(source.validation), limit)

    def validation_weights(self, evaluated: list[Source], limit: int) -> dict[str, float]:
        """{source name: factor}: the mixture's validation statistics are the sum of each evaluated source's summed
        statistics times its factor, which weighs the source by its share per block (as if the validation blocks
        were drawn from the mixture). Sources without validation blocks (not in ``evaluated``) are left out and the
        others' shares renormalised; a source of share 0 is reported on its own, not mixed in. Empty when no
        evaluated source has a share."""
        mixed_in = [s for s in evaluated if s.share > 0]
        blocks = {s.name: self.validation_blocks(s, limit) for s in mixed_in}
        weight = sum(s.share for s in mixed_in)
        if weight <= 0:
            return {}
        scale = sum(blocks.values()) / weight
        return {s.name: s.share * scale / blocks[s.name] for s in mixed_in}

    def train_item(self, source: int, epoch: int, index: int):
        """(sample key, block) of a training sample as the sampler names it (``source``: an index into ``used``);
        the key seeds its masks."""
        chosen = self.used[source]
        return (epoch, index, *stream_key(chosen.name)), chosen.train[index]

    def validation_item(self, source: Source, index: int):
        return (0, index, *stream_key(source.name)), source.validation[index]

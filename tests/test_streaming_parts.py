"""The windowed shuffle (data.shuffle_window) and the arithmetic of the streaming cache (data.cache_limit), checked
against what the documented definition says, computed here independently: the shards of an epoch permuted, read
W at a time, samples permuted within each window."""

import os

import numpy as np
import pytest

from deberta_pretrain.data.mixture import stream_key
from deberta_pretrain.data.permutation import FeistelPermutation
from deberta_pretrain.data.sampler import StepSampler
from deberta_pretrain.data.streaming import ShardCache, StreamedSource, cache_need, parse_size

SHARDS = [52, 25, 68, 13, 18, 36, 13, 45, 76, 9, 7, 19, 31]  # samples per shard, unequal like real shards
STARTS = np.concatenate([[0], np.cumsum(SHARDS)])


def shard_of(index: int) -> int:
    return int(np.searchsorted(STARTS, index, side="right") - 1)


def read_order(sampler: StepSampler, steps: int) -> list[tuple[int, int]]:
    """(epoch, sample) of every position of the first ``steps`` steps, on one process."""
    return [(e, i) for step in range(steps) for micro in range(sampler.accumulation)
            for _, e, i in sampler.micro_batch(step, micro)]


@pytest.mark.parametrize("window", [None, len(SHARDS), 100])
def test_no_window_or_a_window_of_every_shard_is_todays_order(window):
    """Position g reads perm_e(g mod N) with the whole-dataset permutation keyed (seed, epoch), as before windows."""
    n = sum(SHARDS)
    sampler = StepSampler(n, 7, 8, 4, 1, 0, shard_samples=[SHARDS], window=window)
    expected = [(g // n, int(FeistelPermutation(n, [7, g // n])([g % n])[0])) for g in range(8 * 100)]
    assert read_order(sampler, 100) == expected


@pytest.mark.parametrize("window", [1, 3, 4])
def test_a_window_reads_its_shards_together_and_every_sample_once_per_epoch(window):
    n = sum(SHARDS)
    sampler = StepSampler(n, 7, 8, 8, 1, 0, shard_samples=[SHARDS], window=window)
    order = read_order(sampler, -(-3 * n // 8))[: 3 * n]
    for epoch in range(3):
        samples = [i for e, i in order if e == epoch]
        assert sorted(samples) == list(range(n))  # each sample exactly once per epoch
        shards = [shard_of(i) for i in samples]
        runs = [shards[0]]  # the shards in the order the epoch first reaches them
        for s in shards[1:]:
            if s not in runs:
                runs.append(s)
        assert sorted(runs) == list(range(len(SHARDS)))
        groups = [runs[k: k + window] for k in range(0, len(runs), window)]
        position = 0
        for group in groups:  # window k is read whole before window k+1 starts, and holds only its own shards
            size = sum(SHARDS[s] for s in group)
            assert set(shards[position: position + size]) == set(group)
            position += size
    first_epochs = {tuple(shard_of(i) for e, i in order if e == epoch)[:5] for epoch in range(3)}
    assert len(first_epochs) == 3  # each epoch has its own shard order


def test_the_windowed_order_does_not_depend_on_the_world_size():
    """1 process x accumulation 2 reads the samples of 2 processes x accumulation 1, step by step, with a mixture of
    two windowed sources."""
    sizes, shards = [sum(SHARDS), 60], [SHARDS, [20, 20, 20]]
    extra = dict(shares=[0.7, 0.3], stream_keys=[stream_key("a"), stream_key("b")], shard_samples=shards, window=2)
    alone = StepSampler(sizes, 9, 8, 4, 1, 0, **extra)
    pair = [StepSampler(sizes, 9, 8, 4, 2, rank, **extra) for rank in (0, 1)]
    for step in range(60):
        one = alone.micro_batch(step, 0) + alone.micro_batch(step, 1)
        two = pair[0].micro_batch(step, 0) + pair[1].micro_batch(step, 0)
        assert one == two, step


@pytest.mark.parametrize("text,expected", [("500MB", 500 * 10**6), ("2GB", 2 * 10**9), ("1.5GiB", 3 * 2**29),
                                           ("64 kB", 64000), (1000, 1000), ("4096", 4096), ("3tb", 3 * 10**12)])
def test_cache_limits_in_bytes_or_with_a_unit(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["0", 0, -5, "lots", "5XB", True, "MB", 2.5])
def test_bad_cache_limits_are_named(text):
    with pytest.raises(ValueError, match=r"data.cache_limit must be a size in bytes, e.g\. data.cache_limit=500MB"):
        parse_size(text)


def test_what_the_cache_must_hold():
    """Ten shards of 10 samples and 1,000 bytes each: a step of 4 samples reads from one window, or two when it
    crosses a boundary, and the window after is fetched ahead: with windows of 2 shards, three windows at most
    (6,000 bytes); without a window, the whole dataset once (10,000 bytes, not twice: the next epoch reads the same
    shards)."""
    shards = [{"file": f"train-{i:05d}.bin", "bytes": 1000, "num_samples": 10, "sha256": ""} for i in range(10)]
    source = [StreamedSource(0, "s3://bucket/data", "/unused", shards)]
    windowed = StepSampler(100, 1, 4, 4, 1, 0, shard_samples=[[10] * 10], window=2)
    assert cache_need(windowed, source, 0, 200) == 6000
    whole = StepSampler(100, 1, 4, 4, 1, 0, shard_samples=[[10] * 10], window=None)
    assert cache_need(whole, source, 0, 200) == 10000
    aligned = StepSampler(100, 1, 5, 5, 1, 0, shard_samples=[[10] * 10], window=2)  # 5 divides a window: 2 windows
    plan = ShardCache(source, aligned, 10**6).plan
    for step in range(40):
        required, ahead = plan(step)
        epoch, position = divmod(step * 5, 100)
        window = aligned.epoch_order(0, epoch).windows[position // 20].tolist()
        following = aligned.epoch_order(0, epoch + (position >= 80)).windows[(position // 20 + 1) % 5].tolist()
        assert [shard for _, shard in required] == window, step
        assert [shard for _, shard in ahead] == [s for s in following if s not in window], step  # not twice


@pytest.fixture
def bucket_on_disk(tmp_path, monkeypatch):
    """A dataset of 6 shards "in a bucket" (a local folder behind ``remote.download``, with faults injected by the
    test) and an empty cache folder; retries without waiting."""
    import hashlib

    from deberta_pretrain import remote

    stored = tmp_path / "bucket"
    stored.mkdir()
    shards = []
    for i in range(6):
        data = np.arange(i * 640, (i + 1) * 640, dtype="<u2").tobytes()  # 10 blocks of 64 ids
        (stored / f"train-{i:05d}.bin").write_bytes(data)
        shards.append({"file": f"train-{i:05d}.bin", "bytes": len(data), "num_samples": 10,
                       "sha256": hashlib.sha256(data).hexdigest()})
    faults = []  # per download: None (serve the object), an exception to raise, or "altered"

    def download(url, local):
        fault = faults.pop(0) if faults else None
        if isinstance(fault, Exception):
            raise fault
        data = (stored / url.rsplit("/", 1)[1]).read_bytes()
        with open(local, "wb") as f:
            f.write(bytes([data[0] ^ 0xFF]) + data[1:] if fault == "altered" else data)

    monkeypatch.setattr(remote, "download", download)
    monkeypatch.setattr(remote, "RETRY_DELAYS", (0, 0, 0))
    cache_folder = tmp_path / "cache"
    cache_folder.mkdir()
    source = StreamedSource(0, "s3://bucket/data", str(cache_folder), shards)
    manifest = {"max_seq_length": 64, "dtype": "<u2", "splits": {"train": {"shards": shards}}}
    return source, manifest, faults


def windowed_sampler():
    return StepSampler(60, 1, 4, 4, 1, 0, shard_samples=[[10] * 6], window=1)


def test_a_flaky_network_is_retried_and_an_altered_object_fetched_again(bucket_on_disk, caplog):
    from deberta_pretrain.data.streaming import StreamedShards

    source, manifest, faults = bucket_on_disk
    faults += [ConnectionError("connection reset"), TimeoutError("read timed out"), "altered"]
    cache = ShardCache([source], windowed_sampler(), 10**6)
    cache.start(0)
    cache.close()
    assert "attempt 1 of 4" in caplog.text and "attempt 2 of 4" in caplog.text and not faults
    reader = StreamedShards(source.folder, manifest)
    for _, _, index in cache.sampler.micro_batch(0, 0):  # what step 0 reads, from the cache
        assert reader[index].tolist() == list(range(index * 64, (index + 1) * 64))


@pytest.mark.parametrize("fault,message", [
    ("altered", "differs from manifest.json's"),
    (OSError(28, "No space left on device"), "the disk is full while fetching train-000"),
    (FileNotFoundError("gone"), "the shard is missing from the bucket"),
    (ConnectionError("connection refused"), "fetching s3://bucket/data/train-000"),
])
def test_a_fetch_that_cannot_succeed_is_named_to_the_run_and_every_reader(bucket_on_disk, fault, message):
    from deberta_pretrain.data.shards import DataError
    from deberta_pretrain.data.streaming import StreamedShards

    source, manifest, faults = bucket_on_disk
    faults += [fault] * 8
    cache = ShardCache([source], windowed_sampler(), 2000)
    with pytest.raises(OSError if isinstance(fault, ConnectionError) else DataError, match=message) as raised:
        cache.start(0)
    if fault == "altered":  # both digests, and that it was fetched twice
        shard = next(s for s in manifest["splits"]["train"]["shards"] if s["file"] in str(raised.value))
        assert shard["sha256"] in str(raised.value) and "(fetched twice)" in str(raised.value)
    if "disk is full" in message:
        assert source.folder in str(raised.value) and "data.cache_limit=2 kB" in str(raised.value)
    with pytest.raises(DataError, match=message):  # a reader on any rank of the node stops waiting with it
        StreamedShards(source.folder, manifest)[0]
    assert not [f for f in os.listdir(source.folder) if f.startswith("train-")]  # nothing half-fetched is left

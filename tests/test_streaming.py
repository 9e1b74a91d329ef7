"""Datasets in a bucket streamed through a bounded node-local cache (data.cache_limit, data.shuffle_window), against a
real S3 endpoint (moto's threaded server in this process). The reference for what a streamed run reads is the same
data on local disk with the same shuffle window: the two must train bit-equal weights."""

import json
import os
import shutil
import threading
import time

import pytest
import torch

from deberta_pretrain.training.metrics import read_metrics
from pretrain_helpers import fault_env, mixture_overrides, module_state, prepare_lines, run_pretrain, tiny_overrides
from storage_helpers import BUCKET, S3Server

pytestmark = pytest.mark.slow
LIMIT = 14_000  # bytes of training shards: about 4 of the 35 shards of 3.3 kB
STREAM = {"data.cache_limit": "14kB", "data.shuffle_window": 1, "train.global_batch_size": 16,
          "train.micro_batch_size": 8, "train.max_steps": 12, "train.checkpoint_every": 4, "train.eval_every": 6}


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    """4,000 lines of spelled-out arithmetic in blocks of 64 tokens, cut into 35 training shards of about 26 blocks
    (3.3 kB) each."""
    import numpy as np

    words = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
             "seventeen eighteen nineteen twenty").split()
    lines = [f"{words[a]} times {words[b]} makes {a * b}, while {words[a]} plus {words[b]} makes {words[a + b]}."
             for a, b in np.random.default_rng(1).integers(0, 11, (4000, 2))]
    path = prepare_lines(tmp_path_factory.mktemp("data"), "sums", lines, segment_mb=0.0065)
    assert len(json.load(open(path / "manifest.json"))["splits"]["train"]["shards"]) >= 30
    return path


@pytest.fixture(scope="module")
def bucket(many_shards, numbers_64):
    """The S3 endpoint with both datasets uploaded; yields (environment without a cache folder, {name: url})."""
    from deberta_pretrain.data.staging import upload_dataset

    server = S3Server(bucket=BUCKET)
    env = server.env()
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    urls = {"help": f"s3://{BUCKET}/stream/help", "numbers": f"s3://{BUCKET}/stream/numbers"}
    upload_dataset(str(many_shards), urls["help"])
    upload_dataset(str(numbers_64), urls["numbers"])
    yield env, urls
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


def training_shards(cache):
    """{file: bytes} of training shards (whole or being fetched) anywhere under ``cache``."""
    found = {}
    for root, _, files in os.walk(cache):
        for name in files:
            if name.startswith("train-"):
                try:
                    found[os.path.join(root, name)] = os.path.getsize(os.path.join(root, name))
                except FileNotFoundError:
                    pass  # evicted between the listing and the stat
    return found


@pytest.fixture(scope="module")
def streamed(bucket, tmp_path_factory):
    """An uninterrupted streamed run, with the cache folder polled while it trains: (run dir, overrides, largest
    bytes of training shards seen at once, every shard seen, the log)."""
    env, urls = bucket
    root = tmp_path_factory.mktemp("streamed")
    overrides = tiny_overrides(urls["help"], root / "runs", "run", **STREAM)
    seen, largest, done = set(), [0], threading.Event()

    def poll():
        while not done.is_set():
            found = training_shards(root / "cache")
            largest[0] = max(largest[0], sum(found.values()))
            seen.update(os.path.basename(f) for f in found if f.endswith(".bin"))
            time.sleep(0.005)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        result = run_pretrain(overrides, env={**env, "XDG_CACHE_HOME": str(root / "cache")})
    finally:
        done.set()
        poller.join()
    return root / "runs" / "run", overrides, largest[0], seen, result.stdout + result.stderr


def test_a_streamed_run_stays_within_its_limit_and_reads_what_a_local_run_reads(streamed, many_shards, tmp_path):
    run_dir, _, largest, seen, log = streamed
    assert 0 < largest <= LIMIT
    assert sum(os.path.getsize(many_shards / name) for name in seen) > LIMIT  # it evicted as it went
    first = next(line for line in log.splitlines() if "fetched before the first step" in line)
    assert int(first.split("data: ")[1].split()[0]) <= 3  # the first window and the next, not the 34 shards
    assert "outside the limit" in log and "data.shuffle_window=1 shards" in log
    records = [r for r in read_metrics(run_dir) if r["split"] == "train"]
    assert len(records) == 12 and all(0 < r["data/cache_bytes"] <= LIMIT and r["data/fetch_wait_s"] >= 0
                                      for r in records)
    cache = [os.path.join(root, f) for root, _, files in os.walk(run_dir.parent.parent / "cache") for f in files]
    assert not any(f.endswith("manifest.json") for f in cache)  # a partial copy is never taken for a complete one

    local = run_pretrain(tiny_overrides(many_shards, tmp_path, "local", **{
        **STREAM, "data.cache_limit": "null"}))  # the same windows, read from local disk
    assert local.returncode == 0
    expected, got = module_state(tmp_path / "local", 12), module_state(run_dir, 12)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_killed_then_machine_lost_resumes_elsewhere_bit_equal(streamed, bucket, tmp_path):
    """Killed while uploading checkpoint 8 (checkpoint 4 is in the bucket), then the machine is gone (run and cache
    deleted): a fresh one fetches only the resumed step's windows and ends bit-equal to the uninterrupted run."""
    env, urls = bucket
    straight, overrides, *_ = streamed
    common = [o for o in overrides if not o.startswith("output_root=")] + [
        f"train.remote_dir=s3://{BUCKET}/stream-runs"]
    first = run_pretrain(common + [f"output_root={tmp_path / 'a' / 'runs'}"], check=False,
                         env={**env, "XDG_CACHE_HOME": str(tmp_path / "a" / "cache"),
                              **fault_env("kill-before-upload-complete@8")})
    assert first.returncode != 0
    shutil.rmtree(tmp_path / "a")
    again = run_pretrain(common + [f"output_root={tmp_path / 'b' / 'runs'}"],
                         env={**env, "XDG_CACHE_HOME": str(tmp_path / "b" / "cache")})
    log = again.stdout + again.stderr
    assert "downloading step_00000004" in log and "resuming" in log, log[-3000:]
    fetched = next(line for line in log.splitlines() if "fetched before the first step" in line)
    assert int(fetched.split("data: ")[1].split()[0]) <= 3
    expected, got = module_state(straight, 12), module_state(tmp_path / "b" / "runs" / "run", 12)
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_two_streamed_sources_on_two_processes_resume_on_one_after_the_machine_is_lost(bucket, tmp_path):
    """A mixture of two sources in the bucket, 2 processes stopped at step 2, resumed by 1 process on a machine
    without the cache: it reads the samples the 2-process run reads (the same per-source counts, weights within the
    reduction-order tolerance of tests/test_elastic_resume.py)."""
    env, urls = bucket
    sources = mixture_overrides({"help": 0.6, "numbers": 0.4}, urls)
    settings = {**sources, "data.cache_limit": "150kB", "data.shuffle_window": 1, "model.hidden_dropout_prob": 0.0,
                "model.attention_probs_dropout_prob": 0.0}
    straight = run_pretrain(tiny_overrides("unused", tmp_path / "straight", "run", **settings), "deepspeed", 2,
                            env={**env, "XDG_CACHE_HOME": str(tmp_path / "straight-cache")})
    assert "streaming" in straight.stdout + straight.stderr
    stopped = run_pretrain(tiny_overrides("unused", tmp_path / "first", "run", **settings), "deepspeed", 2,
                           env={**env, "XDG_CACHE_HOME": str(tmp_path / "first-cache"), **fault_env("sigterm@2")},
                           check=False)
    assert stopped.returncode != 0 and (tmp_path / "first" / "run" / "checkpoints" / "step_00000002").is_dir()
    shutil.rmtree(tmp_path / "first-cache")
    run_pretrain(tiny_overrides("unused", tmp_path / "first", "run", **settings),
                 env={**env, "XDG_CACHE_HOME": str(tmp_path / "second-cache")})
    expected, got = module_state(tmp_path / "straight" / "run", 4), module_state(tmp_path / "first" / "run", 4)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)

    def per_source(run_dir):
        return [(r["step"], r["samples/help"], r["samples/numbers"]) for r in read_metrics(run_dir)
                if r["split"] == "train"]

    assert per_source(tmp_path / "first" / "run") == per_source(tmp_path / "straight" / "run")


@pytest.mark.parametrize("settings,message", [
    ({"data.cache_limit": "20kB", "data.shuffle_window": 4},
     "data.cache_limit=20kB (20 kB) cannot hold the training shards a step reads and the window after them"),
    ({"data.cache_limit": "1GB", "data.shuffle_window": 0}, "data.shuffle_window must be a number of shards >= 1"),
    ({"data.cache_limit": "lots"}, "data.cache_limit must be a size in bytes, e.g. data.cache_limit=500MB"),
    ({"data.cache_limit": "1GB", "LOCAL": True}, "data.cache_limit streams data from object storage, but data.path="),
])
def test_bad_streaming_settings_are_one_line_and_write_nothing(bucket, many_shards, tmp_path, settings, message):
    env, urls = bucket
    data = many_shards if settings.pop("LOCAL", False) else urls["help"]
    result = run_pretrain(tiny_overrides(data, tmp_path / "runs", "run", **settings), check=False,
                          env={**env, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert not (tmp_path / "runs").exists() and not training_shards(tmp_path / "cache")
    if "cannot hold" in message:
        need = int(errors[0].split("to at least ")[1].split()[0])
        assert need > 20_000 and f"{need} bytes" in errors[0]


def test_a_shard_altered_in_the_bucket_is_named(bucket, many_shards, tmp_path):
    """Every training shard in the bucket replaced after prepare: the first one fetched is fetched twice, then named
    with both digests; nothing altered is left in the cache."""
    from deberta_pretrain import remote
    from deberta_pretrain.data.staging import upload_dataset

    env, _ = bucket
    url = f"s3://{BUCKET}/stream/altered"
    upload_dataset(str(many_shards), url)
    manifest = json.load(open(many_shards / "manifest.json"))
    for shard in manifest["splits"]["train"]["shards"]:
        changed = tmp_path / shard["file"]
        original = (many_shards / shard["file"]).read_bytes()
        changed.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])
        remote.upload(str(changed), remote.join(url, shard["file"]))
    result = run_pretrain(tiny_overrides(url, tmp_path / "runs", "run", **STREAM), check=False,
                          env={**env, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors, result.stderr[-3000:]
    error = errors[-1]
    assert "differs from manifest.json's" in error and "(fetched twice)" in error and url in error
    assert not training_shards(tmp_path / "cache")

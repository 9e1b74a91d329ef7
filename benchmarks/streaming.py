"""Streaming from a bucket (``data.cache_limit``) and the shuffle window (``data.shuffle_window``), measured.

    python benchmarks/streaming.py [--shards 34] [--blocks-per-shard 256] [--steps 200] [--batch 64]
                                   [--windows 1,4,16] [--url s3://bucket/prefix]

Two parts, printed as one JSON object with the machine and the settings:

* ``order``: what the window does to the order of one epoch of a dataset of ``--shards`` equal shards, read
  ``--batch`` blocks a step: per window (and the whole dataset), the mean number of distinct shards a step reads and
  the mean distance in the corpus between consecutive samples of a step (as a share of the dataset: 1/3 for a
  uniform shuffle).
* ``reading``: blocks/s read in the run's order through the streaming cache (fetched from object storage, sha256
  checked, evicted behind the reads) vs from a local copy of the same shards, in this process, and their ratio.
  The bucket is ``--url`` (credentials from the AWS_* environment), or else moto's S3 server started here on
  localhost (``pip install moto[server]``; what the tests use), so that the figure is the cache's own cost.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np

from common import machine
from deberta_pretrain import remote
from deberta_pretrain.data.sampler import StepSampler
from deberta_pretrain.data.shards import ShardedDataset
from deberta_pretrain.data.streaming import ShardCache, StreamedShards, StreamedSource, cache_need

LENGTH = 128  # ids per block


def write_dataset(folder: str, shards: int, blocks: int) -> dict:
    """Shards of random 16-bit ids and their manifest (the layout data_prep/prepare.py writes)."""
    rng = np.random.default_rng(0)
    entries = []
    for i in range(shards):
        data = rng.integers(0, 50000, size=(blocks, LENGTH), dtype=np.uint16).astype("<u2").tobytes()
        name = f"train-{i:05d}.bin"
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        entries.append({"file": name, "bytes": len(data), "num_samples": blocks,
                        "sha256": hashlib.sha256(data).hexdigest()})
    manifest = {"max_seq_length": LENGTH, "dtype": "<u2", "vocab": {},
                "splits": {"train": {"shards": entries}, "validation": {"shards": []}}}
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return manifest


def order_report(shards: int, blocks: int, batch: int, windows: list) -> list[dict]:
    n = shards * blocks
    rows = []
    for window in windows:
        sampler = StepSampler(n, 0, batch, batch, 1, 0, shard_samples=[[blocks] * shards], window=window)
        distinct, distance = [], []
        for step in range(n // batch):
            samples = np.asarray([i for _, _, i in sampler.micro_batch(step, 0)])
            distinct.append(len(np.unique(samples // blocks)))
            distance.append(np.abs(np.diff(samples)).mean() / n)
        rows.append({"window": window if window else "whole dataset", "shards_per_step": float(np.mean(distinct)),
                     "mean_distance_share": round(float(np.mean(distance)), 4)})
    return rows


def read_all(dataset, sampler: StepSampler, steps: int, cache: ShardCache | None = None) -> float:
    """Blocks/s reading ``steps`` steps in the sampler's order."""
    started = time.perf_counter()
    for step in range(steps):
        for _, _, index in sampler.micro_batch(step, 0):
            dataset[index]
        if cache is not None:
            cache.step_done(step + 1)
    return steps * sampler.global_batch / (time.perf_counter() - started)


def reading_report(folder: str, manifest: dict, url: str, args) -> dict:
    for entry in manifest["splits"]["train"]["shards"]:
        remote.upload(os.path.join(folder, entry["file"]), remote.join(url, entry["file"]))
    shards = manifest["splits"]["train"]["shards"]
    sizes = [[e["num_samples"] for e in shards]]
    sampler = StepSampler(sum(sizes[0]), 0, args.batch, args.batch, 1, 0, shard_samples=sizes, window=args.window)
    local = read_all(ShardedDataset(folder, "train", verify="none"), sampler, args.steps)
    cache_folder = tempfile.mkdtemp(prefix="stream-cache-")
    source = StreamedSource(0, url, cache_folder, shards)
    limit = cache_need(sampler, [source], 0, args.steps) * 2
    cache = ShardCache([source], StepSampler(sum(sizes[0]), 0, args.batch, args.batch, 1, 0, shard_samples=sizes,
                                             window=args.window), limit)
    started = time.perf_counter()
    cache.start(0)
    first = time.perf_counter() - started
    reader = StreamedShards(cache_folder, manifest)
    streamed = read_all(reader, sampler, args.steps, cache)
    cache.close()
    return {"window": args.window, "cache_limit_bytes": limit, "seconds_before_first_step": round(first, 3),
            "local_blocks_per_s": round(local), "streamed_blocks_per_s": round(streamed),
            "streamed_vs_local": round(streamed / local, 3), "fetch_wait_s": round(reader.waited.value, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=34)
    parser.add_argument("--blocks-per-shard", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--window", type=int, default=4, help="the window of the reading part")
    parser.add_argument("--windows", default="1,4,16", help="windows of the order part (plus the whole dataset)")
    parser.add_argument("--url", default=None, help="a bucket prefix to upload to and stream from")
    args = parser.parse_args()
    windows = [int(w) for w in args.windows.split(",")] + [None]
    report = {"machine": machine(), "settings": {**vars(args), "block_length": LENGTH},
              "order": order_report(args.shards, args.blocks_per_shard, args.batch, windows)}
    with tempfile.TemporaryDirectory() as folder:
        manifest = write_dataset(folder, args.shards, args.blocks_per_shard)
        server = None
        url = args.url
        if url is None:
            from moto.server import ThreadedMotoServer  # noqa: PLC0415

            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
            with contextlib.redirect_stdout(sys.stderr):  # stdout holds the report only
                server.start()
            host, port = server.get_host_and_port()
            os.environ.update({"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "benchmark",
                               "AWS_SECRET_ACCESS_KEY": "benchmark", "AWS_DEFAULT_REGION": "us-east-1"})
            import boto3  # noqa: PLC0415

            boto3.client("s3").create_bucket(Bucket="benchmark")
            url = "s3://benchmark/streaming"
        try:
            report["reading"] = reading_report(folder, manifest, url, args)
        finally:
            if server is not None:
                server.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

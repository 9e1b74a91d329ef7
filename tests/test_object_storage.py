"""Data, checkpoints and exports in object storage, against a real S3 endpoint: moto's threaded server, started here
on localhost (no other network). Credentials and the endpoint reach every command through the standard AWS_*
environment, as they would on a cloud machine."""

import json
import os
import subprocess
import sys
import time

import pytest
import requests
import torch

from deberta_pretrain.training.metrics import read_metrics
from pretrain_helpers import ROOT, fault_env, module_state, run_pretrain, tiny_overrides
from storage_helpers import BUCKET, SECRET, S3Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3():
    server = S3Server(bucket=BUCKET)
    yield server
    server.stop()


@pytest.fixture
def storage_env(s3, tmp_path, monkeypatch):
    """The environment of a cloud machine: credentials, endpoint, and a cache folder of its own."""
    env = s3.env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def objects(prefix: str) -> list[str]:
    from deberta_pretrain import remote

    return remote.files_under(prefix)


def assert_no_secret(*folders):
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    assert SECRET.encode() not in f.read(), os.path.join(root, name)


def test_data_prepared_into_storage_trains_and_is_fetched_once(python_help_64, storage_env, tmp_path):
    from deberta_pretrain import remote
    from deberta_pretrain.data.prepare import prepare

    url = f"s3://{BUCKET}/data/python-help"
    prepare({"output": url, "input": {"type": "python-help"}, "vocab": None, "engine": "auto",
             "max_seq_length": 64, "packing": "continuous", "validation_fraction": 0.1, "segment_mb": 0.1,
             "num_proc": 1, "overwrite": False}, progress=False)  # the settings of the local python_help_64
    assert "manifest.json" in objects(url)
    from deberta_pretrain.data.staging import upload_dataset  # an upload cut short resumes: sent shards are kept

    remote.remove(remote.join(url, "manifest.json"))
    sent = []
    real_upload = remote.upload
    remote.upload = lambda local, target: (sent.append(target.rsplit("/", 1)[-1]), real_upload(local, target))
    try:
        upload_dataset(remote.cache_dir("prepare", remote.local_name(url)), url)
    finally:
        remote.upload = real_upload
    assert sent == ["manifest.json"]
    run_pretrain(tiny_overrides(url, tmp_path, "first", **{"train.max_steps": 2}), env=storage_env)
    staged = [os.path.join(root, f) for root, _, files in os.walk(tmp_path / "cache" / "deberta_pretrain" / "data")
              for f in files if f.endswith(".bin") and not f.startswith("bpe")]
    local = sorted(f for f in os.listdir(python_help_64) if f.endswith(".bin") and not f.startswith("bpe"))
    assert sorted(os.path.basename(f) for f in staged) == local
    for file in staged:  # byte for byte the shards of the same prepare on local disk
        assert open(file, "rb").read() == open(python_help_64 / os.path.basename(file), "rb").read(), file

    for shard in local:  # the second run on this node fetches nothing: the shards are not even there any more
        remote.remove(remote.join(url, shard))
    second = run_pretrain(tiny_overrides(url, tmp_path, "second", **{"train.max_steps": 2}), env=storage_env)
    assert second.returncode == 0 and (tmp_path / "second" / "checkpoints" / "latest").exists()


def test_a_run_resumes_from_its_mirror_on_a_fresh_machine_bit_equal(python_help_64, storage_env, tmp_path):
    """Killed while uploading its second checkpoint (its files are in the mirror, its complete.json is not), the run
    is restarted on a machine that has nothing of it: it ignores the interrupted upload, resumes from the first
    checkpoint in the mirror, and ends bit-equal to an uninterrupted run, with one metrics record per step."""
    common = {"train.max_steps": 6, "train.remote_dir": f"s3://{BUCKET}/runs", "data.num_workers": 1}
    run_pretrain(tiny_overrides(python_help_64, tmp_path / "straight", "run", **{"train.max_steps": 6}))
    first = run_pretrain(tiny_overrides(python_help_64, tmp_path / "machine-a", "run", **common),
                         env={**storage_env, **fault_env("kill-before-upload-complete@4")}, check=False)
    assert first.returncode != 0
    mirrored = objects(f"s3://{BUCKET}/runs/run/checkpoints")
    assert "step_00000002/complete.json" in mirrored and "step_00000004/mp_rank_00_model_states.pt" in mirrored
    assert "step_00000004/complete.json" not in mirrored

    resumed = run_pretrain(tiny_overrides(python_help_64, tmp_path / "machine-b", "run", **common), env=storage_env)
    log = resumed.stdout + resumed.stderr
    assert "whose upload never completed (no complete.json): step_00000004" in log
    assert "downloading step_00000002" in log and "resuming" in log
    straight, fresh = module_state(tmp_path / "straight" / "run", 6), module_state(tmp_path / "machine-b" / "run", 6)
    for key in straight:
        assert torch.equal(straight[key], fresh[key]), key
    with open(tmp_path / "machine-b" / "run" / "metrics.jsonl") as f:
        steps = [r["step"] for r in map(json.loads, f) if r["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
    mirrored = objects(f"s3://{BUCKET}/runs/run")
    assert {"checkpoints/step_00000004/complete.json", "checkpoints/step_00000006/complete.json",
            "metrics.jsonl", "train.log", ".hydra/config.yaml", "model_config.json"} <= set(mirrored), log[-3000:]
    assert not any(name.startswith("checkpoints/step_00000002/") for name in mirrored)  # keep_last=2, remotely too
    cache = tmp_path / "pulled"
    for name in mirrored:
        from deberta_pretrain import remote

        remote.download(f"s3://{BUCKET}/runs/run/{name}", str(cache / name))
    assert_no_secret(tmp_path / "machine-a", tmp_path / "machine-b", cache)


def test_storage_down_during_training(python_help_64, s3, tmp_path, monkeypatch):
    """The endpoint goes away after the first step: the run finishes, warns which checkpoints were not uploaded and
    keeps them; once the endpoint is back, the same command uploads them."""
    second = S3Server()  # another endpoint on the same storage, which this test may stop
    env = second.env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    overrides = tiny_overrides(python_help_64, tmp_path, "run", **{
        "train.max_steps": 6, "train.keep_last": 1, "train.remote_dir": f"s3://{BUCKET}/down"})
    full_env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **env)
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch", "pretrain.py"), *overrides], cwd=ROOT,
                               env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"split": "train"' in metrics.read_text()):
        time.sleep(0.1)
    second.stop()
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 3, output[-3000:]  # trained, but not mirrored: a job script can tell
    assert "checkpoints not uploaded to" in output and "step_00000006" in output
    local = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    assert "step_00000006" in local and len([t for t in local if t.startswith("step_")]) >= 2  # kept beyond 1

    again = S3Server(port=second.port)
    try:
        result = run_pretrain(overrides, env=env)
    finally:
        again.stop()
    assert "checkpoints not uploaded" not in result.stdout + result.stderr
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    assert "checkpoints/step_00000006/complete.json" in objects(f"s3://{BUCKET}/down/run")
    assert "metrics.jsonl" in objects(f"s3://{BUCKET}/down/run")
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["latest", "step_00000006"]  # pruned: uploaded


@pytest.mark.parametrize("problem", ["missing bucket", "bad credentials"])
def test_unusable_storage_stops_before_anything_is_written(python_help_64, s3, tmp_path, problem):
    env = s3.env(XDG_CACHE_HOME=str(tmp_path / "cache"))
    remote_dir = f"s3://{'no-such-bucket' if problem == 'missing bucket' else BUCKET}/runs"
    if problem == "bad credentials":
        requests.post(f"{s3.url}/moto-api/reset-auth", data=b"0").raise_for_status()  # keys must now exist
    try:
        result = run_pretrain(tiny_overrides(python_help_64, tmp_path, "run", **{"train.remote_dir": remote_dir}),
                              env=env, check=False, timeout=120)
        prepared = subprocess.run([sys.executable, os.path.join(ROOT, "data_prep", "prepare.py"),
                                   f"output={remote_dir}/data", "max_seq_length=64"], cwd=ROOT,
                                  env=dict(os.environ, **env), capture_output=True, text=True, timeout=120)
    finally:
        requests.post(f"{s3.url}/moto-api/reset-auth", data=b"inf").raise_for_status()
    expected = "does not exist" if problem == "missing bucket" else "check AWS_ACCESS_KEY_ID"
    for command, key in ((result, "train.remote_dir"), (prepared, "output")):
        assert command.returncode == 1
        errors = [line for line in (command.stdout + command.stderr).splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"{key}: {remote_dir}" in errors[0] and expected in errors[0], errors
        assert SECRET not in command.stdout + command.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_export_to_storage_and_start_from_it(python_help_64, storage_env, tmp_path):
    from deberta_pretrain import remote
    from deberta_pretrain.export import export
    from deberta_pretrain.finetune.pretrained import load_pretrained
    from deberta_pretrain.training.checkpoint import trained_models
    from deberta_pretrain.training.initial_weights import stored_weights

    run_pretrain(tiny_overrides(python_help_64, tmp_path, "run", **{"train.max_steps": 2}))
    url = f"s3://{BUCKET}/exports/run"
    assert export(tmp_path / "run", url, fmt="release") == url
    assert objects(url) == ["README.md", "bpe_encoder.bin", "export.json", "model_config.json", "pytorch_model.bin"]
    with pytest.raises(FileExistsError, match="holds an earlier export"):
        export(tmp_path / "run", url, fmt="release")
    trained, _ = trained_models(str(tmp_path / "run")).model
    state, config, vocab = stored_weights(url)
    assert config.hidden_size == 128 and os.path.basename(vocab) == "bpe_encoder.bin"
    for key in trained:
        assert torch.equal(state[key].float(), trained[key]), key
    assert load_pretrained(url).where == os.path.join("outputs", "finetune", remote.local_name(url))

    continued = run_pretrain(tiny_overrides(python_help_64, tmp_path, "continued", **{
        "model.init_from": url, "train.max_steps": 1}), env=storage_env)
    assert continued.returncode == 0


def test_a_fork_from_a_run_in_the_bucket_is_bit_equal_and_reads_only(python_help_64, storage_env, tmp_path):
    """train.fork_from=s3://.../<run>/checkpoints/step_N on a machine without the run: the checkpoint is copied into
    the cache, the fork is bit-equal to the source from there, and the bucket's objects are unchanged; a step the
    mirror lacks is refused naming the ones it has."""
    common = {"train.max_steps": 4, "train.checkpoint_every": 2, "train.keep_last": 2}
    run_pretrain(tiny_overrides(python_help_64, tmp_path / "machine-a", "source", **{
        **common, "train.remote_dir": f"s3://{BUCKET}/forks"}), env=storage_env)
    before = {key: remote_etag(key) for key in objects(f"s3://{BUCKET}/forks")}
    url = f"s3://{BUCKET}/forks/source/checkpoints/step_00000002"
    run_pretrain(tiny_overrides(python_help_64, tmp_path / "machine-b", "branch", **{
        **common, "train.fork_from": url}), env=storage_env)
    source, branch = tmp_path / "machine-a" / "source", tmp_path / "machine-b" / "branch"
    assert [(r["step"], r["loss"]) for r in read_metrics(branch) if r["split"] == "train"] == \
        [(r["step"], r["loss"]) for r in read_metrics(source) if r["split"] == "train" and r["step"] > 2]
    assert f"from {url} (copied to" in (branch / "train.log").read_text()
    assert {key: remote_etag(key) for key in objects(f"s3://{BUCKET}/forks")} == before
    missing = run_pretrain(tiny_overrides(python_help_64, tmp_path / "machine-b", "other", **{
        **common, "train.fork_from": url.replace("00000002", "00000003")}), env=storage_env, check=False)
    out = missing.stdout + missing.stderr
    assert missing.returncode == 1 and "the complete checkpoints of s3://" in out and "step_00000004" in out, out
    assert not (tmp_path / "machine-b" / "other").exists()


def remote_etag(key: str) -> str:
    """The object's ETag (a digest of its content) and modification time, as the store reports them."""
    from deberta_pretrain import remote

    fs, path = remote.filesystem(f"s3://{BUCKET}/forks/{key}")
    info = fs.info(path, refresh=True)
    return f"{info.get('ETag')} {info.get('LastModified')}"

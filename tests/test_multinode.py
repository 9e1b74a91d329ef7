"""Multi-node launches on one machine over loopback: two per-node ``deepspeed --no_ssh`` launches, and the SLURM
batch script with stand-ins for ``srun`` and ``scontrol`` (recording, then really running two nodes through a
preemption and a requeue)."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from deberta_pretrain.data import staging
from deberta_pretrain.data.shards import ShardedDataset
from deberta_pretrain.training.metrics import read_metrics
from pretrain_helpers import PRETRAIN, ROOT, fault_env, free_port, run_pretrain, tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(python_help_64):
    return python_help_64


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if r["split"] == "train"]


def env_for_ranks(**extra):
    return dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)


def start_two_nodes(tmp_path, overrides, port, fault=None):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    env = env_for_ranks(**(fault_env(fault) if fault else {}))
    return [subprocess.Popen([deepspeed, "--hostfile", str(hostfile), "--no_ssh", "--node_rank", str(rank),
                              "--master_addr", "127.0.0.1", "--master_port", str(port), PRETRAIN] + overrides,
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for rank in (0, 1)]


def wait_all(processes, timeout=300, expected: int = 0):
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    for p, out in zip(processes, outputs):
        assert p.returncode == expected, out[-5000:]
    return outputs


def test_two_per_node_launches_train_stop_and_resume_like_one_node(data, tmp_path):
    """Node ranks 0 and 1 (one process each) with ZeRO-2 and node-local staging, stopped by SIGTERM during step 3
    and started again: the same losses as one node with two processes."""
    common = {"deepspeed.zero_stage": 2}
    run_pretrain(tiny_overrides(data, tmp_path, "single", **common), "deepspeed", 2)
    nodes = tiny_overrides(data, tmp_path, "nodes", **common, **{"data.stage_dir": str(tmp_path / "local")})
    wait_all(start_two_nodes(tmp_path, nodes, free_port(), fault="sigterm@2"), expected=130)  # stopped, saved
    assert open(tmp_path / "nodes" / "checkpoints" / "latest").read().strip() == "step_00000003"
    outputs = wait_all(start_two_nodes(tmp_path, nodes, free_port()))
    assert "resuming" in outputs[0]
    assert losses(tmp_path / "nodes") == losses(tmp_path / "single")
    assert len(losses(tmp_path / "single")) == 4
    staged = os.listdir(tmp_path / "local")
    assert len(staged) == 1 and staged[0].startswith("python-help-")


def test_staging_copies_once_and_the_copy_reads_the_same(data, tmp_path):
    target = staging.stage_dataset(data, tmp_path / "local")
    original, copy = ShardedDataset(data, "train"), ShardedDataset(target, "train")
    assert len(copy) == len(original) and all((copy[i] == original[i]).all() for i in range(0, len(copy), 7))
    shard = os.path.join(target, copy.shards[0]["file"])
    before = os.stat(shard).st_mtime_ns
    assert staging.stage_dataset(data, tmp_path / "local") == target
    assert os.stat(shard).st_mtime_ns == before  # nothing copied again
    with open(shard, "r+b") as f:  # a bad local disk: same size, other bytes
        f.write(b"\xff\xff")
    with pytest.raises(ValueError, match="sha256"):
        ShardedDataset(target, "train")


# ---- SLURM ------------------------------------------------------------------------------------------------------

SRUN = """#!/usr/bin/env bash
# Stand-in for srun: records its arguments, then runs the command once per node (as SLURM would, one task per node)
echo "srun $*" >> "$RECORD"
while [[ "$1" == --* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
  SLURM_NODEID=$node SLURM_PROCID=$node SLURM_LOCALID=0 "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""
SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$RECORD"
if [ "$1 $2" = "show hostnames" ]; then printf '127.0.0.1\\nlocalhost\\n'; fi
"""
RECORDING_LAUNCHER = """#!/usr/bin/env bash
echo "node $SLURM_NODEID: $(basename "$0") $*" >> "$RECORD"
"""


def fake_bin(tmp_path, launchers=()):
    folder = tmp_path / "bin"
    folder.mkdir()
    scripts = {"srun": SRUN, "scontrol": SCONTROL, **{name: RECORDING_LAUNCHER for name in launchers}}
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod((folder / name).stat().st_mode | stat.S_IEXEC)
    return folder


def slurm_env(tmp_path, folder, **extra):
    values = {"PATH": f"{folder}:{os.environ['PATH']}", "RECORD": str(tmp_path / "record.txt"),
              "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[1-2]",
              "SLURM_GPUS_ON_NODE": "1", "SLURM_SUBMIT_DIR": ROOT}
    return env_for_ranks(**{**values, **extra})


@pytest.mark.parametrize("launcher", ["torchrun", "deepspeed"])
def test_sbatch_starts_the_per_node_launcher_on_every_node(tmp_path, launcher):
    folder = fake_bin(tmp_path, launchers=["torchrun", "deepspeed"])
    env = slurm_env(tmp_path, folder, LAUNCHER=launcher, SLURM_GPUS_ON_NODE="8")
    result = subprocess.run(["bash", "launch/slurm/pretrain.sbatch", "name=job", f"output_root={tmp_path}",
                             "model=tiny", "deepspeed=zero2"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    record = (tmp_path / "record.txt").read_text().splitlines()
    assert record[0] == "scontrol show hostnames node[1-2]"
    assert record[1] == "srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash launch/slurm/node.sh name=job " \
                        f"output_root={tmp_path} model=tiny deepspeed=zero2"
    port = 20000 + 4242
    per_node = sorted(line for line in record if line.startswith("node "))
    if launcher == "torchrun":
        assert per_node == [f"node {n}: torchrun --nnodes 2 --node_rank {n} --nproc_per_node 8 --master_addr "
                            f"127.0.0.1 --master_port {port} launch/pretrain.py name=job output_root={tmp_path} "
                            f"model=tiny deepspeed=zero2" for n in (0, 1)]
    else:
        for n, line in enumerate(per_node):
            assert line.startswith(f"node {n}: deepspeed --hostfile ")
            assert f"--no_ssh --node_rank {n} --num_nodes 2 --num_gpus 8 --master_addr 127.0.0.1 --master_port " \
                   f"{port} launch/pretrain.py name=job" in line
            hostfile = line.split("--hostfile ")[1].split()[0]
            assert open(hostfile).read() == "127.0.0.1 slots=8\nlocalhost slots=8\n"
    assert not any("requeue" in line for line in record)


def test_sbatch_without_a_name_refuses(tmp_path):
    folder = fake_bin(tmp_path)
    result = subprocess.run(["bash", "launch/slurm/pretrain.sbatch", "model=tiny"], cwd=ROOT,
                            env=slurm_env(tmp_path, folder), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "name=" in result.stderr
    assert not (tmp_path / "record.txt").exists()


def test_sbatch_two_nodes_preempted_requeued_and_resumed(data, tmp_path):
    """The real thing through the batch script: two nodes (torchrun each), USR1 before the time limit -> checkpoint,
    clean exit and `scontrol requeue`; the requeued job resumes the run and finishes it."""
    folder = fake_bin(tmp_path)
    env = slurm_env(tmp_path, folder, MASTER_PORT=str(free_port()))
    overrides = tiny_overrides(data, tmp_path, "job", **{"train.max_steps": 400, "train.checkpoint_every": 1000,
                                                        "deepspeed.zero_stage": 2})
    job = subprocess.Popen(["bash", "launch/slurm/pretrain.sbatch"] + overrides, cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "job" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and job.poll() is None:
        if metrics.exists() and any(json.loads(line).get("step", 0) >= 2 for line in metrics.read_text().splitlines()):
            break
        time.sleep(0.5)
    assert job.poll() is None, job.communicate()[0][-5000:]
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@600 does: only the batch shell gets it
    output = job.communicate(timeout=240)[0]
    assert job.returncode == 0, output[-5000:]
    assert "scontrol requeue 4242" in (tmp_path / "record.txt").read_text()
    stopped_at = int(open(tmp_path / "job" / "checkpoints" / "latest").read().strip().split("_")[1])
    assert 2 <= stopped_at < 400

    finish = tiny_overrides(data, tmp_path, "job", **{"train.max_steps": stopped_at + 2,
                                                      "deepspeed.zero_stage": 2})
    env["MASTER_PORT"] = str(free_port())
    requeued = subprocess.run(["bash", "launch/slurm/pretrain.sbatch"] + finish, cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
    assert requeued.returncode == 0, requeued.stdout[-5000:] + requeued.stderr[-3000:]
    steps = [step for step, _ in losses(tmp_path / "job")]
    assert steps == list(range(1, stopped_at + 3))
    assert f"resuming {tmp_path / 'job'} from step {stopped_at}" in (tmp_path / "job" / "train.log").read_text()
    assert (tmp_path / "record.txt").read_text().count("requeue") == 1

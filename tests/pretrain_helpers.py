"""Running ``launch/pretrain.py`` in subprocesses the way a user does, and reading what a run wrote."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import torch

from deberta_pretrain.training.distributed import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN = os.path.join(ROOT, "launch", "pretrain.py")


FAULTS = os.path.join(ROOT, "tests", "faults")


def fault_env(fault: str) -> dict:
    """Environment that makes every process of a run inject ``fault`` (see tests/faults/sitecustomize.py)."""
    path = os.environ.get("PYTHONPATH")
    return {"DEBERTA_PRETRAIN_FAULT": fault, "PYTHONPATH": FAULTS + (os.pathsep + path if path else "")}


def tiny_overrides(data_path, output_root, name: str, **extra) -> list[str]:
    """A run of the tiny model small enough for CI: 4 steps of 4 blocks, checkpoints every 2 steps."""
    values = {"name": name, "output_root": str(output_root), "data.path": str(data_path), "model": "tiny",
              "precision": "fp32", "seed": 3, "train.max_steps": 4, "train.global_batch_size": 4,
              "train.micro_batch_size": 2, "train.checkpoint_every": 2, "train.eval_every": 2,
              "train.eval_samples": 4, "train.log_every": 1, "optim.lr": 1e-3, "optim.warmup_steps": 1,
              "logging.wandb.mode": "disabled", "logging.progress_bar": False}
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def mixture_overrides(weights: dict, paths: dict) -> dict:
    """The overrides of a run on the mixture ``{name: weight}`` of the prepared ``{name: path}`` (for tiny_overrides's
    ``extra``: they replace its data.path)."""
    entries = ", ".join(f"{name}: {{path: {paths[name]}, weight: {weight}}}" for name, weight in weights.items())
    return {"data.path": "null", "data.sources": f"{{{entries}}}"}


def prepare_lines(folder, name: str, lines: list[str], segment_mb: float = 0.1):
    """``lines`` (one document each) prepared in blocks of 64 tokens with 10 % validation, as ``folder/name``."""
    from deberta_pretrain.data.prepare import prepare  # noqa: PLC0415

    (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    prepare({"output": str(folder / name), "input": {"type": "text", "paths": [str(folder / f"{name}.txt")],
             "doc_separator": "line"}, "vocab": None, "engine": "auto", "max_seq_length": 64,
             "packing": "continuous", "validation_fraction": 0.1, "segment_mb": segment_mb, "num_proc": 1,
             "overwrite": False}, progress=False)
    return folder / name


def launch_command(launcher: str, processes: int = 1) -> list[str]:
    if launcher == "python":
        assert processes == 1
        return [sys.executable, PRETRAIN]
    if launcher in ("deepspeed", "deepspeed-no-local-rank"):
        deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
        flags = ["--no_local_rank"] if launcher == "deepspeed-no-local-rank" else []
        return [deepspeed, "--num_gpus", str(processes), "--master_port", str(free_port()), *flags, PRETRAIN]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_port", str(free_port()), PRETRAIN]
    raise ValueError(launcher)


def run_pretrain(overrides: list[str], launcher: str = "python", processes: int = 1, env: dict | None = None,
                 timeout: int = 300, check: bool = True) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", WANDB_MODE="offline",
                    PYTHONUNBUFFERED="1", **(env or {}))
    result = subprocess.run(launch_command(launcher, processes) + overrides, cwd=ROOT, env=full_env,
                            capture_output=True, text=True, timeout=timeout,
                            start_new_session=True)  # a process group of its own: the ctrl-c fault signals it
    if check and result.returncode != 0:
        raise AssertionError(f"pretrain failed ({result.returncode}):\n{result.stdout[-4000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def checkpoint_dir(run_dir, step: int) -> str:
    return os.path.join(os.fspath(run_dir), "checkpoints", f"step_{step:08d}")


def module_state(run_dir, step: int) -> dict:
    """The model parameters saved at ``step`` (stage 0/1/2 checkpoints keep them whole in the model-states file)."""
    path = os.path.join(checkpoint_dir(run_dir, step), "mp_rank_00_model_states.pt")
    return torch.load(path, map_location="cpu", weights_only=False)["module"]


def assert_trained(run_dir, steps=4):
    """A finished run of ``steps`` steps: one finite training record per step, validation records, ``latest`` on the
    last checkpoint and that checkpoint complete."""
    from deberta_pretrain.training.metrics import read_metrics  # noqa: PLC0415

    records = [r for r in read_metrics(run_dir) if r["split"] == "train"]
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert all(math.isfinite(r["loss"]) and 0 < r["loss"] < 20 for r in records)
    validation = [r for r in read_metrics(run_dir) if r["split"] == "validation"]
    assert validation and all(r["predictions"] > 0 for r in validation)
    latest = open(os.path.join(run_dir, "checkpoints", "latest")).read().strip()
    assert latest == f"step_{steps:08d}"
    assert os.path.isfile(os.path.join(checkpoint_dir(run_dir, steps), "complete.json"))


def assert_layout(run_dir, stage: int, processes: int, precision: str, steps: int = 4):
    """DeepSpeed's file layout shows which ZeRO stage really ran, with how many ranks; the run wrote the tiny model's
    config in the release schema."""
    files = set(os.listdir(checkpoint_dir(run_dir, steps)))
    if stage == 0:
        assert "mp_rank_00_model_states.pt" in files and not any(f.startswith("zero_pp") for f in files)
    prefix = "bf16_" if precision == "bf16" and stage > 0 else ""
    for rank in range(processes if stage > 0 else 0):
        assert f"{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in files
    if stage == 3:
        assert f"zero_pp_rank_{processes - 1}_mp_rank_00_model_states.pt" in files
    else:
        weights = module_state(run_dir, steps)["deberta.embeddings.word_embeddings.weight"]
        assert weights.dtype == (torch.bfloat16 if precision == "bf16" else torch.float32)
    config = json.load(open(os.path.join(run_dir, "model_config.json")))
    assert config["hidden_size"] == 128 and config["pos_att_type"] == "p2c|c2p"

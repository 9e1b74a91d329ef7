"""Faults a long run meets, injected from outside the product (tests/faults/sitecustomize.py): checkpoints that
cannot be loaded, a kill or a full disk while saving, a loss that turns non-finite. After each, the newest good
checkpoint is intact and ``latest`` points at it, the run says what happened, and it never starts over quietly."""

import hashlib
import json
import math
import os

import pytest
import torch

from deberta_pretrain.training.metrics import read_metrics
from pretrain_helpers import checkpoint_dir, fault_env, module_state, run_pretrain, tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(python_help_64):
    return python_help_64


def snapshot(folder) -> dict:
    """Every file below ``folder`` with its sha256."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def latest(run_dir) -> str:
    return open(os.path.join(run_dir, "checkpoints", "latest")).read().strip()


def test_a_run_whose_checkpoints_all_fail_stops_with_each_listed_and_changes_nothing(data, tmp_path):
    run_pretrain(tiny_overrides(data, tmp_path, "run", **{"deepspeed.zero_stage": 1}))
    run_dir = tmp_path / "run"
    shard = os.path.join(checkpoint_dir(run_dir, 4), "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    os.truncate(shard, os.path.getsize(shard) // 2)  # a truncated copy: its recorded size no longer matches
    states = os.path.join(checkpoint_dir(run_dir, 2), "mp_rank_00_model_states.pt")
    with open(states, "r+b") as f:  # same size, content destroyed: found only when loading
        f.write(b"\0" * os.path.getsize(states))
    before = snapshot(tmp_path)
    result = run_pretrain(tiny_overrides(data, tmp_path, "run", **{"deepspeed.zero_stage": 1,
                                                                    "train.max_steps": 6}), check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "holds checkpoints but none can be resumed" in out and "Nothing was changed" in out
    assert f"{checkpoint_dir(run_dir, 4)}: file zero_pp_rank_0_mp_rank_00_optim_states.pt has" in out
    assert f"{checkpoint_dir(run_dir, 2)}: " in out
    assert snapshot(tmp_path) == before


def test_a_layout_no_conversion_bridges_is_refused(data, tmp_path):
    """ZeRO-2 state cannot be resumed without ZeRO; before, the weights were loaded and the optimizer started over."""
    run_pretrain(tiny_overrides(data, tmp_path, "run", **{"deepspeed.zero_stage": 2, "train.max_steps": 2}))
    before = snapshot(tmp_path)
    result = run_pretrain(tiny_overrides(data, tmp_path, "run", **{"deepspeed.zero_stage": 0}), check=False)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "partitioned" in out and "resume with a ZeRO stage of 1 to 3" in out
    assert snapshot(tmp_path) == before


def test_a_kill_while_saving_keeps_the_previous_checkpoint(data, tmp_path):
    """Step 4's checkpoint: both ranks wrote their files and rank 0 died before marking it complete (the worst
    moment: every file is there). The job is restarted on one process (a lost node) and resumes from step 2."""
    overrides = tiny_overrides(data, tmp_path, "run", **{"deepspeed.zero_stage": 2})
    first = run_pretrain(overrides, "deepspeed", 2, env=fault_env("kill-before-complete@4:0"), check=False)
    run_dir = tmp_path / "run"
    assert first.returncode != 0
    assert latest(run_dir) == "step_00000002"
    assert os.path.isdir(checkpoint_dir(run_dir, 4))
    assert not os.path.exists(os.path.join(checkpoint_dir(run_dir, 4), "complete.json"))
    second = run_pretrain(overrides)
    assert "resuming" in second.stdout + second.stderr and "from step 2" in second.stdout + second.stderr
    assert latest(run_dir) == "step_00000004"
    marker = json.load(open(os.path.join(checkpoint_dir(run_dir, 4), "complete.json")))
    assert marker["world_size"] == 1 and set(marker["files"]) == set(os.listdir(checkpoint_dir(run_dir, 4))) - {
        "complete.json"}  # the killed save's shards of two ranks were cleared before the new save


def test_a_full_disk_while_saving_stops_with_the_path_and_cause(data, tmp_path):
    overrides = tiny_overrides(data, tmp_path, "run")
    first = run_pretrain(overrides, env=fault_env("enospc@4"), check=False)
    run_dir, out = tmp_path / "run", first.stdout + first.stderr
    assert first.returncode != 0
    assert f"checkpoint {checkpoint_dir(run_dir, 4)} could not be written" in out
    assert "No space left on device" in out
    assert f"`latest` still names the previous checkpoint {checkpoint_dir(run_dir, 2)}" in out
    assert latest(run_dir) == "step_00000002"
    assert os.path.isfile(os.path.join(checkpoint_dir(run_dir, 2), "complete.json"))
    run_pretrain(overrides)  # space again: it resumes from step 2 and finishes
    assert latest(run_dir) == "step_00000004"
    assert [r["step"] for r in read_metrics(run_dir) if r["split"] == "train"] == [1, 2, 3, 4]


def test_a_non_finite_loss_with_skip_drops_that_update_and_counts_it(data, tmp_path):
    overrides = tiny_overrides(data, tmp_path, "run", **{"deepspeed.zero_stage": 2, "train.on_nonfinite": "skip",
                                                          "train.checkpoint_every": 1, "train.keep_last": 4})
    run_pretrain(overrides, env=fault_env("nan-loss@3"))
    run_dir = tmp_path / "run"
    records = {r["step"]: r for r in read_metrics(run_dir) if r["split"] == "train"}
    assert [records[s]["skipped_steps"] for s in (1, 2, 3, 4)] == [0, 0, 1, 1]
    assert math.isfinite(records[4]["loss"])
    at2, at3, at4 = (module_state(run_dir, s) for s in (2, 3, 4))
    for key in at2:  # step 3 changed nothing; step 4 trained again
        assert torch.equal(at2[key], at3[key]), key
    assert any(not torch.equal(at3[k], at4[k]) for k in at3)
    assert all(torch.isfinite(t).all() for t in at4.values())

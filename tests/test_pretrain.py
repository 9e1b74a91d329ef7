"""End-to-end pretraining through ``launch/pretrain.py``, as a user runs it: every launcher, ZeRO stage and
precision; exact resume after SIGKILL and Ctrl-C; start-up errors."""


import hashlib
import math
import os
import re

import pytest
import torch

from deberta_pretrain.training.metrics import read_metrics
from pretrain_helpers import (assert_layout, assert_trained, fault_env, mixture_overrides, module_state, run_pretrain,
                              tiny_overrides)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(python_help_64):
    return python_help_64


def train_records(run_dir):
    return [r for r in read_metrics(run_dir) if r["split"] == "train"]


# Every ZeRO stage in bf16 with one process or two, fp32 at stages 0 and 1 (fp32 at ZeRO 2 and 3 runs in
# test_elastic_resume.py, with the same checks; objective=rtd at stages 0 and 3 in test_rtd_pretrain.py); every
# launcher: python, deepspeed, deepspeed without --local_rank (torchrun: test_multinode.py). The same update whatever
# the world size (1 process x accumulation 2 = 2 processes): test_rtd_pretrain.py, whose generator is this MLM and
# whose loop, sampler and masking are these.
RUNS = [("python", 1, 0, "fp32"), ("python", 1, 1, "bf16"), ("python", 1, 3, "bf16"),
        ("deepspeed", 2, 0, "bf16"), ("deepspeed", 2, 1, "fp32"), ("deepspeed", 2, 2, "bf16"),
        ("deepspeed-no-local-rank", 2, 3, "bf16")]  # torchrun: test_multinode.py's SLURM run (two nodes)


@pytest.mark.parametrize("launcher,processes,stage,precision", RUNS, ids=["-".join(map(str, r)) for r in RUNS])
def test_trains_under_every_launcher_stage_and_precision(data, tmp_path, launcher, processes, stage, precision):
    run_pretrain(tiny_overrides(data, tmp_path, "run", precision=precision, **{"deepspeed.zero_stage": stage}),
                 launcher, processes)
    assert_trained(tmp_path / "run")
    assert_layout(tmp_path / "run", stage, processes, precision)


# The fault fires before the step after the given count of finished steps: SIGKILL before step 4 (the step-3 work is
# lost, step 2 is the last checkpoint); Ctrl-C during step 3, to the whole process group as a terminal sends it, the
# data-loader worker included (saved at the end of step 3, then exit 130). SIGTERM: test_multinode.py.
@pytest.mark.parametrize("fault", ["sigkill@3", "ctrl-c@2"])
def test_resume_after_a_kill_is_exact(data, numbers_64, tmp_path, fault):
    """A 4-step run, and a run stopped midway then restarted: bit-equal parameters and identical logged losses.
    Dropout stays on, so the per-step RNG state must be restored as well. The killed run reads a mixture of two
    sources (each with its own order and epochs), the interrupted one a single data.path with document attention."""
    common = {"deepspeed.zero_stage": 1, "data.num_workers": 1, "model.vocab_size": 51000}
    if fault.startswith("sigkill"):
        common.update(mixture_overrides({"help": 0.7, "numbers": 0.3}, {"help": data, "numbers": numbers_64}))
    else:
        common["data.document_attention"] = True  # its batches carry document ids and positions: resumed alike
    run_pretrain(tiny_overrides(data, tmp_path, "straight", **common))
    first = run_pretrain(tiny_overrides(data, tmp_path, "stopped", **common),
                         env=fault_env(fault), check=False)
    stopped, out = tmp_path / "stopped", first.stdout + first.stderr
    assert "model.vocab_size (51000) is larger than the data's vocabulary" in out  # a start-up warning, logged
    if fault.startswith("sigkill"):
        assert first.returncode != 0
        assert open(stopped / "checkpoints" / "latest").read().strip() == "step_00000002"
    else:
        assert first.returncode == 130 and "Traceback" not in out, out[-3000:]
        assert open(stopped / "checkpoints" / "latest").read().strip() == "step_00000003"
        assert "stopped at step 3 after a stop request" in out and "run the same command to resume" in out
    run_pretrain(tiny_overrides(data, tmp_path, "stopped", **common))
    straight, resumed = module_state(tmp_path / "straight", 4), module_state(stopped, 4)
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert [(r["step"], r["loss"]) for r in train_records(tmp_path / "straight")] == \
        [(r["step"], r["loss"]) for r in train_records(stopped)]
    assert "resuming" in open(stopped / "train.log").read()


@pytest.mark.parametrize("override,message", [
    ("+train.max_stepz=3", "unknown key train.max_stepz (did you mean train.max_steps?)"),  # Hydra's + too
    ("train.max_steps=many", "train.max_steps"),
    ("data.path=/nonexistent/prepared", "data.path: /nonexistent/prepared does not exist"),
    ("precision=fp8", "precision"),
    ("train.on_nonfinite=skip", "train.on_nonfinite=skip drops an update through DeepSpeed"),  # at ZeRO stage 0
    ("+deepspeed.extra.zero_optimization.reduce_bucket_sze=5",  # DeepSpeed's own schema, in one line
     "error: deepspeed.extra.zero_optimization.reduce_bucket_sze: extra inputs are not permitted"),
])
def test_bad_overrides_fail_before_training_and_touch_nothing(data, tmp_path, override, message):
    overrides = [o for o in tiny_overrides(data, tmp_path, "bad") if o.split("=")[0] != override.split("=")[0]]
    result = run_pretrain(overrides + [override], check=False, timeout=120)
    assert result.returncode == 1  # bad input (docs/resume-and-faults.md: exit codes)
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "bad").exists()


def test_missing_data_path_is_named(tmp_path):
    result = run_pretrain([f"output_root={tmp_path}", "name=nodata", "logging.wandb.mode=disabled"], check=False,
                          timeout=120)
    assert result.returncode != 0 and "data.path" in result.stdout + result.stderr
    assert not (tmp_path / "nodata").exists()


def file_hashes(folder) -> dict:
    return {os.path.relpath(os.path.join(root, name), folder):
            hashlib.sha256(open(os.path.join(root, name), "rb").read()).hexdigest()
            for root, _, names in os.walk(folder) for name in names}


def test_document_attention_train_and_the_log_tells_the_run(data, tmp_path):
    """A run with document attention and span masking trains; its train.log records it from start to end, with time
    stamps; the same command again says the run is finished and changes nothing; a phase started under the same
    name is told that it resumes the run, and how to start a phase."""
    common = {"data.document_attention": True, "data": "span", "model.max_position_embeddings": 64}
    run_pretrain(tiny_overrides(data, tmp_path, "docs", **common))
    run_dir = tmp_path / "docs"
    assert_trained(run_dir)
    saved = open(run_dir / ".hydra" / "config.yaml").read()
    assert "document_attention: true" in saved and "masking: span" in saved
    lines = (run_dir / "train.log").read_text().splitlines()
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) ", line) for line in lines), lines
    text = "\n".join(lines)
    expected = [f"data: {data}: ", "training and ", f"run docs in {run_dir}: settings ", "starting at step 0 of 4: "
                "objective mlm, ", "validation at step 0: loss ", f"checkpoint of step 2 saved: {run_dir}",
                "validation at step 4: loss ", f"finished {run_dir} at step 4. Next: export: python launch/export.py "
                f"checkpoint={run_dir} output=release/docs; plots: python launch/plot.py run={run_dir}"]
    positions = [text.find(part) for part in expected]
    assert -1 not in positions and positions == sorted(positions), list(zip(expected, positions))

    before = file_hashes(run_dir)
    again = run_pretrain(tiny_overrides(data, tmp_path, "docs", **common))
    assert f"{run_dir} is finished: its checkpoint is at step 4 of train.max_steps=4; nothing was trained or " \
           "changed" in again.stdout + again.stderr
    assert file_hashes(run_dir) == before

    from deberta_pretrain.data.prepare import prepare

    longer = tmp_path / "blocks-128"
    prepare({"output": str(longer), "input": {"type": "python-help"}, "vocab": None, "engine": "auto",
             "max_seq_length": 128, "packing": "continuous", "validation_fraction": 0.1, "segment_mb": 1,
             "num_proc": 1, "overwrite": False}, progress=False)
    phase = run_pretrain(tiny_overrides(longer, tmp_path, "docs", **{**common, "model.max_position_embeddings": 128,
                                                                     "model.init_from": run_dir}), check=False)
    out = phase.stdout + phase.stderr
    assert phase.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert f"this command resumes the run in {run_dir}" in out and f"name=<new> model.init_from={run_dir}" in out
    assert file_hashes(run_dir) == before


def test_wsd_schedule_from_the_logged_rates_and_a_longer_run_moves_its_decay(data, tmp_path):
    """optim.schedule=wsd, read back from metrics.jsonl (the logged rate is the next update's): warm-up over 2, the
    peak, then 1 - sqrt(t) over the last 3 updates to 0.1 x the peak. Resumed with a larger train.max_steps, the
    decay moves to the new end. Bad wsd settings are refused by key before anything is written."""
    peak, end = 1e-3, 0.1

    def expected(update, total):
        if update < 2:
            return peak * update / 2
        t = min(max(update - (total - 3), 0) / 3, 1.0)
        return peak * (end + (1 - end) * (1 - math.sqrt(t)))

    common = {"optim.schedule": "wsd", "optim.decay_steps": 3, "optim.decay_shape": "sqrt", "optim.warmup_steps": 2,
              "optim.end_lr_ratio": end, "train.eval_every": 100, "train.checkpoint_every": 100}
    run_pretrain(tiny_overrides(data, tmp_path, "wsd", **common, **{"train.max_steps": 6}))
    run_pretrain(tiny_overrides(data, tmp_path, "wsd", **common, **{"train.max_steps": 9}))
    lr = {r["step"]: r["lr"] for r in train_records(tmp_path / "wsd")}
    assert sorted(lr) == list(range(1, 10))
    for step, rate in lr.items():
        total = 6 if step <= 6 else 9  # steps 1-6 logged by the first start, 7-9 by the resumed one
        assert rate == pytest.approx(expected(step + 1, total), rel=1e-9, abs=1e-12), (step, rate)
    assert lr[2] == pytest.approx(peak) and lr[6] == pytest.approx(end * peak) and lr[7] > lr[6]

    for override, message in ((["optim.decay_steps=null"], "optim.schedule=wsd needs optim.decay_steps"),
                              (["optim.decay_steps=6"], "optim.warmup_steps (2) + optim.decay_steps (6) exceed "
                                                        "train.max_steps (4)"),
                              (["optim.decay_shape=exp"], "optim.decay_shape: 'exp' is not one of")):
        settings = {**common, **dict(o.split("=", 1) for o in override)}
        result = run_pretrain(tiny_overrides(data, tmp_path, "bad", **settings), check=False)
        assert result.returncode == 1 and message in result.stdout + result.stderr, result.stderr[-2000:]
        assert not (tmp_path / "bad").exists()

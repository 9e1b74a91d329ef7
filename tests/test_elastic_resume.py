"""A run resumes on another number of processes: the checkpoint's partitioned ZeRO state is converted once to
DeepSpeed's universal format and re-partitioned, and the run follows the uninterrupted one (CPU, gloo, fp32).

The tolerance is what reduction order explains: 2 processes x accumulation 1 and 1 process x accumulation 2 sum
the same per-sample gradients in another order (about 1e-7 relative in fp32 after a step); over the 4 AdamW steps
here the uninterrupted runs on 1 and 2 processes stay within 1e-5 of each other, and so must a resumed run.
Dropout is off: its masks are drawn per rank, so they differ between world sizes by design."""

import json
import os
import shutil

import pytest
import torch

from deberta_pretrain.training.metrics import read_metrics
from pretrain_helpers import (assert_layout, assert_trained, checkpoint_dir, mixture_overrides, run_pretrain,
                              tiny_overrides)

pytestmark = pytest.mark.slow
TOLERANCE = dict(rtol=1e-5, atol=1e-6)
NO_DROPOUT = {"model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0}


def launcher(processes):
    return ("python", 1) if processes == 1 else ("deepspeed", 2)


def fp32_weights(run_dir, step):
    """The fp32 master weights of a ZeRO checkpoint, merged by DeepSpeed's own zero_to_fp32."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(os.path.join(run_dir, "checkpoints"), tag=f"step_{step:08d}")


@pytest.fixture(scope="module")
def data(python_help_64):
    return python_help_64


@pytest.fixture(scope="module")
def straight_runs(data, numbers_64, tmp_path_factory):
    """Uninterrupted 4-step runs, one per (ZeRO stage, processes, offload, mixture), made once and shared; a mixture
    run reads two sources (data.sources) instead of one data.path."""
    root, made = tmp_path_factory.mktemp("straight"), {}

    def get(stage, processes, offload=False, mixture=False):
        key = (stage, processes, offload, mixture)
        if key not in made:
            name = f"s{stage}-p{processes}{'-offload' if offload else ''}{'-mixture' if mixture else ''}"
            sources = mixture_overrides({"help": 0.6, "numbers": 0.4}, {"help": data, "numbers": numbers_64}) \
                if mixture else {}
            overrides = tiny_overrides(data, root, name, **NO_DROPOUT, **sources, **{"deepspeed.zero_stage": stage,
                                                                                   "deepspeed.offload": offload})
            run_pretrain(overrides, *launcher(processes))
            assert_trained(root / name)  # these runs double as fp32 cases of test_pretrain.py
            assert_layout(root / name, stage, processes, "fp32")
            made[key] = (root / name, overrides)
        return made[key]

    return get


def interrupted_copy(run_dir, target, step):
    """``run_dir`` as it was when it had just saved ``step``: later checkpoints gone, ``latest`` on ``step``, and
    the metrics of the later steps still in metrics.jsonl (as after a kill)."""
    shutil.copytree(run_dir, target)
    for tag in os.listdir(target / "checkpoints"):
        if tag.startswith("step_") and int(tag[5:]) > step:
            shutil.rmtree(target / "checkpoints" / tag)
    (target / "checkpoints" / "latest").write_text(f"step_{step:08d}")


# Both directions at ZeRO-3 (whose universal load needed two repairs); ZeRO 1 and 2 share DeepSpeed's other ZeRO
# optimizer and its universal load, covered by the offload case below (ZeRO-2, 2 -> 1). Kept to these for the time
# the suite takes on two cores; the other combinations passed when this was written.
CASES = [(3, 2, 1), (3, 1, 2)]


@pytest.mark.parametrize("stage,before,after", CASES, ids=[f"zero{s}-{b}to{a}" for s, b, a in CASES])
def test_resume_on_another_world_size_follows_the_uninterrupted_run(straight_runs, tmp_path, stage, before, after):
    straight, overrides = straight_runs(stage, before)
    resumed = tmp_path / "resumed"
    interrupted_copy(straight, resumed, step=2)
    overrides = [o for o in overrides if not o.startswith(("output_root=", "name="))] + [
        f"output_root={tmp_path}", "name=resumed"]
    result = run_pretrain(overrides, *launcher(after))
    log = result.stdout + result.stderr
    assert f"written by {before} ranks" in log and "universal format" in log
    assert os.path.isfile(os.path.join(checkpoint_dir(resumed, 2), "universal", "complete.json"))
    assert json.load(open(os.path.join(checkpoint_dir(resumed, 4), "complete.json")))["world_size"] == after

    expected, got = fp32_weights(straight, 4), fp32_weights(resumed, 4)
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], **TOLERANCE, msg=key)
    # the uninterrupted run on the other world size agrees to the same tolerance: the bound is reduction order
    other = fp32_weights(straight_runs(stage, after)[0], 4)
    for key in expected:
        torch.testing.assert_close(other[key], expected[key], **TOLERANCE, msg=key)

    with open(resumed / "metrics.jsonl") as f:  # one record per step and split, continuing at step 3
        records = [(r["split"], r["step"]) for r in map(json.loads, f)]
    assert sorted(records) == sorted({*records}) and [s for split, s in records if split == "train"] == [1, 2, 3, 4]
    straight_losses = {r["step"]: r["loss"] for r in read_metrics(straight) if r["split"] == "train"}
    resumed_losses = {r["step"]: r["loss"] for r in read_metrics(resumed) if r["split"] == "train"}
    assert resumed_losses == pytest.approx(straight_losses, rel=1e-5)


def test_resume_with_offloaded_optimizer_state_on_another_world_size(straight_runs, tmp_path):
    """ZeRO-2 with the optimizer state in CPU memory (DeepSpeed's CPU-Adam), 2 processes -> 1, on a mixture of two
    sources: the resumed run reads the samples the uninterrupted one read."""
    straight, overrides = straight_runs(2, 2, offload=True, mixture=True)
    resumed = tmp_path / "resumed"
    interrupted_copy(straight, resumed, step=2)
    overrides = [o for o in overrides if not o.startswith(("output_root=", "name="))] + [
        f"output_root={tmp_path}", "name=resumed"]
    run_pretrain(overrides, "python", 1)
    expected, got = fp32_weights(straight, 4), fp32_weights(resumed, 4)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], **TOLERANCE, msg=key)

    def per_source(run_dir):
        return [(r["step"], r["samples/help"], r["samples/numbers"]) for r in read_metrics(run_dir)
                if r["split"] == "train"]

    assert per_source(resumed) == per_source(straight) and per_source(straight)[-1] == (4, 10, 6)  # 0.6 / 0.4

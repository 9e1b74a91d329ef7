"""``train.fork_from``: a new run from any step of another run, in that step's exact state. Unchanged, a fork is
bit-equal to its source step for step; with another schedule its first loss is still the source's; the source is
never written to; it works from a ZeRO-3 two-process run onto one process and for objective=rtd; bad input is
refused in one line with nothing written."""

import hashlib
import os

import pytest
import torch

from deberta_pretrain.training.checkpoint import consolidated_state_dict
from deberta_pretrain.training.metrics import read_metrics
from pretrain_helpers import checkpoint_dir, module_state, run_pretrain, tiny_overrides

pytestmark = pytest.mark.slow
SOURCE = {"train.max_steps": 6, "train.checkpoint_every": 2, "train.keep_last": 3, "train.eval_every": 100}


def losses(run_dir) -> dict:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"}


def file_hashes(folder) -> dict:
    return {os.path.relpath(os.path.join(root, name), folder):
            hashlib.sha256(open(os.path.join(root, name), "rb").read()).hexdigest()
            for root, _, names in os.walk(folder) for name in names}


@pytest.fixture(scope="module")
def source(python_help_64, tmp_path_factory):
    """A 6-step run with checkpoints at steps 2, 4 and 6 (dropout on: the random state must carry over too)."""
    root = tmp_path_factory.mktemp("fork")
    run_pretrain(tiny_overrides(python_help_64, root, "stable", **SOURCE))
    return root / "stable"


def test_an_unchanged_fork_is_bit_equal_and_the_source_is_untouched(python_help_64, source, tmp_path):
    before = file_hashes(source)
    run_pretrain(tiny_overrides(python_help_64, tmp_path, "branch", **{
        **SOURCE, "train.fork_from": checkpoint_dir(source, 4)}))
    branch = tmp_path / "branch"
    assert losses(branch) == {step: loss for step, loss in losses(source).items() if step > 4}  # bit-equal
    theirs, ours = module_state(source, 6), module_state(branch, 6)
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in theirs)
    log = (branch / "train.log").read_text()
    assert f"forked {branch} from {checkpoint_dir(source, 4)} at step 4" in log
    assert file_hashes(source) == before

    # a decay branch: another schedule from step 4; its first loss is the source's step 5 loss all the same
    run_pretrain(tiny_overrides(python_help_64, tmp_path, "decay", **{
        **SOURCE, "train.max_steps": 8, "optim.schedule": "wsd", "optim.decay_steps": 3,
        "train.fork_from": source}))  # a run directory: its newest checkpoint (step 6)
    decay = losses(tmp_path / "decay")
    assert sorted(decay) == [7, 8]
    again = run_pretrain(tiny_overrides(python_help_64, tmp_path, "decay", **{
        **SOURCE, "train.max_steps": 8, "optim.schedule": "wsd", "optim.decay_steps": 3,
        "train.fork_from": source}))  # the same fork started again: finished, nothing changes
    assert "is finished" in again.stdout + again.stderr
    run_pretrain(tiny_overrides(python_help_64, tmp_path, "early", **{
        **SOURCE, "train.max_steps": 5, "optim.lr": 3e-3, "train.fork_from": checkpoint_dir(source, 4)}))
    assert losses(tmp_path / "early")[5] == losses(source)[5]
    assert file_hashes(source) == before

    from deberta_pretrain.training.plots import plot_comparison  # the branches drawn against the stable run

    figure = plot_comparison(source, [branch, tmp_path / "decay"], tmp_path / "figures")
    assert open(figure, "rb").read(8) == b"\x89PNG\r\n\x1a\n" and figure.endswith("compare.png")


@pytest.mark.parametrize("case", ["no checkpoint", "results folder", "missing step", "existing run", "new model"])
def test_bad_forks_are_refused_in_one_line_and_write_nothing(python_help_64, source, tmp_path, case):
    (tmp_path / "empty-run").mkdir()
    (tmp_path / "empty-run" / "metrics.jsonl").write_text("")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "finetune.json").write_text("{}")
    name, extra = "branch", {}
    fork_from, message = {
        "no checkpoint": (tmp_path / "empty-run", f"{tmp_path / 'empty-run'} is a run directory with no checkpoint"),
        "results folder": (tmp_path / "results", "holds fine-tuning results, not a pretraining run"),
        "missing step": (source / "checkpoints" / "step_00000003",
                         "the complete checkpoints of " + str(source) + " are: step_00000002, step_00000004, "
                         "step_00000006"),
        "existing run": (checkpoint_dir(source, 2), "is an existing run; a fork starts a new run"),
        "new model": (checkpoint_dir(source, 2), "model.num_hidden_layers: 2 in the checkpoint, 3 now"),
    }[case]
    if case == "existing run":
        run_pretrain(tiny_overrides(python_help_64, tmp_path, "other", **{"train.max_steps": 2}))
        name = "other"
    if case == "new model":
        extra = {"model.num_hidden_layers": 3}
    before = file_hashes(tmp_path), file_hashes(source)
    result = run_pretrain(tiny_overrides(python_help_64, tmp_path, name, **{
        **SOURCE, **extra, "train.fork_from": fork_from}), check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out and message in out, out[-3000:]
    assert (file_hashes(tmp_path), file_hashes(source)) == before


def test_a_zero3_two_process_run_forked_onto_one_process(python_help_64, tmp_path):
    """The checkpoint (ZeRO-3, two ranks) is converted for one rank into the fork's own folder; the fork trains
    on from it (the conversion's fp32 round trip keeps the first loss to 1e-6), and the source stays as it was."""
    common = {"deepspeed.zero_stage": 3, "train.max_steps": 4, "train.checkpoint_every": 2, "train.eval_every": 100,
              "model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0}
    run_pretrain(tiny_overrides(python_help_64, tmp_path, "two", **common), "deepspeed", 2)
    before = file_hashes(tmp_path / "two")
    run_pretrain(tiny_overrides(python_help_64, tmp_path, "one", **{
        **common, "train.fork_from": checkpoint_dir(tmp_path / "two", 2)}))
    assert file_hashes(tmp_path / "two") == before
    theirs, ours = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert sorted(ours) == [3, 4] and ours[3] == pytest.approx(theirs[3], rel=1e-6)
    assert os.path.isdir(tmp_path / "one" / "checkpoints" / "step_00000004")


def test_an_rtd_run_forks_with_both_models(python_help_64, tmp_path):
    rtd = {"objective": "rtd", "model.num_hidden_layers": 2, "rtd.generator.num_hidden_layers": 2,
           "train.max_steps": 4, "train.checkpoint_every": 2, "train.eval_every": 100}
    run_pretrain(tiny_overrides(python_help_64, tmp_path, "rtd", **rtd))
    run_pretrain(tiny_overrides(python_help_64, tmp_path, "rtd-branch", **{
        **rtd, "train.fork_from": checkpoint_dir(tmp_path / "rtd", 2)}))
    assert losses(tmp_path / "rtd-branch") == {s: v for s, v in losses(tmp_path / "rtd").items() if s > 2}
    theirs = consolidated_state_dict(str(tmp_path / "rtd" / "checkpoints"), "step_00000004")
    ours = consolidated_state_dict(str(tmp_path / "rtd-branch" / "checkpoints"), "step_00000004")
    assert any(k.startswith("generator.") for k in ours) and any(k.startswith("discriminator.") for k in ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in theirs)

"""A run that continues another run (a phase): model.init_from=<run directory>, train.init_optimizer, and context
extension of a model with absolute positions."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import compose_pretrain

from deberta_pretrain.training.checkpoint import consolidated_state_dict
from deberta_pretrain.training.metrics import read_metrics
from pretrain_helpers import ROOT, checkpoint_dir, run_pretrain, tiny_overrides

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_process_world")]
POSITIONS = "deberta.embeddings.position_embeddings.weight"


def start_in_process(cfg):
    """The engine a run starts training with (weights, optimizer state, schedule), built in this process as
    launch/pretrain.py builds it; the world's variables it sets are taken back."""
    from deberta_pretrain.training.checkpoint import Checkpointer
    from deberta_pretrain.training.run import Run
    from deberta_pretrain.training.trainer import start_or_resume

    environment = dict(os.environ)
    try:
        run = Run(cfg)
        checkpointer = Checkpointer(os.path.join(run.run_dir, "checkpoints"), 2, run.rank, run.world, 0)
        engine, step, _ = start_or_resume(run, checkpointer)
        return run, engine, step
    finally:
        os.environ.clear()
        os.environ.update(environment)


def test_init_optimizer_starts_from_the_moments_of_the_source_runs_last_step(python_help_64, tmp_path):
    run_pretrain(tiny_overrides(python_help_64, tmp_path, "first"))  # ZeRO-0, fp32: 4 steps
    second = tiny_overrides(python_help_64, tmp_path, "second", **{
        "model.init_from": tmp_path / "first", "train.init_optimizer": True, "optim.lr": 5e-4})
    run, engine, step = start_in_process(compose_pretrain(*second))
    saved = torch.load(os.path.join(checkpoint_dir(tmp_path / "first", 4), "mp_rank_00_model_states.pt"),
                       map_location="cpu", weights_only=False)
    theirs, mine = saved["optimizer"]["state"], engine.optimizer.state_dict()["state"]
    assert step == 0 and theirs.keys() == mine.keys() and len(mine) > 10
    for index in theirs:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(mine[index][key], theirs[index][key]), (index, key)
    weights = dict(engine.module.named_parameters())
    for name, value in saved["module"].items():
        assert torch.equal(weights[name].detach(), value), name
    # its own schedule from its own step 0: the first update's rate is 5e-4 x the linear schedule at update 1 of 4
    # after 1 warm-up step, (1 - 1/4); the first run ended at 1e-3 x 0
    assert engine.get_lr() == [pytest.approx(5e-4 * 0.75)] * 2
    engine.destroy()

    other = tiny_overrides(python_help_64, tmp_path, "third", **{  # an RTD phase cannot take an MLM's moments
        "model.init_from": tmp_path / "first", "train.init_optimizer": True, "objective": "rtd",
        "rtd.generator.num_hidden_layers": 2})
    with pytest.raises(SystemExit, match=r"train.init_optimizer=true needs a run of the same objective: "
                                         r"model.init_from=.* was trained with objective=mlm, this run has "
                                         r"objective=rtd"):
        start_in_process(compose_pretrain(*other))
    assert not (tmp_path / "third").exists()


def v1_overrides(data, root, name, positions, **extra):
    """A tiny v1-style model: absolute positions added to the input (position_biased_input) and relative
    attention with the span of its position table."""
    return tiny_overrides(data, root, name, **{
        "model": "deberta-base", "model.hidden_size": 64, "model.num_hidden_layers": 2,
        "model.num_attention_heads": 2, "model.intermediate_size": 256, "model.position_biased_input": True,
        "model.max_position_embeddings": positions, "train.global_batch_size": 8, "train.micro_batch_size": 8,
        "train.eval_samples": 16, "optim.lr": 2e-3, **extra})


def prepared(tmp_path, length):
    from deberta_pretrain.data.prepare import prepare

    path = tmp_path / f"help-{length}"
    prepare({"output": str(path), "input": {"type": "python-help"}, "vocab": None, "engine": "auto",
             "max_seq_length": length, "packing": "continuous", "validation_fraction": 0.1, "segment_mb": 1,
             "num_proc": 1, "overwrite": False}, progress=False)
    return path


def step0_validation_loss(run_dir) -> float:
    return next(r["loss"] for r in read_metrics(run_dir) if r["split"] == "validation" and r["step"] == 0)


def test_a_model_with_absolute_positions_is_extended_by_copying_its_trained_rows(tmp_path):
    short, long = prepared(tmp_path, 128), prepared(tmp_path, 256)
    run_pretrain(v1_overrides(short, tmp_path, "short", 128, **{"train.max_steps": 30, "train.eval_every": 30,
                                                                "train.checkpoint_every": 30}))
    trained = consolidated_state_dict(str(tmp_path / "short" / "checkpoints"), "step_00000030")[POSITIONS]

    one_step = {"train.max_steps": 1, "train.eval_every": 1, "train.checkpoint_every": 1}
    extended = run_pretrain(v1_overrides(long, tmp_path, "long", 256, **one_step,
                                         **{"model.init_from": tmp_path / "short"}))
    assert "model.max_position_embeddings 128 -> 256: rows 128-255 of the position table start as copies of rows " \
           "0-127" in extended.stdout + extended.stderr

    # the control: the same weights with rows 128-255 freshly initialised (as the model initialises them)
    control = tmp_path / "control"
    subprocess.run([sys.executable, os.path.join(ROOT, "launch", "export.py"), f"checkpoint={tmp_path / 'short'}",
                    f"output={control}", "format=release"], check=True, capture_output=True, cwd=ROOT)
    state = torch.load(control / "pytorch_model.bin", weights_only=True)
    fresh = torch.empty(128, trained.shape[1]).normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    state[POSITIONS] = torch.cat([trained, fresh])
    torch.save(state, control / "pytorch_model.bin")
    config = json.loads((control / "model_config.json").read_text())
    (control / "model_config.json").write_text(json.dumps({**config, "max_position_embeddings": 256,
                                                           "max_relative_positions": 128}))
    run_pretrain(v1_overrides(long, tmp_path, "fresh-rows", 256, **one_step, **{"model.init_from": control}))
    assert step0_validation_loss(tmp_path / "long") < step0_validation_loss(tmp_path / "fresh-rows")

    from deberta_pretrain.deberta import ModelConfig
    from deberta_pretrain.deberta.vocabulary import load_tokenizer, vocab_identity
    from deberta_pretrain.training.initial_weights import load_initial_weights

    vocab = vocab_identity(load_tokenizer(str(tmp_path / "short" / "bpe_encoder.bin")))
    wanted = ModelConfig.from_dict({**config, "max_position_embeddings": 256})
    state, merged = load_initial_weights(str(tmp_path / "short"), wanted, vocab, length=256)
    assert merged.max_position_embeddings == 256 and merged.max_relative_positions == 128
    assert torch.equal(state[POSITIONS], torch.cat([trained, trained]))
    _, kept = load_initial_weights(str(tmp_path / "short"), wanted, vocab, length=128)  # blocks it covers: as it is
    assert kept.max_position_embeddings == 128
    with pytest.raises(ValueError, match=r"blocks of 256 tokens need more than the 128 positions of .*: set "
                                         r"model.max_position_embeddings=256 \(or more\)"):
        load_initial_weights(str(tmp_path / "short"), ModelConfig.from_dict({**config,
                                                                             "max_position_embeddings": 200}),
                             vocab, length=256)

    from transformers import AutoModelForMaskedLM

    subprocess.run([sys.executable, os.path.join(ROOT, "launch", "export.py"), f"checkpoint={tmp_path / 'long'}",
                    f"output={tmp_path / 'long-hf'}", "format=hf"], check=True, capture_output=True, cwd=ROOT)
    hf = AutoModelForMaskedLM.from_pretrained(tmp_path / "long-hf")
    assert hf.deberta.embeddings.position_embeddings.weight.shape == (256, 64)
    ours = consolidated_state_dict(str(tmp_path / "long" / "checkpoints"), "step_00000001")[POSITIONS]
    assert torch.equal(hf.deberta.embeddings.position_embeddings.weight.detach(), ours)
    with torch.no_grad():
        assert hf(input_ids=torch.randint(5, 1000, (1, 256))).logits.shape == (1, 256, hf.config.vocab_size)


def test_an_rtd_phase_starts_from_both_models_of_an_rtd_run_on_a_mixture(python_help_64, numbers_64, tmp_path):
    """An RTD run on two sources; a phase from it starts with its discriminator and generator (GDES tables merged
    and split again), and with train.init_optimizer=true with the same module state and moments."""
    from deberta_pretrain.deberta.rtd import merged_tables
    from pretrain_helpers import mixture_overrides

    rtd = {"objective": "rtd", "model.num_hidden_layers": 2, "rtd.generator.num_hidden_layers": 2,
           **mixture_overrides({"help": 0.5, "numbers": 0.5}, {"help": python_help_64, "numbers": numbers_64})}
    run_pretrain(tiny_overrides(python_help_64, tmp_path, "first", **rtd))
    assert {r["split"] for r in read_metrics(tmp_path / "first")} == {"train", "validation", "validation/help",
                                                                      "validation/numbers"}
    saved = torch.load(os.path.join(checkpoint_dir(tmp_path / "first", 4), "mp_rank_00_model_states.pt"),
                       map_location="cpu", weights_only=False)
    expected = merged_tables(saved["module"])

    weights_only = tiny_overrides(python_help_64, tmp_path, "weights", **rtd,
                                  **{"model.init_from": tmp_path / "first"})
    _, engine, _ = start_in_process(compose_pretrain(*weights_only))
    got = merged_tables({k: v.detach() for k, v in engine.module.state_dict().items()})
    for part in (0, 1):  # the discriminator (its embedding tables merged with the generator's), the generator
        assert got[part].keys() == expected[part].keys()
        for key in expected[part]:
            torch.testing.assert_close(got[part][key], expected[part][key], rtol=0, atol=1e-7, msg=key)
    engine.destroy()

    moments = tiny_overrides(python_help_64, tmp_path, "moments", **rtd, **{"model.init_from": tmp_path / "first",
                                                                          "train.init_optimizer": True})
    _, engine, _ = start_in_process(compose_pretrain(*moments))
    for name, value in engine.module.state_dict().items():
        assert torch.equal(value, saved["module"][name]), name
    theirs, mine = saved["optimizer"]["state"], engine.optimizer.state_dict()["state"]
    assert theirs.keys() == mine.keys()
    for index in theirs:
        assert torch.equal(mine[index]["exp_avg"], theirs[index]["exp_avg"]), index
    engine.destroy()

"""objective=rtd end to end through ``launch/pretrain.py``: it learns, resumes exactly, gives the same first update
whatever the world size, and exports a discriminator and a generator that Hugging Face loads."""

import os
import subprocess
import sys

import pytest
import torch
import transformers

from deberta_pretrain.deberta import MaskedLanguageModel, ModelConfig
from deberta_pretrain.deberta.rtd import ReplacedTokenDetectionModel, RTDModel
from deberta_pretrain.training.checkpoint import consolidated_state_dict
from deberta_pretrain.training.metrics import read_metrics
from pretrain_helpers import ROOT, checkpoint_dir, fault_env, run_pretrain, tiny_overrides

pytestmark = pytest.mark.slow
RTD = {"objective": "rtd", "model.num_hidden_layers": 2, "rtd.generator.num_hidden_layers": 2,
       "model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0}


def records(run_dir, split):
    return [r for r in read_metrics(run_dir) if r["split"] == split]


def weights(run_dir, step):
    return consolidated_state_dict(os.path.join(run_dir, "checkpoints"), f"step_{step:08d}")


@pytest.fixture(scope="module")
def runs(python_help_64, tmp_path_factory):
    """4 fp32 steps of a tiny generator/discriminator pair: one process (accumulation 2) and two (ZeRO 3)."""
    root = tmp_path_factory.mktemp("rtd")
    run_pretrain(tiny_overrides(python_help_64, root, "one", **RTD))
    run_pretrain(tiny_overrides(python_help_64, root, "two", **RTD, **{"deepspeed.zero_stage": 3}), "deepspeed", 2)
    return root


def test_rtd_quickstart_learns(python_help_64, tmp_path):
    """The rtd-quickstart experiment (shortened): the generator's validation MLM loss falls and the discriminator
    separates replaced from original tokens far above chance (AUC 0.5; precision of a guess = the replaced share)."""
    run_pretrain(["experiment=rtd-quickstart", f"data.path={python_help_64}", "data.max_seq_length=64",
                  f"output_root={tmp_path}", "train.max_steps=40", "train.eval_every=20", "train.checkpoint_every=40",
                  "logging.wandb.mode=disabled", "logging.progress_bar=false"], timeout=600)
    validation = records(tmp_path / "rtd-quickstart", "validation")
    first, last = validation[0], validation[-1]
    assert [r["step"] for r in validation] == [0, 20, 40]
    assert first["auc"] < 0.6 and last["auc"] > 0.75
    assert last["generator_loss"] < first["generator_loss"] - 1.5
    replaced_share = last["replaced_fraction"] * 0.15  # replaced tokens among all tokens, about
    assert last["precision"] > 3 * replaced_share and last["recall"] > 0.2
    train = records(tmp_path / "rtd-quickstart", "train")
    assert {"generator_loss", "discriminator_loss", "discriminator_accuracy", "precision", "recall", "auc",
            "replaced_fraction", "tokens_per_s"} <= set(train[-1])
    from deberta_pretrain.training.plots import plot_run

    plots = {os.path.basename(p) for p in plot_run(tmp_path / "rtd-quickstart")}
    assert plots == {"loss.png", "lr.png", "throughput.png", "generator.png", "discriminator.png"}
    files = set(os.listdir(tmp_path / "rtd-quickstart"))
    assert {"model_config.json", "generator_config.json", "bpe_encoder.bin", "metrics.jsonl"} <= files


def test_same_first_update_whatever_the_world_size(runs):
    """1 process x accumulation 2 and 2 processes (ZeRO 3): same samples, same masks, same sampled replacements
    (drawn per sample), hence the same losses and weights."""
    one, two = records(runs / "one", "train"), records(runs / "two", "train")
    for a, b in zip(one, two):
        for key in ("loss", "generator_loss", "discriminator_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)
    first, second = weights(runs / "one", 2), weights(runs / "two", 2)
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=1e-4, atol=1e-6, msg=key)


# ZeRO-3 over two processes, the layout with the most state to restore (one process at ZeRO 0-1: test_pretrain.py,
# whose loop and checkpoints RTD shares; RTD adds its sampling, drawn per sample and so restored with the step).
@pytest.mark.parametrize("launcher,processes,stage", [("deepspeed", 2, 3)])
def test_resume_after_a_kill_is_exact(runs, python_help_64, tmp_path, launcher, processes, stage):
    """SIGKILL before step 4 (last checkpoint: step 2), restart: bit-equal weights and identical losses."""
    overrides = tiny_overrides(python_help_64, tmp_path, "killed", **RTD, **{"deepspeed.zero_stage": stage})
    first = run_pretrain(overrides, launcher, processes, env=fault_env("sigkill@3"), check=False)
    assert first.returncode != 0
    assert os.path.isfile(os.path.join(checkpoint_dir(tmp_path / "killed", 2), "complete.json"))
    run_pretrain(overrides, launcher, processes)
    straight = runs / ("one" if processes == 1 else "two")
    expected, resumed = weights(straight, 4), weights(tmp_path / "killed", 4)
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    assert [(r["step"], r["loss"]) for r in records(straight, "train")] == \
        [(r["step"], r["loss"]) for r in records(tmp_path / "killed", "train")]


def test_export_discriminator_and_generator_load_in_hf(runs, tmp_path):
    out = tmp_path / "export"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "export.py"), f"checkpoint={runs / 'two'}",
                             f"output={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, DS_ACCELERATOR="cpu"))
    assert result.returncode == 0, result.stderr[-4000:]
    # the model as it was trained
    state = weights(runs / "two", 4)
    trained = RTDModel(MaskedLanguageModel(ModelConfig.from_json_file(runs / "two" / "generator_config.json")),
                       ReplacedTokenDetectionModel(ModelConfig.from_json_file(runs / "two" / "model_config.json")))
    trained.load_state_dict(state, strict=True)
    trained.eval()
    ids = torch.tensor([[1, 464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 2, 0]])
    mask = (ids > 0).long()
    ids[0, 4] = 50264  # [MASK]
    released = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert not any(k.endswith("_weight") for k in released)
    assert {"mask_predictions.dense.weight", "mask_predictions.LayerNorm.weight", "mask_predictions.classifier.weight",
            "deberta.embeddings.word_embeddings.weight"} <= set(released)
    discriminator = ReplacedTokenDetectionModel.load_model(str(out), strict=True).eval()
    hf_encoder = transformers.AutoModel.from_pretrained(str(out)).eval()
    assert type(hf_encoder).__name__ == "DebertaV2Model"
    with torch.no_grad():
        torch.testing.assert_close(discriminator(ids, mask)["logits"], trained.discriminator(ids, mask)["logits"],
                                   rtol=1e-5, atol=1e-5)
        ours = discriminator.deberta(ids, attention_mask=mask)[-1]
        theirs = hf_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        real = mask.bool()  # HF's states at padded positions are not defined the same way
        torch.testing.assert_close(theirs[real], ours[real], rtol=1e-5, atol=1e-5)
    classifier, info = transformers.DebertaV2ForSequenceClassification.from_pretrained(
        str(out), num_labels=3, output_loading_info=True)
    assert not info["missing_keys"] or all(k.startswith(("pooler", "classifier")) for k in info["missing_keys"])

    generator_dir = out / "generator"
    hf_generator, info = transformers.AutoModelForMaskedLM.from_pretrained(str(generator_dir),
                                                                          output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    # HF's MLM head reads the last layer directly (no Enhanced Mask Decoder): compare with ours without EMD
    generator = MaskedLanguageModel.load_model(str(generator_dir), use_emd=False, strict=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf_generator.eval()(input_ids=ids, attention_mask=mask).logits[real],
                                   generator(ids, mask)["logits"][real], rtol=1e-5, atol=1e-5)
        expected = trained.generator(ids, mask, labels=torch.where(ids == 50264, 7, -100))["logits"]
        emd = MaskedLanguageModel.load_model(str(generator_dir), strict=True).eval()
        torch.testing.assert_close(emd(ids, mask, labels=torch.where(ids == 50264, 7, -100))["logits"], expected)

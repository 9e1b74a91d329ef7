"""``model.init_from`` a Hugging Face folder as people have the v3 releases on disk: ``config.json``, weights as
safetensors or ``pytorch_model.bin`` in any layout HF writes (legacy or release MLM head, a bare base model, a
discriminator with its RTD head) and ``spm.model``. References: HF's own models with the same weights."""

import logging
import shutil

import pytest
import torch

from conftest import padded_batch, train_spm
from deberta_pretrain.deberta import MaskedLanguageModel, ModelConfig, SPMTokenizer
from deberta_pretrain.deberta.vocabulary import vocab_identity
from deberta_pretrain.training.initial_weights import load_initial_weights

transformers = pytest.importorskip("transformers")
VOCAB = 3001
POSITIONS = "deberta.embeddings.position_embeddings.weight"


def hf_config(**extra):
    """A tiny v3-shaped HF config (the release's relative-position settings)."""
    return transformers.DebertaV2Config(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, relative_attention=True, position_buckets=8, norm_rel_ebd="layer_norm",
        share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
        layer_norm_eps=1e-7, max_relative_positions=-1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        **extra)


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
    return train_spm(tmp_path_factory.mktemp("vocab") / "spm.model")


@pytest.fixture(scope="module")
def data_vocab(spm_file):
    return vocab_identity(SPMTokenizer(spm_file))


def run_config():
    """What the run's ``model=`` group would give; the folder's config fixes the shape."""
    return ModelConfig.from_dict({"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                                  "intermediate_size": 3072, "vocab_size": 128100, "hidden_dropout_prob": 0.0,
                                  "attention_probs_dropout_prob": 0.0, "relative_attention": True,
                                  "position_biased_input": False, "pos_att_type": "p2c|c2p",
                                  "position_buckets": 256, "norm_rel_ebd": "layer_norm", "share_att_key": True,
                                  "max_relative_positions": -1, "layer_norm_eps": 1e-7, "type_vocab_size": 0})


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-head", "release-head"])
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_an_hf_mlm_folder_gives_hf_outputs(tmp_path, spm_file, data_vocab, legacy, safe):
    torch.manual_seed(0)
    hf = transformers.DebertaV2ForMaskedLM(hf_config(legacy=legacy)).eval()
    hf.save_pretrained(tmp_path, safe_serialization=safe)
    shutil.copyfile(spm_file, tmp_path / "spm.model")
    state, config = load_initial_weights(str(tmp_path), run_config(), data_vocab)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (32, 2, VOCAB)
    ours = MaskedLanguageModel(config, use_emd=False).eval()  # HF's head has no EMD
    result = ours.load_state_dict(state, strict=False)
    # HF builds no absolute position table when position_biased_input is false; the releases (and we) keep one for
    # the Enhanced Mask Decoder, which then starts fresh
    assert not result.unexpected_keys and result.missing_keys == [POSITIONS]
    ids, mask = padded_batch(VOCAB, lengths=(20, 13))
    with torch.no_grad():
        expected = hf.deberta(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours.deberta(ids, attention_mask=mask)[-1]
        torch.testing.assert_close(got * mask[..., None], expected * mask[..., None], rtol=1e-5, atol=1e-5)
        hf_logits = hf(input_ids=ids, attention_mask=mask).logits
        our_logits = ours(ids, mask)["logits"]
        torch.testing.assert_close(our_logits[mask.bool()], hf_logits[mask.bool()], rtol=1e-5, atol=1e-4)


def test_a_v3_style_discriminator_folder_starts_mlm_with_a_fresh_head(tmp_path, spm_file, data_vocab, caplog):
    """A base model saved bare (``embeddings.*``) plus an RTD head, as the v3 releases are: the encoder loads, the RTD
    head is set aside and the MLM head starts fresh, each said in the log."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    hf = transformers.DebertaV2Model(hf_config()).eval()
    hf.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors.update({"mask_predictions.dense.weight": torch.zeros(32, 32), "mask_predictions.dense.bias":
                    torch.zeros(32), "mask_predictions.classifier.weight": torch.zeros(1, 32)})
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    shutil.copyfile(spm_file, tmp_path / "spm.model")
    with caplog.at_level(logging.INFO):
        state, config = load_initial_weights(str(tmp_path), run_config(), data_vocab)
    assert "replaced-token-detection head is set aside (mask_predictions.classifier.weight" in caplog.text
    assert "has no MLM head: lm_predictions.lm_head" in caplog.text
    ours = MaskedLanguageModel(config, use_emd=False).eval()
    result = ours.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert {k for k in result.missing_keys if k != POSITIONS} == {k for k in ours.state_dict()
                                                                  if k.startswith("lm_predictions.")}
    ids, mask = padded_batch(VOCAB, lengths=(16, 9))
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours.deberta(ids, attention_mask=mask)[-1]
    torch.testing.assert_close(got * mask[..., None], expected * mask[..., None], rtol=1e-5, atol=1e-5)


def test_a_folder_with_another_vocabulary_is_refused_naming_both(tmp_path, spm_file):
    transformers.DebertaV2ForMaskedLM(hf_config()).save_pretrained(tmp_path / "model")
    shutil.copyfile(spm_file, tmp_path / "model" / "spm.model")
    other = vocab_identity(SPMTokenizer(train_spm(tmp_path / "other.model", vocab_size=2000)))
    with pytest.raises(ValueError, match=r"spm.model \(spm, 3001 ids, .*another one \(spm, 2001 ids"):
        load_initial_weights(str(tmp_path / "model"), run_config(), other)

"""Replaced-token detection: the head's formula, the labels, sampling, GDES gradients, the release layout of
exports, and that a training step never reads a value back to the host."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import compose_pretrain, padded_batch, small_config
from deberta_pretrain.deberta import MaskedLanguageModel, ModelConfig
from deberta_pretrain.deberta.loading import to_release_names
from deberta_pretrain.deberta.rtd import (RTDModel, ReplacedTokenDetectionModel, gdes_delta_from, merged_tables,
                                          sample_replacements)


def rtd_pair(sharing="gdes", generator_layers=2, seed=0, **overrides):
    torch.manual_seed(seed)
    config = ModelConfig.from_dict(small_config("v3", num_hidden_layers=3, **overrides))
    generator = MaskedLanguageModel(ModelConfig.from_dict(small_config("v3", num_hidden_layers=generator_layers,
                                                                       **overrides)))
    return RTDModel(generator, ReplacedTokenDetectionModel(config), sharing)


def masked_batch(vocab_size=97, lengths=(20, 13, 5), every=4, width=8):
    ids, mask = padded_batch(vocab_size, lengths)
    labels = torch.full_like(ids, -100)
    labels[:, 1::every] = ids[:, 1::every]
    labels[mask == 0] = -100
    inputs = torch.where(labels > 0, torch.full_like(ids, 3), ids)
    uniforms = torch.rand(len(lengths), width, generator=torch.Generator().manual_seed(1))
    return dict(input_ids=inputs, input_mask=mask, labels=labels, sample_uniforms=uniforms, max_predictions=width)


def test_rtd_head_is_upstreams_formula():
    """logits = classifier(gelu(dense(LayerNorm(H + H[:, 0])))) over the last layer H, computed by hand."""
    torch.manual_seed(0)
    model = ReplacedTokenDetectionModel(ModelConfig.from_dict(small_config("v3")))
    for p in model.mask_predictions.parameters():
        torch.nn.init.normal_(p, std=0.5)
    ids, mask = padded_batch()
    last = model.deberta(ids, attention_mask=mask)[-1]
    head = model.mask_predictions
    x = F.layer_norm(last + last[:, :1], (last.size(-1),), head.LayerNorm.weight, head.LayerNorm.bias, 1e-7)
    x = F.gelu(x @ head.dense.weight.T + head.dense.bias)
    expected = (x @ head.classifier.weight.T + head.classifier.bias)[..., 0]
    out = model(ids, input_mask=mask, labels=torch.zeros_like(ids))
    torch.testing.assert_close(out["logits"], expected, rtol=1e-5, atol=1e-5)
    # BCE with label 0 is softplus(logit), averaged over the real tokens only
    torch.testing.assert_close(out["loss"], F.softplus(expected)[mask.bool()].mean(), rtol=1e-5, atol=1e-6)


def test_labels_mark_masked_tokens_whose_sample_differs():
    """A generator forced (by its output bias) to always propose token 7: masked positions holding 7 are labelled
    original, every other masked position replaced, unmasked positions never."""
    model = rtd_pair()
    with torch.no_grad():
        model.generator.lm_predictions.lm_head.bias[7] = 1e4
    batch = masked_batch()
    batch["labels"][0, 1] = batch["input_ids"][0, 1] = 7  # one masked position whose original is 7
    batch["input_ids"][0, 1] = 3
    out = model(**batch)
    masked = batch["labels"] > 0
    assert torch.equal(out["replaced_ids"], torch.where(masked, torch.full_like(batch["labels"], 7),
                                                        batch["input_ids"]))
    assert torch.equal(out["rtd_labels"], masked & (batch["labels"] != 7))
    assert not out["rtd_labels"][0, 1] and out["rtd_labels"].sum() == masked.sum() - 1


def test_sampling_follows_the_tempered_softmax():
    """Evenly spaced uniforms through the inverse CDF reproduce softmax(logits / T) (numpy reference)."""
    logits = torch.tensor([[2.0, 0.5, -1.0, 1.0, 0.0]])
    n = 20000
    uniforms = (torch.arange(n) + 0.5) / n
    for temperature in (1.0, 2.0):
        picks = sample_replacements(logits.expand(n, -1), uniforms, temperature)
        z = logits.numpy()[0] / temperature
        expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        np.testing.assert_allclose(np.bincount(picks.numpy(), minlength=5) / n, expected, atol=2e-4)


def test_sampling_randomness_belongs_to_the_sample():
    """The uniforms of a block depend on (seed, epoch, index) only: not on its batch mates or the batch order."""
    from omegaconf import OmegaConf

    from deberta_pretrain.objectives.rtd import RTDCollator

    class Plain:
        def __call__(self, items):
            return {"input_ids": torch.zeros(len(items), 4, dtype=torch.long)}

    collate = RTDCollator(Plain(), slots=6, seed=5)
    blocks = [((0, i), np.zeros(4)) for i in range(4)]
    together = collate(blocks)["sample_uniforms"]
    assert torch.equal(collate([blocks[2], blocks[0]])["sample_uniforms"], together[[2, 0]])
    assert not torch.equal(together[0], together[1])
    assert not torch.equal(RTDCollator(Plain(), 6, seed=6)(blocks)["sample_uniforms"], together)
    assert not torch.equal(collate([((1, 0), np.zeros(4))])["sample_uniforms"][0], together[0])
    assert OmegaConf  # imported for the collator's module


@pytest.mark.parametrize("sharing", ["gdes", "es"])
def test_gradients_of_embedding_sharing(sharing):
    """GDES: the RTD loss sends nothing into the generator's embeddings, the MLM loss nothing into the delta.
    ES: the RTD loss does reach the generator's embeddings (the contrast that makes the GDES check meaningful)."""
    model = rtd_pair(sharing)
    out = model(**masked_batch())
    table = model.generator.deberta.embeddings.word_embeddings.weight
    (rtd_grad,) = torch.autograd.grad(out["discriminator_loss"], [table], retain_graph=True, allow_unused=True)
    if sharing == "es":
        assert rtd_grad is not None and rtd_grad.abs().sum() > 0
        return
    assert rtd_grad is None or rtd_grad.abs().sum() == 0
    delta = model.discriminator.deberta.embeddings.word_embeddings._weight
    (mlm_grad,) = torch.autograd.grad(out["generator_loss"], [delta], retain_graph=True, allow_unused=True)
    assert mlm_grad is None or mlm_grad.abs().sum() == 0
    (delta_grad,) = torch.autograd.grad(out["discriminator_loss"], [delta])
    assert delta_grad.abs().sum() > 0
    # the discriminator reads generator table + delta
    with torch.no_grad():
        delta.normal_()
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(model.discriminator.deberta.embeddings.word_embeddings(ids), (table + delta)[ids])


def test_merged_export_and_reload_keep_the_discriminator():
    """The exported discriminator stands alone (tables = generator + delta, no _weight); loaded back as a delta over
    the same generator it gives the same outputs; a plain ReplacedTokenDetectionModel loads it with no key left."""
    model = rtd_pair()
    with torch.no_grad():
        model.discriminator.deberta.embeddings.word_embeddings._weight.normal_(std=0.1)
    model.eval()
    batch = masked_batch()
    disc_state, gen_state = merged_tables(model.state_dict())
    assert not any(k.endswith("_weight") for k in disc_state)
    torch.testing.assert_close(disc_state["deberta.embeddings.word_embeddings.weight"],
                               model.discriminator.deberta.embeddings.word_embeddings.weight)
    plain = ReplacedTokenDetectionModel(model.discriminator.config).eval()
    result = plain.load_state_dict(disc_state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    ids, mask = batch["input_ids"], batch["input_mask"]
    expected = model.discriminator(ids, mask)["logits"]
    torch.testing.assert_close(plain(ids, mask)["logits"], expected, rtol=1e-5, atol=1e-5)

    again = rtd_pair(seed=1).eval()
    again.generator.load_state_dict(gen_state)
    deltas = ["word_embeddings"]  # v3: positions are read from the generator as is
    result = again.discriminator.load_state_dict(gdes_delta_from(disc_state, gen_state, deltas), strict=True)
    torch.testing.assert_close(again.discriminator(ids, mask)["logits"], expected, rtol=1e-5, atol=1e-5)


def test_auc_from_score_histograms_matches_the_pairwise_definition():
    """ROC AUC from the binned statistics vs P(replaced score > original score) over all pairs (numpy)."""
    from deberta_pretrain.deberta.rtd import AUC_BINS, auc_from_histograms, score_histograms

    g = torch.Generator().manual_seed(0)
    labels = torch.rand(3, 200, generator=g) < 0.2
    logits = torch.randn(3, 200, generator=g) + 1.5 * labels
    tokens = torch.ones(3, 200, dtype=torch.bool)
    tokens[2, 150:] = False  # padding is not counted
    counts = score_histograms(logits, labels, tokens).tolist()
    auc = auc_from_histograms(counts[:AUC_BINS], counts[AUC_BINS:])
    scores = torch.sigmoid(logits)[tokens].numpy()
    positive, negative = scores[labels[tokens].numpy()], scores[~labels[tokens].numpy()]
    pairs = positive[:, None] - negative[None, :]
    expected = (pairs > 0).mean() + 0.5 * (pairs == 0).mean()
    assert sum(counts) == tokens.sum() and 0.8 < expected < 0.9
    assert abs(auc - expected) < 0.005


def test_upstreams_early_classifer_spelling_loads():
    state = {"mask_predictions.classifer.weight": torch.ones(1, 4), "mask_predictions.classifer.bias": torch.ones(1)}
    assert set(to_release_names(state)) == {"mask_predictions.classifier.weight", "mask_predictions.classifier.bias"}


SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::nonzero_static",
            "aten::_unique2", "aten::unique_consecutive", "aten::repeat_interleave", "aten::equal", "aten::is_nonzero"}


class HostReads(TorchDispatchMode):
    """Records every op whose result the host must wait for: a scalar read (``.item()``, ``int()``, ``bool()``),
    or an output whose shape depends on the data (boolean indexing, ``nonzero``)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        boolean_index = name.startswith("aten::index") and any(
            torch.is_tensor(t) and t.dtype == torch.bool for t in (args[1] if len(args) > 1 else []) or [])
        if name in SYNC_OPS or boolean_index:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def test_the_host_read_counter_sees_reads():
    x = torch.arange(6.0)
    with HostReads() as reads:
        x.sum().item()
        _ = x[x > 2]
    assert len(reads.ops) >= 2


def objective_for(data, *overrides):
    """The objective a run of ``conf/pretrain.yaml`` with ``overrides`` on ``data`` builds (a small model)."""
    from deberta_pretrain.data import ShardedDataset
    from deberta_pretrain.deberta.vocabulary import load_tokenizer, vocab_identity
    from deberta_pretrain.training.initial_weights import objective_with_weights
    from deberta_pretrain.training.run import model_config_from

    cfg = compose_pretrain(f"data.path={data}", "name=x", "model.num_hidden_layers=4", "model.hidden_size=32",
                           "model.intermediate_size=64", "model.num_attention_heads=2", *overrides)
    dataset = ShardedDataset(str(data), "train")
    tokenizer = load_tokenizer(str(data / "bpe_encoder.bin"))
    return objective_with_weights(cfg, model_config_from(cfg), tokenizer, vocab_identity(tokenizer),
                                  dataset.max_seq_length), dataset


def test_continuing_from_a_v3_style_release_folder(python_help_64, tmp_path, caplog):
    """A folder as the v3 releases ship it: config.json + pytorch_model.bin (discriminator: deberta.*, a stale
    lm_predictions head, mask_predictions with the early 'classifer' spelling) + pytorch_model.generator.bin (fewer
    layers, no config of its own). The generator loads with the layer count its keys show; the discriminator starts
    with exactly its stored embeddings (as a delta over the generator's) and its head."""
    import json
    import logging
    import shutil

    config = small_config("v3", num_hidden_layers=3, vocab_size=50265, max_position_embeddings=128)
    torch.manual_seed(3)
    disc = ReplacedTokenDetectionModel(ModelConfig.from_dict(config))
    gen = MaskedLanguageModel(ModelConfig.from_dict({**config, "num_hidden_layers": 2}))
    folder = tmp_path / "deberta-v3-tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    disc_state = {k.replace("classifier", "classifer"): v for k, v in disc.state_dict().items()}
    disc_state["lm_predictions.lm_head.bias"] = torch.zeros(50265)
    torch.save(disc_state, folder / "pytorch_model.bin")
    torch.save(gen.state_dict(), folder / "pytorch_model.generator.bin")
    shutil.copy(python_help_64 / "bpe_encoder.bin", folder / "bpe_encoder.bin")

    with caplog.at_level(logging.INFO):
        target, _ = objective_for(python_help_64, "objective=rtd", f"model.init_from={folder}",
                                  f"rtd.init_generator={folder}/pytorch_model.generator.bin")
        model = target.build_model()
    assert target.model_config.num_hidden_layers == 3 and target.generator_config.num_hidden_layers == 2
    for key, value in gen.state_dict().items():
        assert torch.equal(model.generator.state_dict()[key], value), key
    embeddings = model.discriminator.deberta.embeddings.word_embeddings
    torch.testing.assert_close(embeddings.weight, disc.deberta.embeddings.word_embeddings.weight)
    torch.testing.assert_close(model.discriminator.mask_predictions.classifier.weight,
                               disc.mask_predictions.classifier.weight)
    assert "holds 2 layers, its config says 3" in caplog.text
    assert "MLM head is set aside" in caplog.text


@pytest.mark.parametrize("objective", ["mlm", "rtd"])
def test_a_training_step_never_waits_for_the_host(objective, python_help_64):
    """Forward, backward and statistics of a micro-batch (the objective's ``train_step``) run without one value read
    back to the host (DeepSpeed's optimizer step is not part of it)."""
    target, dataset = objective_for(python_help_64, f"objective={objective}")
    model = target.build_model()

    class Engine:  # the part of DeepSpeed's engine the objective calls; the optimizer step is DeepSpeed's business
        steps = 0

        def __call__(self, **batch):
            return model(**batch)

        def backward(self, loss):
            loss.backward()

        def step(self):
            self.steps += 1

    batch = target.collator(1)([((0, i), dataset[i]) for i in range(4)])
    with HostReads() as reads:
        loss, stats = target.train_step(Engine(), batch)
    assert reads.ops == []
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert stats.shape == (len(target.stat_names),) and torch.isfinite(loss)

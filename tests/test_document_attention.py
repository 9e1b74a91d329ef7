"""Packed documents with document attention are encoded exactly as if each were alone in its row: for MLM (with and
without the EMD) and for RTD (generator and discriminator, the discriminator's head included), with every
attention backend that runs on CPU (the fused kernel: tests/flash_checks.py under Triton's interpreter)."""

import numpy as np
import pytest
import torch

from conftest import small_config
from deberta_pretrain.data.masking import IGNORE_INDEX, MLMCollator, document_ids
from deberta_pretrain.deberta import MaskedLanguageModel, ModelConfig, set_attention_backend
from deberta_pretrain.deberta.masks import document_attention_mask
from deberta_pretrain.deberta.rtd import ReplacedTokenDetectionModel, RTDModel

SEP, CLS, PAD, MASK = 2, 1, 0, 96
PACKED = np.array([CLS, 10, 11, 12, SEP, 20, 21, 22, 23, SEP, 30, 31, SEP, PAD, PAD])
DOCUMENTS = ((0, 5), (5, 10), (10, 13))  # [start, end) of each document of PACKED


def test_document_ids_and_mask_by_hand():
    ids = np.array([[CLS, 10, 11, SEP, 20, 21, SEP, PAD]])
    documents, positions = document_ids(ids, SEP)
    assert documents.tolist() == [[0, 0, 0, 0, 1, 1, 1, 2]]
    assert positions.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]
    attention = document_attention_mask(torch.from_numpy(documents), torch.from_numpy(ids != PAD))
    first, second = [0, 1, 2, 3], [4, 5, 6]
    for i in range(8):
        expected = [j in (first if i in first else second if i in second else []) for j in range(8)]
        assert attention[0, i].tolist() == expected


def packed_batch(mask_prob=0.3):
    collator = MLMCollator(97, MASK, PAD, [PAD, CLS, SEP, 3, MASK], seed=1, mask_prob=mask_prob,
                           document_attention=True, sep_id=SEP)
    batch = collator([((0, 0), PACKED)])
    assert set(batch) == {"input_ids", "input_mask", "labels", "document_ids", "position_ids"}  # no [L, L] mask
    return batch


def mlm_model(generation, position_biased_input, backend="sdpa"):
    torch.manual_seed(0)
    config = ModelConfig.from_dict(small_config(generation, position_biased_input=position_biased_input))
    return set_attention_backend(MaskedLanguageModel(config).eval(), backend)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("generation", ["v1", "v3"])
@pytest.mark.parametrize("position_biased_input", [True, False])  # False: EMD on, fed by the absolute positions
def test_packed_row_equals_documents_alone(generation, position_biased_input, backend):
    model = mlm_model(generation, position_biased_input, backend)
    batch = packed_batch()
    labels = batch["labels"][0]
    with torch.no_grad():
        together = model(**batch)
        for start, end in DOCUMENTS:  # each document alone, same (masked) inputs and labels
            ids = batch["input_ids"][:, start:end]
            alone = model(ids, torch.ones_like(ids), batch["labels"][:, start:end])
            rows = (labels[:start] != IGNORE_INDEX).sum(), (labels[:end] != IGNORE_INDEX).sum()
            torch.testing.assert_close(alone["logits"], together["logits"][rows[0]:rows[1]], atol=1e-5, rtol=1e-5)
    assert (labels != IGNORE_INDEX).sum() > 0


@pytest.mark.parametrize("generation", ["v1", "v3"])
def test_rtd_discriminator_sees_only_its_document(generation):
    """The discriminator's per-token logits (its head adds the document's first state, not the block's [CLS]) of
    every document equal its logits alone."""
    torch.manual_seed(0)
    model = ReplacedTokenDetectionModel(ModelConfig.from_dict(small_config(generation))).eval()
    batch = packed_batch()
    with torch.no_grad():
        together = model(batch["input_ids"], batch["input_mask"], position_ids=batch["position_ids"],
                         document_ids=batch["document_ids"])["logits"]
        full_block = model(batch["input_ids"], batch["input_mask"])["logits"]
        for start, end in DOCUMENTS:
            ids = batch["input_ids"][:, start:end]
            alone = model(ids, torch.ones_like(ids))["logits"]
            torch.testing.assert_close(alone, together[:, start:end], atol=1e-5, rtol=1e-5)
        assert (full_block[:, 5:13] - together[:, 5:13]).abs().max() > 1e-3  # without documents they do differ


def embedding_gradients(loss_of, model, batch):
    """d loss / d (word embeddings of every position), [L, H] for the single row of ``batch``."""
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["embeddings"] = output

    table = model.deberta.embeddings.word_embeddings if hasattr(model, "deberta") else \
        model.generator.deberta.embeddings.word_embeddings
    handle = table.register_forward_hook(keep)
    try:
        loss_of(model(**batch)).backward()
    finally:
        handle.remove()
    return captured["embeddings"].grad[0]


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_no_gradient_crosses_a_document_boundary(backend):
    """The MLM loss of one document has exactly zero gradient with respect to another document's input embeddings
    (EMD on), and the same for the discriminator's logits of one document."""
    batch = packed_batch()
    content = ~np.isin(PACKED, [CLS, SEP, PAD])
    batch["labels"] = torch.from_numpy(np.where(content, PACKED, IGNORE_INDEX))[None]  # every token predicted
    labels = batch["labels"][0]
    for doc, (start, end) in enumerate(DOCUMENTS):
        model = mlm_model("v3", False, backend).train()
        own = torch.zeros_like(labels, dtype=torch.bool)
        own[start:end] = True
        rows = own[labels != IGNORE_INDEX]
        grads = embedding_gradients(lambda out: out["logits"][rows].sum(), model, batch)
        assert grads[~own].abs().max() == 0, f"document {doc}: gradient reaches other documents"
        assert grads[own].abs().max() > 0

    torch.manual_seed(0)
    discriminator = set_attention_backend(ReplacedTokenDetectionModel(ModelConfig.from_dict(small_config("v3"))),
                                          backend)
    inputs = {k: batch[k] for k in ("input_ids", "input_mask", "position_ids", "document_ids")}
    grads = embedding_gradients(lambda out: out["logits"][0, 5:10].sum(), discriminator, inputs)
    assert grads[:5].abs().max() == 0 and grads[10:].abs().max() == 0 and grads[5:10].abs().max() > 0


def test_rtd_model_with_documents_keeps_the_generator_and_discriminator_inside_them():
    """Through the whole RTD step (generator, sampling, discriminator): the gradient of the second document's
    discriminator loss terms never reaches the first document's embeddings."""
    torch.manual_seed(0)
    generator = MaskedLanguageModel(ModelConfig.from_dict(small_config("v3", num_hidden_layers=2)), use_emd=True)
    discriminator = ReplacedTokenDetectionModel(ModelConfig.from_dict(small_config("v3")))
    model = RTDModel(generator, discriminator, "gdes", 10.0)
    batch = packed_batch(mask_prob=0.5)
    batch["sample_uniforms"] = torch.rand(1, 8)
    captured = {}
    table = discriminator.deberta.embeddings.word_embeddings
    handle = table.register_forward_hook(lambda m, i, out: captured.setdefault("d", out).retain_grad())
    try:
        out = model(**batch, max_predictions=8)
        out["logits"][0, 5:10].sum().backward()
    finally:
        handle.remove()
    grads = captured["d"].grad[0]
    assert grads[:5].abs().max() == 0 and grads[10:].abs().max() == 0 and grads[5:10].abs().max() > 0

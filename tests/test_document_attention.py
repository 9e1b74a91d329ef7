"""Packed documents with document attention are encoded exactly as if each were alone in its row."""

import numpy as np
import pytest
import torch

from conftest import small_config
from deberta_pretrain.data.masking import IGNORE_INDEX, MLMCollator, document_masks
from deberta_pretrain.deberta import MaskedLanguageModel, ModelConfig, set_attention_backend

SEP, CLS, PAD, MASK = 2, 1, 0, 96


def test_document_masks_by_hand():
    ids = np.array([[CLS, 10, 11, SEP, 20, 21, SEP, PAD]])
    attention, positions = document_masks(ids, ids != PAD, SEP)
    assert positions.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0]]
    first, second = [0, 1, 2, 3], [4, 5, 6]
    for i in range(8):
        expected = [j in (first if i in first else second if i in second else []) for j in range(8)]
        assert attention[0, i].tolist() == expected


@pytest.mark.parametrize("generation", ["v1", "v3"])
@pytest.mark.parametrize("position_biased_input", [True, False])  # False: EMD on, fed by the absolute positions
def test_packed_row_equals_documents_alone(generation, position_biased_input):
    torch.manual_seed(0)
    config = ModelConfig.from_dict(small_config(generation, position_biased_input=position_biased_input))
    model = set_attention_backend(MaskedLanguageModel(config).eval(), "sdpa")
    packed = np.array([CLS, 10, 11, 12, SEP, 20, 21, 22, 23, SEP, 30, 31, SEP, PAD, PAD])
    collator = MLMCollator(97, MASK, PAD, [PAD, CLS, SEP, 3, MASK], seed=1, mask_prob=0.3, document_attention=True,
                           sep_id=SEP)
    batch = collator([((0, 0), packed)])
    labels = batch["labels"][0]
    with torch.no_grad():
        together = model(batch["input_ids"], batch["input_mask"], batch["labels"],
                         attention_mask=batch["attention_mask"], position_ids=batch["position_ids"])
        for start, end in ((0, 5), (5, 10), (10, 13)):  # each document alone, same (masked) inputs and labels
            ids = batch["input_ids"][:, start:end]
            alone = model(ids, torch.ones_like(ids), batch["labels"][:, start:end])
            rows = (labels[:start] != IGNORE_INDEX).sum(), (labels[:end] != IGNORE_INDEX).sum()
            torch.testing.assert_close(alone["logits"], together["logits"][rows[0]:rows[1]], atol=1e-5, rtol=1e-5)
    assert (labels != IGNORE_INDEX).sum() > 0

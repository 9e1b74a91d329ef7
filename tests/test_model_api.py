"""The seed document's API and examples, the math of the building blocks against hand-written formulas, edge cases
and config validation."""

import json
import math

import pytest
import torch

from conftest import padded_batch, small_config
from deberta_pretrain.deberta import (
    BertEncoder, BertLayerNorm, ContextPooler, DeBERTa, DisentangledSelfAttention, MaskedLanguageModel,
    MaskedLayerNorm, ModelConfig, NNModule, PoolConfig, SequenceClassificationModel, StableDropout, XSoftmax,
    build_relative_position, make_log_bucket_position, set_attention_backend,
)


# ---- the seed's examples, as written -------------------------------------------------------------------------
def test_seed_xsoftmax_example():
    x = torch.randn([4, 20, 100])
    mask = (x > 0).int()
    y = XSoftmax.apply(x, mask, -1)
    expected = torch.where(mask.bool(), x.exp(), torch.zeros_like(x))
    expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(y, expected)


def test_seed_masked_layer_norm_example():
    x = torch.randn([1, 10, 100])
    m = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.int)
    layer_norm = BertLayerNorm(100)
    y = MaskedLayerNorm(layer_norm, x, m)
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-12) * m.unsqueeze(-1)
    torch.testing.assert_close(y, expected)
    assert (y[0, 3:] == 0).all()


def test_seed_deberta_example_and_nnmodule_subclass():
    input_ids = torch.LongTensor([[31, 51, 99], [15, 5, 0]])
    attention_mask = torch.LongTensor([[1, 1, 1], [1, 1, 0]])
    config = ModelConfig.from_dict(small_config("v1", vocab_size=128))
    bert = DeBERTa(config)
    encoder_layers = bert(input_ids, attention_mask=attention_mask)
    assert len(encoder_layers) == config.num_hidden_layers
    assert encoder_layers[-1].shape == (2, 3, config.hidden_size)
    last_only = bert(input_ids, attention_mask=attention_mask, output_all_encoded_layers=False)
    assert len(last_only) == 1

    class MyModule(NNModule):
        def __init__(self, config):
            super().__init__(config)
            self.bert = DeBERTa(config)
            self.apply(self.init_weights)

    module = MyModule(config)
    std = module.bert.encoder.layer[0].intermediate.dense.weight.std().item()
    assert abs(std - config.initializer_range) < 0.004
    assert module.bert.encoder.layer[0].intermediate.dense.bias.abs().sum() == 0


def test_build_relative_position_is_query_minus_key():
    rel = build_relative_position(3, 5, torch.device("cpu"))
    assert rel.shape == (1, 3, 5) and rel.dtype == torch.long
    for i in range(3):
        for j in range(5):
            assert rel[0, i, j] == i - j


def test_log_buckets_against_formula_and_hf():
    transformers = pytest.importorskip("transformers")
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position as hf_buckets

    r = torch.arange(-600, 601)
    ours = make_log_bucket_position(r, 256, 512)
    # The upstream formula written out per element (float64, as upstream's numpy code).
    mid = 128
    for value, bucket in zip(r.tolist(), ours.tolist()):
        if abs(value) <= mid:
            assert bucket == value
        else:
            log_pos = math.ceil(math.log(abs(value) / mid) / math.log((512 - 1) / mid) * (mid - 1)) + mid
            assert bucket == int(math.copysign(log_pos, value))
    inside = r.abs() < 512
    assert ours[inside].min() == -255 and ours[inside].max() == 255  # upstream's log buckets stay in [-255, 255]
    assert torch.equal(ours[inside], hf_buckets(r, 256, 512).long()[inside])
    assert transformers is not None


def test_xsoftmax_gradient_and_fully_masked_rows():
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    torch.autograd.gradcheck(lambda t: XSoftmax.apply(t, mask, -1), (x,))
    y = XSoftmax.apply(x, mask, -1)
    assert torch.equal(y[1], torch.zeros(6, dtype=torch.float64))
    for dtype in (torch.bfloat16, torch.float16):
        yh = XSoftmax.apply(x.detach().to(dtype), mask, -1)
        assert torch.isfinite(yh).all() and (yh[1] == 0).all()


def test_stable_dropout_is_inverted_dropout():
    dropout = StableDropout(0.25)
    x = torch.ones(20000)
    y = dropout(x)
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert abs(kept.float().mean().item() - 0.75) < 0.02
    dropout.eval()
    assert torch.equal(dropout(x), x)


# ---- edge cases ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_all_padding_rows_and_length_one_give_finite_outputs(backend, dtype):
    config = ModelConfig.from_dict(small_config("v3"))
    model = set_attention_backend(DeBERTa(config).eval(), backend).to(dtype)
    ids = torch.tensor([[5, 6, 7], [0, 0, 0], [9, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        layers = model(ids, attention_mask=mask)
        single = model(ids[:1, :1], attention_mask=mask[:1, :1])
    assert all(torch.isfinite(h).all() for h in layers)
    assert torch.isfinite(single[-1]).all()
    # The lone token of row 2 sees only itself: its output equals a length-1 run of that token.
    with torch.no_grad():
        alone = model(ids[2:, :1], attention_mask=mask[2:, :1])[-1]
    tolerance = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(layers[-1][2, 0], alone[0, 0], atol=tolerance, rtol=tolerance)


def test_three_d_mask_equal_to_outer_product_gives_same_output():
    config = ModelConfig.from_dict(small_config("v1"))
    model = DeBERTa(config).eval()
    ids, mask = padded_batch(config.vocab_size, lengths=(9, 5))
    outer = mask[:, :, None] * mask[:, None, :]
    with torch.no_grad():
        a = model(ids, attention_mask=mask)[-1]
        b = model(ids, attention_mask=outer)[-1]
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()])


def test_three_d_mask_restricts_attention():
    """With a causal [B, N, N] mask, the first k outputs cannot see later tokens: they equal a run on the first k
    tokens alone, and changing later tokens does not change them."""
    config = ModelConfig.from_dict(small_config("v3"))
    model = DeBERTa(config).eval()
    ids, _ = padded_batch(config.vocab_size, lengths=(8, 8))
    causal = torch.tril(torch.ones(8, 8, dtype=torch.long)).expand(2, 8, 8)
    changed = ids.clone()
    changed[:, 5:] = 3
    with torch.no_grad():
        full = model(ids, attention_mask=causal)[-1]
        prefix = model(ids[:, :5], attention_mask=causal[:, :5, :5])[-1]
        other = model(changed, attention_mask=causal)[-1]
    torch.testing.assert_close(full[:, :5], prefix, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full[:, :5], other[:, :5], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(full[:, 5:], other[:, 5:])


def test_return_att_gives_probabilities_and_matches_sdpa():
    config = ModelConfig.from_dict(small_config("v3"))
    model = set_attention_backend(DeBERTa(config).eval(), "sdpa")
    ids, mask = padded_batch(config.vocab_size, lengths=(10, 4))
    with torch.no_grad():
        layers, probs = model(ids, attention_mask=mask, return_att=True)
        plain = model(ids, attention_mask=mask)
    assert len(probs) == config.num_hidden_layers
    assert probs[0].shape == (2, config.num_attention_heads, 10, 10)
    sums = probs[0].sum(-1)
    torch.testing.assert_close(sums[0], torch.ones_like(sums[0]))
    assert (sums[1, :, 4:] == 0).all() and torch.allclose(sums[1, :, :4], torch.ones_like(sums[1, :, :4]))
    assert (probs[0][1, :, :4, 4:] == 0).all()  # nobody attends to padding
    torch.testing.assert_close(layers[-1], plain[-1], atol=1e-5, rtol=1e-5)


def test_p2p_term_matches_the_formula_written_per_element():
    config = ModelConfig.from_dict(small_config("v1", pos_att_type="c2p|p2c|p2p"))
    attention = DisentangledSelfAttention(config).eval()
    torch.nn.init.normal_(attention.q_bias)
    length, d, heads = 5, config.head_size, config.num_attention_heads
    hidden = torch.randn(1, length, config.hidden_size)
    rel_table = torch.randn(2 * config.relative_span, config.hidden_size)
    mask = torch.ones(1, 1, length, length)
    with torch.no_grad():
        _, probs = attention(hidden, mask, return_att=True, rel_embeddings=rel_table)
        w = attention.in_proj.weight.view(heads, 3, d, -1)
        span = config.relative_span
        scale = 1 / math.sqrt(d * 4)
        expected = torch.zeros(heads, length, length)
        for h in range(heads):
            q = hidden[0] @ w[h, 0].T + attention.q_bias.view(heads, d)[h]
            k = hidden[0] @ w[h, 1].T
            pos_k = rel_table @ attention.pos_proj.weight.view(heads, d, -1)[h].T
            pos_q = (rel_table @ attention.pos_q_proj.weight.view(heads, d, -1)[h].T
                     + attention.pos_q_proj.bias.view(heads, d)[h])
            for i in range(length):
                for j in range(length):
                    idx = min(max(i - j + span, 0), 2 * span - 1)
                    expected[h, i, j] = scale * (q[i] @ k[j] + q[i] @ pos_k[idx] + k[j] @ pos_q[idx]
                                                 + pos_q[span + i] @ pos_k[idx])
        expected = torch.softmax(expected, -1)
    torch.testing.assert_close(probs[0], expected, atol=1e-5, rtol=1e-5)


def test_token_types_are_used_and_match_hf():
    transformers = pytest.importorskip("transformers")
    config = ModelConfig.from_dict(small_config("v1", type_vocab_size=2, position_biased_input=True))
    ours = DeBERTa(config).eval()
    theirs = transformers.DebertaModel(transformers.DebertaConfig(**config.to_dict())).eval()
    result = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    ids, mask = padded_batch(config.vocab_size, lengths=(8, 6))
    types = torch.zeros_like(ids)
    types[:, 4:] = 1
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, token_type_ids=types)[-1]
        b = theirs(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        c = ours(ids, attention_mask=mask)[-1]
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, c)


def test_v1_state_dict_loads_into_v2_layout_with_identical_outputs():
    v1 = ModelConfig.from_dict(small_config("v1"))
    v2 = ModelConfig.from_dict(dict(small_config("v1"), model_type="deberta-v2"))
    a = DeBERTa(v1).eval()
    b = DeBERTa(v2).eval()
    result = b.load_state_dict(a.state_dict(), strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    ids, mask = padded_batch(v1.vocab_size, lengths=(11, 6))
    with torch.no_grad():
        torch.testing.assert_close(a(ids, attention_mask=mask)[-1], b(ids, attention_mask=mask)[-1],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("generation", ["v1", "v3"])
def test_sparse_emd_equals_upstream_emd_over_all_positions(generation):
    """Upstream's recipe: query = position embeddings + layer[-2]; run layer[-1] twice over all positions with the
    full relative positions; then select the masked rows."""
    torch.manual_seed(5)
    config = ModelConfig.from_dict(small_config(generation))
    model = MaskedLanguageModel(config).eval()
    assert model.lm_predictions.use_emd
    ids, mask = padded_batch(config.vocab_size, lengths=(14, 9, 3))
    labels = torch.full_like(ids, -100)
    for row, cols in enumerate(([0, 4, 13], [2, 8], [1])):
        labels[row, cols] = ids[row, cols]
    with torch.no_grad():
        out = model(ids, input_mask=mask, labels=labels)
        deberta = model.deberta
        encoded = deberta.encode(ids, mask)
        hidden = encoded["hidden_states"][-2]
        query = encoded["position_embeddings"] + hidden
        att_mask = deberta.encoder.get_attention_mask(mask)
        rel_embeddings = deberta.encoder.get_rel_embedding()
        for _ in range(2):
            query = deberta.encoder.layer[-1](hidden, att_mask, query_states=query, rel_embeddings=rel_embeddings)
        selected = query[labels > 0]
        expected_logits = model.lm_predictions.lm_head(selected, deberta.embeddings.word_embeddings.weight)
    torch.testing.assert_close(out["logits"], expected_logits, atol=1e-5, rtol=1e-5)
    expected_loss = torch.nn.functional.cross_entropy(expected_logits, labels[labels > 0])
    torch.testing.assert_close(out["loss"], expected_loss, atol=1e-6, rtol=1e-5)
    assert out["num_predictions"] == 6


def test_mlm_without_predictions_has_zero_loss_with_a_graph():
    config = ModelConfig.from_dict(small_config("v3"))
    model = MaskedLanguageModel(config)
    ids, mask = padded_batch(config.vocab_size, lengths=(5, 3))
    out = model(ids, input_mask=mask, labels=torch.full_like(ids, -100))
    assert out["loss"].item() == 0.0 and out["num_predictions"] == 0
    out["loss"].backward()


def test_sequence_classification_model_and_pool_config():
    config_dict = small_config("v1")
    config_dict["pooling"] = {"dropout": 0.2, "hidden_act": "tanh"}
    config = ModelConfig.from_dict(config_dict)
    pool = PoolConfig(config)
    assert (pool.hidden_size, pool.dropout, pool.hidden_act) == (config.hidden_size, 0.2, "tanh")
    assert isinstance(ContextPooler(pool).dense, torch.nn.Linear)
    model = SequenceClassificationModel(config, num_labels=3).eval()
    keys = set(model.state_dict())
    assert {"pooler.dense.weight", "pooler.dense.bias", "classifier.weight", "classifier.bias"} <= keys
    ids, mask = padded_batch(config.vocab_size, lengths=(6, 4))
    out = model(ids, input_mask=mask, labels=torch.tensor([0, 2]))
    assert out["logits"].shape == (2, 3) and out["loss"].item() > 0
    with torch.no_grad():
        cls = model.deberta(ids, mask)[-1][:, 0]
        expected = model.classifier(torch.tanh(model.pooler.dense(cls)))
    torch.testing.assert_close(out["logits"], expected)


# ---- configs ----------------------------------------------------------------------------------------------
def test_model_config_json_round_trip_and_defaults(tmp_path):
    config = ModelConfig.from_dict({"hidden_size": 64, "num_attention_heads": 4, "pos_att_type": ["c2p", "p2c"],
                                    "vocab_size": 10})
    assert config.layer_norm_eps == 1e-7 and config.type_vocab_size == 0 and config.padding_idx == 0
    data = json.loads(config.to_json_string())
    assert data["pos_att_type"] == "c2p|p2c"
    path = tmp_path / "model_config.json"
    path.write_text(config.to_json_string())
    assert ModelConfig.from_json_file(path) == config
    assert ModelConfig.from_dict({"pos_att_type": "P2C|c2p"}).pos_att_type == ["p2c", "c2p"]
    assert ModelConfig.from_dict({"pos_att_type": "none"}).pos_att_type == []


@pytest.mark.parametrize("overrides,field", [
    ({"pos_att_type": "c2p|x2y"}, "pos_att_type"),
    ({"hidden_size": 30, "num_attention_heads": 4}, "hidden_size"),
    ({"hidden_size": -8}, "hidden_size"),
    ({"num_hidden_layers": 0}, "num_hidden_layers"),
    ({"intermediate_size": -1}, "intermediate_size"),
    ({"vocab_size": -1}, "vocab_size"),
    ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
    ({"hidden_act": "gelu2"}, "hidden_act"),
    ({"type_vocab_size": -2}, "type_vocab_size"),
])
def test_bad_configs_raise_value_error_naming_the_field(overrides, field):
    base = small_config("v1")
    base.pop("attention_head_size", None)
    with pytest.raises(ValueError, match=field):
        DeBERTa(ModelConfig.from_dict({**base, **overrides}))


def test_encoder_is_a_module_with_upstream_helpers():
    config = ModelConfig.from_dict(small_config("v3"))
    encoder = BertEncoder(config)
    mask = torch.tensor([[1, 1, 0]])
    att = encoder.get_attention_mask(mask)
    assert att.shape == (1, 1, 3, 3)
    assert att[0, 0].tolist() == [[True, True, False], [True, True, False], [False, False, False]]
    assert encoder.get_rel_embedding().shape == (2 * config.position_buckets, config.hidden_size)

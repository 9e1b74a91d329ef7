"""Our encoder and MLM head against Hugging Face transformers (an independent implementation of DeBERTa).

Our ``state_dict()`` must load into HF's classes unchanged, and both must compute the same hidden states, input
gradients and masked-LM logits. HF fills fully masked (padding) query rows with a uniform softmax where upstream
gives zeros, so hidden states are compared at real tokens; real tokens never attend to padding in either.
"""

import pytest
import torch

from conftest import padded_batch, small_config
from deberta_pretrain.deberta import DeBERTa, MaskedLanguageModel, ModelConfig, set_attention_backend

transformers = pytest.importorskip("transformers")

CASES = [("v1", False), ("v1", True), ("v3", False), ("v3", True)]


def hf_classes(config: ModelConfig):
    if config.is_v2:
        return transformers.DebertaV2Config, transformers.DebertaV2Model, transformers.DebertaV2ForMaskedLM
    return transformers.DebertaConfig, transformers.DebertaModel, transformers.DebertaForMaskedLM


def hf_config(config: ModelConfig):
    config_cls, _, _ = hf_classes(config)
    return config_cls(**config.to_dict(), legacy=False, pad_token_id=0)


def load_into_hf(hf_model, state):
    """Load our state dict; return (missing, unexpected) minus what HF itself declares it ignores."""
    result = hf_model.load_state_dict(state, strict=False)
    ignored = getattr(hf_model, "_keys_to_ignore_on_load_unexpected", None) or []
    unexpected = [k for k in result.unexpected_keys if not any(pattern in k for pattern in ignored)]
    return list(result.missing_keys), unexpected


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("generation,position_biased_input", CASES)
def test_encoder_state_dict_loads_into_hf_and_hidden_states_match(generation, position_biased_input, backend):
    torch.manual_seed(0)
    config = ModelConfig.from_dict(small_config(generation, position_biased_input))
    ours = set_attention_backend(DeBERTa(config).eval(), backend)
    _, model_cls, _ = hf_classes(config)
    theirs = model_cls(hf_config(config)).eval()
    missing, unexpected = load_into_hf(theirs, ours.state_dict())
    assert missing == [] and unexpected == []

    ids, mask = padded_batch(config.vocab_size, lengths=(20, 13, 1))
    with torch.no_grad():
        our_layers = ours(ids, attention_mask=mask)
        their_layers = theirs(ids, attention_mask=mask, output_hidden_states=True).hidden_states[1:]
    assert len(our_layers) == len(their_layers) == config.num_hidden_layers
    valid = mask.bool()
    for a, b in zip(our_layers, their_layers):
        torch.testing.assert_close(a[valid], b[valid], atol=1e-5, rtol=1e-5)
    # Upstream semantics: padding positions are exactly zero after the embeddings' masked LayerNorm and stay finite.
    assert torch.isfinite(our_layers[-1]).all()


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("generation,position_biased_input", CASES)
def test_input_gradients_match_hf(generation, position_biased_input, backend):
    torch.manual_seed(1)
    config = ModelConfig.from_dict(small_config(generation, position_biased_input))
    ours = set_attention_backend(DeBERTa(config).eval(), backend)
    _, model_cls, _ = hf_classes(config)
    theirs = model_cls(hf_config(config)).eval()
    load_into_hf(theirs, ours.state_dict())
    ids, mask = padded_batch(config.vocab_size, lengths=(17, 9))
    valid = mask.bool()
    weights = torch.randn(int(valid.sum()), config.hidden_size)

    def input_grad(model, run):
        captured = {}

        def keep(module, args, output):
            output.retain_grad()
            captured["embeds"] = output

        handle = model.embeddings.word_embeddings.register_forward_hook(keep)
        last = run(model)
        handle.remove()
        (last[valid] * weights).sum().backward()
        return captured["embeds"].grad

    ours_grad = input_grad(ours, lambda m: m(ids, attention_mask=mask)[-1])
    theirs_grad = input_grad(theirs, lambda m: m(ids, attention_mask=mask).last_hidden_state)
    torch.testing.assert_close(ours_grad[valid], theirs_grad[valid], atol=1e-5, rtol=1e-4)
    their_params = dict(theirs.named_parameters())
    compared = 0
    for name, p in ours.named_parameters():
        if "position_embeddings" in name and not position_biased_input:
            assert name not in their_params and p.grad is None  # unused without EMD, absent from HF
            continue
        torch.testing.assert_close(p.grad, their_params[name].grad, atol=1e-5, rtol=1e-4,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")
        compared += 1
    assert compared == len(their_params)


@pytest.mark.parametrize("generation,position_biased_input", CASES)
def test_mlm_logits_match_hf_release_head(generation, position_biased_input):
    """HF's ``legacy=False`` head has the release names; HF has no EMD, so ours runs with ``use_emd=False``."""
    torch.manual_seed(2)
    config = ModelConfig.from_dict(small_config(generation, position_biased_input))
    ours = MaskedLanguageModel(config, use_emd=False).eval()
    _, _, mlm_cls = hf_classes(config)
    theirs = mlm_cls(hf_config(config)).eval()
    missing, unexpected = load_into_hf(theirs, ours.state_dict())
    assert missing == [] and unexpected == []
    ids, mask = padded_batch(config.vocab_size, lengths=(16, 11))
    labels = torch.full_like(ids, -100)
    labels[0, [1, 5, 9]] = ids[0, [1, 5, 9]]
    labels[1, [0, 10]] = ids[1, [0, 10]]
    with torch.no_grad():
        out = ours(ids, input_mask=mask, labels=labels)
        their_logits = theirs(ids, attention_mask=mask).logits
        their_loss = theirs(ids, attention_mask=mask, labels=labels).loss
    selected = labels != -100
    torch.testing.assert_close(out["logits"], their_logits[selected], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["loss"], their_loss, atol=1e-5, rtol=1e-5)
    # Without labels every position is decoded: the full [B, L, V] logits equal HF's at real tokens.
    with torch.no_grad():
        dense = ours(ids, input_mask=mask)["logits"]
    torch.testing.assert_close(dense[mask.bool()], their_logits[mask.bool()], atol=1e-5, rtol=1e-5)


def test_v2_conv_layer_and_talking_heads_match_hf():
    """The v2 xlarge features: conv layer after layer 0 (v2), talking heads (v1 HF supports them)."""
    torch.manual_seed(3)
    config = ModelConfig.from_dict(small_config("v3", conv_kernel_size=3, conv_act="gelu"))
    ours = DeBERTa(config).eval()
    theirs = transformers.DebertaV2Model(hf_config(config)).eval()
    assert load_into_hf(theirs, ours.state_dict()) == ([], [])
    ids, mask = padded_batch(config.vocab_size, lengths=(12, 7))
    with torch.no_grad():
        a = ours(ids, attention_mask=mask)[-1]
        b = theirs(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-5, rtol=1e-5)

    config = ModelConfig.from_dict(small_config("v1", talking_head=True))
    ours = DeBERTa(config).eval()
    theirs = transformers.DebertaModel(hf_config(config)).eval()
    assert load_into_hf(theirs, ours.state_dict()) == ([], [])
    with torch.no_grad():
        a = ours(ids, attention_mask=mask)[-1]
        b = theirs(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("generation", ["v1", "v3"])
def test_sequences_longer_than_max_relative_positions_match_hf(generation):
    overrides = {"max_relative_positions": 4} if generation == "v1" else {"position_buckets": 4}
    torch.manual_seed(4)
    config = ModelConfig.from_dict(small_config(generation, **overrides))
    ours = DeBERTa(config).eval()
    _, model_cls, _ = hf_classes(config)
    theirs = model_cls(hf_config(config)).eval()
    assert load_into_hf(theirs, ours.state_dict()) == ([], [])
    ids, mask = padded_batch(config.vocab_size, lengths=(40, 25))
    with torch.no_grad():
        a = ours(ids, attention_mask=mask)[-1]
        b = theirs(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(a[mask.bool()], b[mask.bool()], atol=1e-5, rtol=1e-5)

"""Checks of the fused Triton attention against the eager reference, shared by the CPU test (which runs this file
as a script under ``TRITON_INTERPRET=1``, set before Triton is imported) and the GPU test (which imports it).

    TRITON_INTERPRET=1 python tests/flash_checks.py
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import padded_batch, small_config  # noqa: E402

from deberta_pretrain.deberta import DeBERTa, ModelConfig, set_attention_backend  # noqa: E402
from deberta_pretrain.deberta import flash_attention  # noqa: E402
from deberta_pretrain.deberta.flash_attention import flash_disentangled_attention  # noqa: E402


def config_for(generation: str, head_size: int, heads: int = 2, layers: int = 1) -> ModelConfig:
    extra = {"attention_head_size": head_size} if generation == "v3" else {}
    return ModelConfig.from_dict(small_config(generation, hidden_size=head_size * heads, num_attention_heads=heads,
                                              num_hidden_layers=layers, max_position_embeddings=128, **extra))


def run(model, backend, ids, mask, weights, dtype, documents=None):
    set_attention_backend(model, backend)
    model.zero_grad()
    calls = []
    kernel = flash_attention.flash_disentangled_attention
    flash_attention.flash_disentangled_attention = lambda *args, **kwargs: calls.append(1) or kernel(*args, **kwargs)
    try:
        with torch.autocast(ids.device.type, dtype=dtype, enabled=dtype != torch.float32):
            positions = None if documents is None else document_positions(documents)
            out = model.encode(ids, mask, position_ids=positions, document_ids=documents)["hidden_states"][-1]
    finally:
        flash_attention.flash_disentangled_attention = kernel
    # the comparison means nothing if flash silently fell back to another backend
    expected = model.config.num_hidden_layers if backend == "flash" else 0
    assert len(calls) == expected, f"{backend}: fused kernel ran {len(calls)} times, expected {expected}"
    (out.float() * weights * mask[..., None]).sum().backward()
    return out.detach().float(), {n: p.grad.detach().float().clone() for n, p in model.named_parameters()
                                  if p.grad is not None}


def check_against_eager(device="cpu", dtype=torch.float32, head_sizes=(16,), lengths=((20, 13, 1), (37, 5)),
                        rtol=1e-5) -> None:
    """Outputs (at real tokens; padding rows must be 0) and every parameter gradient, flash vs eager, for v1 and
    v3 positions, padded batches and lengths that are not multiples of the tile size."""
    for generation in ("v1", "v3"):
        for head_size in head_sizes:
            for batch_lengths in lengths:
                torch.manual_seed(0)
                model = DeBERTa(config_for(generation, head_size)).to(device)
                ids, mask = (t.to(device) for t in padded_batch(97, lengths=batch_lengths))
                weights = torch.randn(*ids.shape, model.config.hidden_size, device=device,
                                      generator=torch.Generator(device).manual_seed(1))
                ref_out, ref_grads = run(model, "eager", ids, mask, weights, dtype)
                out, grads = run(model, "flash", ids, mask, weights, dtype)
                where = f"{generation} d={head_size} lengths={batch_lengths}"
                valid = mask.bool()
                scale = ref_out[valid].abs().max()
                assert (out[valid] - ref_out[valid]).abs().max() <= rtol * 10 * scale, where
                assert out[~valid].abs().max() == 0 if (~valid).any() else True, where
                assert grads.keys() == ref_grads.keys(), where
                for name, ref in ref_grads.items():
                    error = (grads[name] - ref).abs().max() / ref.abs().max().clamp(min=1e-12)
                    assert error <= rtol * 100, f"{where}: {name} gradient differs by {error:.2e} (relative)"
                print(f"ok {where}", flush=True)


def document_positions(documents: torch.Tensor) -> torch.Tensor:
    """Positions restarting at every document (as the collator makes them), computed here by a plain loop."""
    positions = torch.zeros_like(documents)
    for b in range(documents.size(0)):
        for i in range(1, documents.size(1)):
            positions[b, i] = 0 if documents[b, i] != documents[b, i - 1] else positions[b, i - 1] + 1
    return positions


def check_documents(device="cpu", dtype=torch.float32, head_sizes=(16,), rtol=1e-5) -> None:
    """Packed documents: the kernel masks by [B, L] document ids (the encoder builds no L x L mask for it) and
    matches eager's block-diagonal mask in outputs and every gradient, documents of 1 token and padding included."""
    layout = [[0] * 7 + [1] * 9 + [2] * 1 + [3] * 13, [0] * 20 + [1] * 4 + [2] * 6]  # 30 tokens a row
    documents = torch.tensor(layout, device=device)
    for generation in ("v1", "v3"):
        for head_size in head_sizes:
            torch.manual_seed(0)
            model = DeBERTa(config_for(generation, head_size, layers=2)).to(device)
            ids, mask = (t.to(device) for t in padded_batch(97, lengths=(30, 26)))
            view = set_attention_backend(model, "flash").encoder.get_attention_mask(mask, documents, fused=True)
            assert view.stride(-2) == 0, "the fused path must not allocate an L x L mask"
            weights = torch.randn(*ids.shape, model.config.hidden_size, device=device,
                                  generator=torch.Generator(device).manual_seed(1))
            ref_out, ref_grads = run(model, "eager", ids, mask, weights, dtype, documents)
            out, grads = run(model, "flash", ids, mask, weights, dtype, documents)
            where = f"documents {generation} d={head_size}"
            valid = mask.bool()
            assert (out[valid] - ref_out[valid]).abs().max() <= rtol * 10 * ref_out[valid].abs().max(), where
            assert grads.keys() == ref_grads.keys(), where
            for name, ref in ref_grads.items():
                error = (grads[name] - ref).abs().max() / ref.abs().max().clamp(min=1e-12)
                assert error <= rtol * 100, f"{where}: {name} gradient differs by {error:.2e} (relative)"
            print(f"ok {where}", flush=True)


def check_dropout(device="cpu") -> None:
    """With attention dropout the kernel must be a consistent function of its inputs for a fixed seed: the same
    output twice, gradients equal to finite differences, and some probability mass really dropped."""
    g = torch.Generator(device).manual_seed(0)
    B, H, L, D, R = 2, 2, 19, 16, 12
    q, k, v = (torch.randn(B, H, L, D, device=device, generator=g, requires_grad=True) for _ in range(3))
    c2p = torch.randn(B, H, L, R, device=device, generator=g, requires_grad=True)
    p2c_t = torch.randn(B, H, L, R, device=device, generator=g, requires_grad=True)
    columns = torch.clamp(torch.arange(-(L - 1), L, device=device) + R // 2, 0, R - 1)
    mask = torch.ones(B, L, dtype=torch.long, device=device)
    mask[1, 15:] = 0
    weights = torch.randn(B, H, L, D, device=device, generator=g)

    def f():
        return (flash_disentangled_attention(q, k, v, c2p, p2c_t, columns, mask, 0.25, p_drop=0.3, seed=1234)
                * weights).sum()

    with torch.no_grad():
        first, second = f(), f()
        undropped = (flash_disentangled_attention(q, k, v, c2p, p2c_t, columns, mask, 0.25) * weights).sum()
    assert first == second and first != undropped
    f().backward()
    for tensor in (q, k, v, c2p, p2c_t):
        direction = torch.randn(tensor.shape, device=device, generator=g)
        eps = 1e-2
        with torch.no_grad():
            tensor += eps * direction
            plus = f()
            tensor -= 2 * eps * direction
            minus = f()
            tensor += eps * direction
        numeric = (plus - minus) / (2 * eps)
        analytic = (tensor.grad * direction).sum()
        assert abs(numeric - analytic) <= 2e-3 * max(1.0, abs(analytic)), (numeric, analytic)
    print("ok dropout", flush=True)


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1 (or use the gpu test)"
    check_against_eager()
    check_documents()
    check_dropout()

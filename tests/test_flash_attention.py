"""The fused Triton attention (``attention_backend=flash``) against the eager reference: on CPU through Triton's
interpreter (in a subprocess, because interpreter mode must be chosen before Triton is imported), and on a GPU in
bf16 with the head sizes the kernel supports."""

import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def test_flash_matches_eager_in_the_triton_interpreter():
    pytest.importorskip("triton")
    result = subprocess.run([sys.executable, os.path.join(HERE, "flash_checks.py")], capture_output=True, text=True,
                            env=dict(os.environ, TRITON_INTERPRET="1"), timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert result.stdout.count("ok ") == 7


def test_flash_is_not_used_where_it_cannot_run():
    """Without a GPU (and outside interpreter mode), ``flash`` and ``auto`` fall back to sdpa with equal results."""
    from conftest import padded_batch, small_config
    from deberta_pretrain.deberta import DeBERTa, ModelConfig, set_attention_backend

    torch.manual_seed(0)
    model = DeBERTa(ModelConfig.from_dict(small_config("v3", attention_head_size=16, hidden_size=64))).eval()
    ids, mask = padded_batch(97)
    with torch.no_grad():
        outs = [set_attention_backend(model, b)(ids, attention_mask=mask)[-1] for b in ("flash", "auto", "sdpa")]
    assert torch.equal(outs[0], outs[2]) and torch.equal(outs[1], outs[2])


@pytest.mark.gpu
def test_flash_matches_eager_on_gpu_in_bf16():
    sys.path.insert(0, HERE)
    import flash_checks

    flash_checks.check_against_eager("cuda", torch.bfloat16, head_sizes=(32, 64, 128),
                                     lengths=((130, 77, 1), (513, 200), (64,)), rtol=1e-3)
    flash_checks.check_documents("cuda", torch.bfloat16, head_sizes=(32, 64, 128), rtol=1e-3)
    flash_checks.check_dropout("cuda")


def test_kernel_masks_recognises_outer_products_and_remembered_documents_only():
    """The fused kernel takes a [B, L] key mask (and [B, L] document ids): they are recovered from the encoder's
    remembered masks (without a comparison), the key mask from equal masks a caller builds; any other mask,
    a document mask built by hand included, is refused (it goes to sdpa)."""
    from deberta_pretrain.deberta.masks import extended_attention_mask, kernel_masks

    pad = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    built = extended_attention_mask(pad, remember=True)
    assert torch.equal(kernel_masks(built)[0], pad.bool()) and kernel_masks(built)[1] is None
    by_hand = torch.tensor([[[a and b for b in row] for a in row] for row in pad.tolist()], dtype=torch.bool)
    assert torch.equal(kernel_masks(by_hand[:, None])[0], pad.bool())
    causal = torch.tril(torch.ones(4, 4, dtype=torch.bool)).expand(2, 4, 4)
    assert kernel_masks(causal[:, None]) is None
    blocks = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    blocks[..., :2, :2] = blocks[..., 2:, 2:] = True  # two documents packed in one row
    assert kernel_masks(blocks) is None
    documents = torch.tensor([[0, 0, 1, 1]])
    remembered = extended_attention_mask(torch.ones(1, 4), documents, remember=True)
    assert torch.equal(remembered, blocks)
    assert torch.equal(kernel_masks(remembered)[1], documents)

"""Attention masks as upstream: a 2-D padding mask becomes the [B, 1, L, L] outer product; 3-D masks are used as
given. The padding masks behind outer products built here are remembered, so that the fused attention kernel,
which takes a [B, L] key mask, can use them without comparing L x L tensors (and waiting on the GPU) in every
layer."""

from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

# extended mask (by identity, held weakly) -> the [B, L] boolean padding mask it was built from
_PADDING_MASKS = WeakIdKeyDictionary()


def extended_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] input mask -> [B, 1, L, L] boolean outer product (pad rows and columns masked);
    [B, L, L] attention mask -> [B, 1, L, L]; [B, 1, L, L] as is."""
    if attention_mask.dim() <= 2:
        m = attention_mask.to(torch.bool)
        extended = m[:, None, None, :] & m[:, None, :, None]
        _PADDING_MASKS[extended] = m
        return extended
    if attention_mask.dim() == 3:
        return attention_mask.unsqueeze(1).to(torch.bool)
    return attention_mask.to(torch.bool)


def padding_key_mask(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """The [B, L] padding mask whose outer product ``attention_mask`` ([B, 1, L, L], boolean) is, or None if it is
    not one. Free for masks built by :func:`extended_attention_mask`; other masks are compared element-wise."""
    known = _PADDING_MASKS.get(attention_mask)
    if known is not None:
        return known
    if attention_mask.dim() != 4 or attention_mask.size(1) != 1 or attention_mask.size(-1) != attention_mask.size(-2):
        return None
    key_mask = attention_mask[:, 0].any(-2)
    outer = key_mask[:, :, None] & key_mask[:, None, :]
    return key_mask if torch.equal(attention_mask[:, 0], outer) else None

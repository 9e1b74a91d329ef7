"""Attention masks as upstream: a 2-D padding mask becomes the [B, 1, L, L] outer product; 3-D masks are used as
given. With document ids (packed blocks, ``data.document_attention``) the outer product is also block-diagonal:
token i may attend to token j only when both belong to the same document.

The fused attention kernel takes the [B, L] key mask and the [B, L] document ids instead of an L x L mask: masks
built here with ``remember=True`` keep what they were built from, so that the kernel gets them without comparing
L x L tensors (and waiting on the GPU) in every layer."""

from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

# extended mask (by identity, held weakly) -> (the [B, L] boolean padding mask, [B, L] document ids or None)
_KERNEL_MASKS = WeakIdKeyDictionary()


def document_attention_mask(document_ids: torch.Tensor, input_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] document ids and input mask -> [B, L, L] boolean: token i attends to token j iff both are tokens of
    the same document."""
    valid = input_mask.to(torch.bool)
    same = document_ids[:, :, None] == document_ids[:, None, :]
    return same & valid[:, :, None] & valid[:, None, :]


def extended_attention_mask(attention_mask: torch.Tensor, document_ids: torch.Tensor | None = None,
                            remember: bool = False) -> torch.Tensor:
    """[B, L] input mask -> [B, 1, L, L] boolean outer product (pad rows and columns masked), block-diagonal by
    ``document_ids`` when given; [B, L, L] attention mask -> [B, 1, L, L]; [B, 1, L, L] as is. ``remember``: keep
    the [B, L] inputs of a mask built here for :func:`kernel_masks`."""
    if attention_mask.dim() <= 2:
        m = attention_mask.to(torch.bool)
        if document_ids is None:
            extended = m[:, None, None, :] & m[:, None, :, None]
        else:
            extended = document_attention_mask(document_ids, m).unsqueeze(1)
        if remember:
            _remember(extended, m, document_ids)
        return extended
    if document_ids is not None:
        raise ValueError("document_ids come with a 2-D input mask, not a 3-D or 4-D attention mask")
    if attention_mask.dim() == 3:
        return attention_mask.unsqueeze(1).to(torch.bool)
    return attention_mask.to(torch.bool)


def document_key_view(input_mask: torch.Tensor, document_ids: torch.Tensor) -> torch.Tensor:
    """For the fused kernel only: a [B, 1, L, L] view of the key mask (no L x L memory) that remembers the input
    mask and the document ids the kernel masks with. Not a document mask itself: only the fused kernel may read
    it (``BertEncoder`` makes sure every layer does)."""
    m = input_mask.to(torch.bool)
    view = m[:, None, None, :].expand(-1, -1, m.size(1), -1)
    _remember(view, m, document_ids)
    return view


@torch.compiler.disable  # a side table torch.compile cannot trace; only the fused kernel's path remembers masks
def _remember(extended, key_mask, document_ids):
    _KERNEL_MASKS[extended] = (key_mask, document_ids)


def kernel_masks(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(the [B, L] key mask, the [B, L] document ids or None) that ``attention_mask`` ([B, 1, L, L], boolean) was
    built from, or None if it is neither a padding outer product nor a document mask built here. Free for masks
    built by :func:`extended_attention_mask` with ``remember``; other masks are compared element-wise (padding
    outer products only)."""
    known = _KERNEL_MASKS.get(attention_mask)
    if known is not None:
        return known
    if attention_mask.dim() != 4 or attention_mask.size(1) != 1 or attention_mask.size(-1) != attention_mask.size(-2):
        return None
    key_mask = attention_mask[:, 0].any(-2)
    outer = key_mask[:, :, None] & key_mask[:, None, :]
    return (key_mask, None) if torch.equal(attention_mask[:, 0], outer) else None

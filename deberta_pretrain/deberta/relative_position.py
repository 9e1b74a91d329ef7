"""Relative positions between query and key tokens, exact (v1) or log-bucketed (v2/v3)."""

from __future__ import annotations

import functools

import torch


def make_log_bucket_position(relative_pos: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """Map relative distances to log buckets (v2/v3): distances with |r| < bucket_size/2 stay exact, larger ones
    are compressed logarithmically so that ``max_position - 1`` maps to ``bucket_size - 1``.

    ``mid = bucket_size // 2``;
    ``bucket = r`` if ``|r| <= mid`` else ``sign(r) * (ceil(ln(|r|/mid) / ln((max_position-1)/mid) * (mid-1)) + mid)``.
    Computed in float64 like upstream's numpy code.
    """
    sign = torch.sign(relative_pos)
    mid = bucket_size // 2
    rel = relative_pos.to(torch.float64)
    abs_pos = torch.where((relative_pos < mid) & (relative_pos > -mid), torch.full_like(rel, mid - 1), rel.abs())
    log_pos = torch.ceil(torch.log(abs_pos / mid) / torch.log(torch.tensor((max_position - 1) / mid,
                                                                          dtype=torch.float64)) * (mid - 1)) + mid
    bucket_pos = torch.where(abs_pos <= mid, rel, log_pos * sign)
    return bucket_pos.to(torch.long)


@functools.lru_cache(maxsize=64)
def _cached_relative_position(query_size, key_size, bucket_size, max_position, device):
    q_ids = torch.arange(query_size, dtype=torch.long, device=device)
    k_ids = torch.arange(key_size, dtype=torch.long, device=device)
    rel_pos = q_ids[:, None] - k_ids[None, :]
    if bucket_size > 0 and max_position > 0:
        rel_pos = make_log_bucket_position(rel_pos, bucket_size, max_position)
    return rel_pos.unsqueeze(0)


def build_relative_position(query_size: int, key_size: int, device=None, bucket_size: int = -1,
                            max_position: int = -1) -> torch.Tensor:
    """Relative position ``R[i, j] = P_q[i] - P_k[j]`` for query positions ``0..query_size-1`` and key positions
    ``0..key_size-1``, shape ``[1, query_size, key_size]`` (``torch.long``). With ``bucket_size > 0`` the distances
    are log-bucketed (see :func:`make_log_bucket_position`). The result is cached: do not modify it in place.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    build = _cached_relative_position.__wrapped__ if torch.compiler.is_compiling() else _cached_relative_position
    return build(int(query_size), int(key_size), int(bucket_size), int(max_position), device)  # compiled: in-graph


@functools.lru_cache(maxsize=64)
def _cached_position_columns(length, span, bucket_size, max_position, device):
    delta = torch.arange(-(length - 1), length, device=device)
    if bucket_size > 0 and max_position > 0:
        delta = make_log_bucket_position(delta, bucket_size, max_position)
    return torch.clamp(delta + span, 0, 2 * span - 1).to(torch.int32)  # the kernel's index type


def relative_position_columns(length: int, span: int, device=None, bucket_size: int = -1,
                              max_position: int = -1) -> torch.Tensor:
    """Row of the relative-embedding table that each relative distance ``i - j`` in ``-(length-1)..length-1`` uses
    (element ``i - j + length - 1``): the (log-bucketed) distance plus ``span``, clamped to ``[0, 2 * span)``, as in
    the c2p/p2c gather, as int32. The fused attention kernel looks distances up here; cached like
    :func:`build_relative_position` (do not modify it in place)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    build = _cached_position_columns.__wrapped__ if torch.compiler.is_compiling() else _cached_position_columns
    return build(int(length), int(span), int(bucket_size), int(max_position), device)


def relative_position_from_ids(query_pos: torch.Tensor, key_pos: torch.Tensor, bucket_size: int = -1,
                               max_position: int = -1) -> torch.Tensor:
    """Relative positions from explicit per-token positions: ``query_pos`` [B, Lq], ``key_pos`` [B, Lk] ->
    [B, Lq, Lk]. Used when queries are a subset of the tokens (EMD at masked positions) or for packed rows."""
    rel_pos = query_pos[:, :, None].long() - key_pos[:, None, :].long()
    if bucket_size > 0 and max_position > 0:
        rel_pos = make_log_bucket_position(rel_pos, bucket_size, max_position)
    return rel_pos

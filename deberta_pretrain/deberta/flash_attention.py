"""Fused disentangled attention in Triton (forward and backward) that never materialises an L x L tensor.

The relative terms are reduced to two small tables computed with ordinary matmuls outside the kernel (so autograd
carries their gradients back to the projections)::

    C  = (scale * q) @ pos_key^T      [B, h, Lq, 2span]    (c2p)
    PT = k @ (scale * pos_query)^T    [B, h, Lk, 2span]    (p2c, stored transposed)

and the kernel computes, tile by tile with an online softmax (FlashAttention-2 style)::

    s[i, j] = scale * q_i . k_j + C[i, col(i - j)] + PT[j, col(i - j)]

where ``col(delta)`` is a lookup table (the clamped, v2/v3 log-bucketed relative position plus ``span``), so the
kernel handles v1 and v3 positions alike. Padding is a 2-D input mask (query rows without tokens give zeros, as
XSoftmax does); packed documents (``data.document_attention``) are [B, L] document ids: key j counts for query i
only when both carry the same id (the encoder then builds no L x L mask). Attention dropout uses Triton's
counter-based RNG and is regenerated in the backward pass.

The backward recomputes the probabilities from the saved row log-sum-exp; the gradients of ``C`` and ``PT`` are
scattered with atomic adds (several keys of a tile can share a bucket). On CPU the kernels run under
``TRITON_INTERPRET=1`` (slowly), which is how the tests check them without a GPU.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - the backend then reports itself unavailable
    triton = None


def is_available(device: torch.device | None = None) -> bool:
    """True when the kernels can run on ``device``: Triton installed, and a CUDA device (or interpreter mode)."""
    if triton is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return device is not None and device.type == "cuda"


if triton is not None:

    @triton.jit
    def _scores(q, k_ptrs, offs_m, offs_n, c_row_ptrs, pt_base, stride_ptn, col_ptr, lq, lk, mask_k_ptr, doc_q,
                doc_k_ptr, scale, PRECISION: tl.constexpr, DOCS: tl.constexpr):
        """Scores of a [BLOCK_M, BLOCK_N] tile (invalid keys, and with ``DOCS`` keys of other documents, at -inf)
        and the table columns it used."""
        k = tl.load(k_ptrs, mask=offs_n[:, None] < lk, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        delta = offs_m[:, None] - offs_n[None, :] + lk - 1  # col_ptr[0] is the distance -(lk - 1)
        key_ok = offs_n < lk
        in_tile = (offs_m[:, None] < lq) & key_ok[None, :]
        col = tl.load(col_ptr + delta, mask=in_tile, other=0)
        c = tl.load(c_row_ptrs + col, mask=in_tile, other=0.0)
        p = tl.load(pt_base + offs_n[None, :] * stride_ptn + col, mask=in_tile, other=0.0)
        s += c.to(tl.float32) + p.to(tl.float32)
        valid = (tl.load(mask_k_ptr + offs_n, mask=key_ok, other=0) != 0)[None, :]
        if DOCS:
            valid = valid & (doc_q[:, None] == tl.load(doc_k_ptr + offs_n, mask=key_ok, other=-1)[None, :])
        s = tl.where(valid, s, float("-inf"))
        return s, col, k

    @triton.jit
    def _dropout_keep(seed, bh, offs_m, offs_n, lk, p_drop):
        """The same keep-mask in forward and backward: a counter-based RNG stream per (seed, batch x head)."""
        return tl.rand(seed + bh, offs_m[:, None] * lk + offs_n[None, :]) >= p_drop

    @triton.jit
    def _forward_kernel(Q, K, V, C, PT, COL, MASK, DOC, O, LSE, scale, seed, p_drop,
                        stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                        stride_cb, stride_ch, stride_cm, stride_pb, stride_ph, stride_pn,
                        stride_ob, stride_oh, stride_om, stride_mb,
                        H, LQ, LK, D: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DROPOUT: tl.constexpr,
                        PRECISION: tl.constexpr, DOCS: tl.constexpr):
        pid_m, bh = tl.program_id(0), tl.program_id(1)
        b, h = bh // H, bh % H
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n0 = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                    mask=offs_m[:, None] < LQ, other=0.0)
        c_rows = C + b * stride_cb + h * stride_ch + offs_m[:, None] * stride_cm
        pt_base = PT + b * stride_pb + h * stride_ph
        mask_row = MASK + b * stride_mb
        doc_row = DOC + b * stride_mb
        doc_q = offs_m  # unused without DOCS
        if DOCS:
            doc_q = tl.load(doc_row + offs_m, mask=offs_m < LQ, other=-2)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        for start_n in range(0, LK, BLOCK_N):
            offs_n = start_n + offs_n0
            k_ptrs = K + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
            s, col, k = _scores(q, k_ptrs, offs_m, offs_n, c_rows, pt_base, stride_pn, COL, LQ, LK, mask_row,
                                doc_q, doc_row, scale, PRECISION, DOCS)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            if DROPOUT:
                keep = _dropout_keep(seed, bh, offs_m, offs_n, LK, p_drop)
                p = tl.where(keep, p / (1.0 - p_drop), 0.0)
            v = tl.load(V + b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                        mask=offs_n[:, None] < LK, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        row_ok = (l_i > 0) & (tl.load(MASK + b * stride_mb + offs_m, mask=offs_m < LQ, other=0) != 0)
        out = tl.where(row_ok[:, None], acc / tl.where(l_i > 0, l_i, 1.0)[:, None], 0.0)
        tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
                 out.to(O.dtype.element_ty), mask=offs_m[:, None] < LQ)
        lse = tl.where(row_ok, tl.where(m_i == float("-inf"), 0.0, m_i) + tl.log(tl.where(l_i > 0, l_i, 1.0)),
                       float("inf"))
        tl.store(LSE + bh * LQ + offs_m, lse, mask=offs_m < LQ)

    @triton.jit
    def _backward_kernel(Q, K, V, C, PT, COL, MASK, DOC, DO, LSE, DELTA, DQ, DK, DV, DC, DPT, scale, seed, p_drop,
                         stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                         stride_cb, stride_ch, stride_cm, stride_pb, stride_ph, stride_pn, stride_mb,
                         H, LQ, LK, D: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DROPOUT: tl.constexpr,
                         PRECISION: tl.constexpr, DOCS: tl.constexpr):
        """One program per key block: dK, dV (and dPT) accumulate locally; dQ and dC are added atomically."""
        pid_n, bh = tl.program_id(0), tl.program_id(1)
        b, h = bh // H, bh % H
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_m0 = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, D)
        kv_off = b * stride_kb + h * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :]
        v = tl.load(V + kv_off, mask=offs_n[:, None] < LK, other=0.0)
        pt_base = PT + b * stride_pb + h * stride_ph
        dpt_base = DPT + b * stride_pb + h * stride_ph
        dk = tl.zeros([BLOCK_N, D], tl.float32)
        dv = tl.zeros([BLOCK_N, D], tl.float32)
        for start_m in range(0, LQ, BLOCK_M):
            offs_m = start_m + offs_m0
            row_in = offs_m < LQ
            q_off = b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :]
            q = tl.load(Q + q_off, mask=row_in[:, None], other=0.0)
            c_rows = C + b * stride_cb + h * stride_ch + offs_m[:, None] * stride_cm
            doc_q = offs_m  # unused without DOCS
            if DOCS:
                doc_q = tl.load(DOC + b * stride_mb + offs_m, mask=row_in, other=-2)
            s, col, k = _scores(q, K + kv_off, offs_m, offs_n, c_rows, pt_base, stride_pn, COL, LQ, LK,
                                MASK + b * stride_mb, doc_q, DOC + b * stride_mb, scale, PRECISION, DOCS)
            lse = tl.load(LSE + bh * LQ + offs_m, mask=row_in, other=float("inf"))
            p = tl.exp(s - lse[:, None])  # rows without tokens have lse = inf -> p = 0
            do = tl.load(DO + q_off, mask=row_in[:, None], other=0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION).to(tl.float32)
            if DROPOUT:
                keep = _dropout_keep(seed, bh, offs_m, offs_n, LK, p_drop)
                p_used = tl.where(keep, p / (1.0 - p_drop), 0.0)
                dp = tl.where(keep, dp / (1.0 - p_drop), 0.0)
            else:
                p_used = p
            dv += tl.dot(tl.trans(p_used.to(do.dtype)), do, input_precision=PRECISION)
            delta = tl.load(DELTA + bh * LQ + offs_m, mask=row_in, other=0.0)
            ds = p * (dp - delta[:, None])
            in_tile = row_in[:, None] & (offs_n[None, :] < LK)
            ds = tl.where(in_tile, ds, 0.0)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION) * scale
            tl.atomic_add(DQ + q_off, tl.dot(ds.to(k.dtype), k, input_precision=PRECISION) * scale,
                          mask=row_in[:, None])
            tl.atomic_add(DC + b * stride_cb + h * stride_ch + offs_m[:, None] * stride_cm + col, ds, mask=in_tile)
            tl.atomic_add(dpt_base + offs_n[None, :] * stride_pn + col, ds, mask=in_tile)
        tl.store(DK + kv_off, dk, mask=offs_n[:, None] < LK)
        tl.store(DV + kv_off, dv, mask=offs_n[:, None] < LK)


class _FlashDisentangled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, c2p, p2c_t, columns, key_mask, document_ids, scale, p_drop, seed):
        B, H, LQ, D = q.shape
        LK = k.size(2)
        q, k, v, c2p, p2c_t = (t.contiguous() for t in (q, k, v, c2p, p2c_t))
        key_mask = key_mask.to(torch.int32).contiguous()
        docs = document_ids is not None
        document_ids = document_ids.to(torch.int32).contiguous() if docs else key_mask
        if document_ids.stride() != key_mask.stride():
            raise ValueError(f"document_ids {tuple(document_ids.shape)} must have key_mask's shape "
                             f"{tuple(key_mask.shape)}")
        out = torch.empty_like(q)
        lse = torch.empty(B * H, LQ, device=q.device, dtype=torch.float32)
        block_m, block_n = _blocks(D)
        grid = (triton.cdiv(LQ, block_m), B * H)
        _forward_kernel[grid](q, k, v, c2p, p2c_t, columns, key_mask, document_ids, out, lse, scale, seed, p_drop,
                              q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                              c2p.stride(0), c2p.stride(1), c2p.stride(2), p2c_t.stride(0), p2c_t.stride(1),
                              p2c_t.stride(2), out.stride(0), out.stride(1), out.stride(2), key_mask.stride(0),
                              H, LQ, LK, D=D, BLOCK_M=block_m, BLOCK_N=block_n,
                              DROPOUT=p_drop > 0, PRECISION=_precision(q), DOCS=docs)
        ctx.save_for_backward(q, k, v, c2p, p2c_t, columns, key_mask, document_ids, out, lse)
        ctx.scale, ctx.p_drop, ctx.seed, ctx.docs = scale, p_drop, seed, docs
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, c2p, p2c_t, columns, key_mask, document_ids, out, lse = ctx.saved_tensors
        B, H, LQ, D = q.shape
        LK = k.size(2)
        dout = dout.contiguous()
        delta = (dout.float() * out.float()).sum(-1).reshape(B * H, LQ).contiguous()
        dq = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
        dk = torch.empty(k.shape, device=q.device, dtype=torch.float32)
        dv = torch.empty(v.shape, device=q.device, dtype=torch.float32)
        dc = torch.zeros(c2p.shape, device=q.device, dtype=torch.float32)
        dpt = torch.zeros(p2c_t.shape, device=q.device, dtype=torch.float32)
        block_m, block_n = _blocks(D)
        grid = (triton.cdiv(LK, block_n), B * H)
        _backward_kernel[grid](q, k, v, c2p, p2c_t, columns, key_mask, document_ids, dout, lse, delta, dq, dk, dv, dc,
                               dpt, ctx.scale, ctx.seed, ctx.p_drop,
                               q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                               c2p.stride(0), c2p.stride(1), c2p.stride(2), p2c_t.stride(0), p2c_t.stride(1),
                               p2c_t.stride(2), key_mask.stride(0), H, LQ, LK, D=D,
                               BLOCK_M=block_m, BLOCK_N=block_n, DROPOUT=ctx.p_drop > 0, PRECISION=_precision(q),
                               DOCS=ctx.docs)
        return (dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dc.to(c2p.dtype), dpt.to(p2c_t.dtype),
                None, None, None, None, None, None)


def _precision(q: torch.Tensor) -> str:
    """fp32 inputs get full fp32 products (no TF32 rounding), so fp32 runs match the eager path closely."""
    return "ieee" if q.dtype == torch.float32 else "tf32"


def _blocks(head_size: int) -> tuple[int, int]:
    if os.environ.get("TRITON_INTERPRET") == "1":
        return 16, 16
    return (64, 64) if head_size <= 64 else (64, 32)


def flash_disentangled_attention(q, k, v, c2p, p2c_t, columns, key_mask, scale: float, p_drop: float = 0.0,
                                 seed: int | None = None, document_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Disentangled attention of ``q, k, v`` ``[B, h, L, d]`` with the relative tables ``c2p`` ``[B|1, h, Lq, R]``
    and ``p2c_t`` ``[B|1, h, Lk, R]`` (see the module docstring), ``columns[delta + Lk - 1]`` the table column of
    relative position ``delta = i - j``, ``key_mask`` ``[B, L]`` (1 = token) and optionally ``document_ids``
    ``[B, L]`` (a token attends only to tokens of its own document). Returns ``[B, h, Lq, d]``."""
    if seed is None:
        seed = int(torch.randint(0, 2**30, (1,)).item()) if p_drop > 0 else 0
    B = q.size(0)
    c2p = c2p.expand(B, -1, -1, -1)
    p2c_t = p2c_t.expand(B, -1, -1, -1)
    return _FlashDisentangled.apply(q, k, v, c2p, p2c_t, columns.to(torch.int32).contiguous(), key_mask, document_ids,
                                    float(scale), float(p_drop), seed)

"""Disentangled self-attention, the heart of DeBERTa.

For query token i and key token j, with content projections ``q_i, k_j``, relative-position embeddings
``P`` (a table of ``2*span`` rows), their projections ``Pk = P Wk_pos`` and ``Pq = P Wq_pos``, relative position
``r = rel(i, j)`` (``i - j``, log-bucketed in v2/v3) and ``idx(i, j) = clamp(r + span, 0, 2*span - 1)``::

    score(i, j) = ( q_i . k_j                       content -> content
                  + q_i . Pk[idx(i, j)]             content -> position  (c2p)
                  + k_j . Pq[idx(i, j)]             position -> content  (p2c)
                  + Pq[span + i] . Pk[idx(i, j)]    position -> position (p2p, rarely used)
                  ) / sqrt(d * (1 + number of relative terms))

    attention = XSoftmax(score, mask) @ v

This is upstream's math (``DeBERTa/deberta/disentangled_attention.py``); c2p and p2c are computed as
``[.., L, 2span]`` / ``[.., 2span, L]`` products followed by a gather, never per element.

Parameter layouts (release names): v1 ``in_proj`` (rows per head interleaved ``[h][q|k|v][d]``, no bias) +
``q_bias`` + ``v_bias``, ``pos_proj`` (c2p, no bias), ``pos_q_proj`` (p2c); v2/v3 ``query_proj``, ``key_proj``,
``value_proj`` and, unless ``share_att_key``, ``pos_key_proj``/``pos_query_proj``. With ``share_att_key`` the
content projections are reused on the relative embeddings.

Backends: ``eager`` materialises the scores (the reference, needed for ``return_att`` and talking heads);
``sdpa`` folds c2p + p2c into an additive bias for ``torch.nn.functional.scaled_dot_product_attention``;
``flash`` is a fused Triton kernel (:mod:`.flash_attention`) that never builds the L x L scores, used where it
applies (Triton on a GPU, c2p/p2c, self-attention with the standard relative positions and a padding mask) and
``sdpa`` elsewhere. ``auto`` is ``sdpa`` for now: ``flash`` is opt-in until its GPU checks have run on real hardware
(it has been verified through Triton's CPU interpreter only).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..choices import ATTENTION_BACKENDS
from .masks import kernel_masks
from .ops import StableDropout, XSoftmax
from .relative_position import build_relative_position, relative_position_columns


class DisentangledSelfAttention(nn.Module):
    """Disentangled self-attention module (see the module docstring for the formula).

    Args:
        config: a :class:`ModelConfig`.
    """

    def __init__(self, config):
        super().__init__()
        self.num_attention_heads = config.num_attention_heads
        self.attention_head_size = config.head_size
        self.all_head_size = self.num_attention_heads * self.attention_head_size
        hidden = config.hidden_size
        self.is_v2 = config.is_v2
        self.pos_att_type = list(config.pos_att_type)
        self.relative_attention = bool(config.relative_attention)
        self.share_att_key = bool(config.share_att_key) and self.is_v2
        self.position_buckets = config.position_buckets if self.is_v2 else -1
        self.max_relative_positions = config.max_relative_distance
        self.pos_ebd_size = config.relative_span
        self.attention_backend = getattr(config, "attention_backend", "auto") or "auto"
        wants_pos_key = "c2p" in self.pos_att_type or "p2p" in self.pos_att_type
        wants_pos_query = "p2c" in self.pos_att_type or "p2p" in self.pos_att_type

        if self.is_v2:
            self.query_proj = nn.Linear(hidden, self.all_head_size, bias=True)
            self.key_proj = nn.Linear(hidden, self.all_head_size, bias=True)
            self.value_proj = nn.Linear(hidden, self.all_head_size, bias=True)
            if self.relative_attention and not self.share_att_key:
                if wants_pos_key:
                    self.pos_key_proj = nn.Linear(hidden, self.all_head_size, bias=True)
                if wants_pos_query:
                    self.pos_query_proj = nn.Linear(hidden, self.all_head_size, bias=True)
            self._register_load_state_dict_pre_hook(self._convert_v1_state)
        else:
            self.in_proj = nn.Linear(hidden, self.all_head_size * 3, bias=False)
            self.q_bias = nn.Parameter(torch.zeros(self.all_head_size))
            self.v_bias = nn.Parameter(torch.zeros(self.all_head_size))
            if self.relative_attention:
                if wants_pos_key:
                    self.pos_proj = nn.Linear(hidden, self.all_head_size, bias=False)
                if wants_pos_query:
                    self.pos_q_proj = nn.Linear(hidden, self.all_head_size, bias=True)

        self.talking_head = bool(getattr(config, "talking_head", False))
        if self.talking_head:
            self.head_logits_proj = nn.Linear(self.num_attention_heads, self.num_attention_heads, bias=False)
            self.head_weights_proj = nn.Linear(self.num_attention_heads, self.num_attention_heads, bias=False)
        if self.relative_attention:
            self.pos_dropout = StableDropout(config.hidden_dropout_prob)
        self.dropout = StableDropout(config.attention_probs_dropout_prob)

    # ---- projections ----------------------------------------------------------------------------------
    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[..., L, heads*d] -> [..., heads, L, d]."""
        x = x.view(*x.shape[:-1], self.num_attention_heads, -1)
        return x.transpose(-3, -2)

    def _project_qkv(self, hidden_states, query_states):
        if self.is_v2:
            q_in = hidden_states if query_states is None else query_states
            return (self._heads(self.query_proj(q_in)), self._heads(self.key_proj(hidden_states)),
                    self._heads(self.value_proj(hidden_states)))
        if query_states is None:
            q, k, v = self._heads(self.in_proj(hidden_states)).chunk(3, dim=-1)
        else:
            w = self.in_proj.weight.view(self.num_attention_heads, 3, self.attention_head_size, -1)
            wq, wk, wv = (w[:, i].reshape(self.all_head_size, -1) for i in range(3))
            q = self._heads(F.linear(query_states, wq))
            k = self._heads(F.linear(hidden_states, wk))
            v = self._heads(F.linear(hidden_states, wv))
        q = q + self.q_bias.view(self.num_attention_heads, 1, -1)
        v = v + self.v_bias.view(self.num_attention_heads, 1, -1)
        return q, k, v

    def _project_positions(self, rel_embeddings):
        """Relative embeddings [2span, H] -> (pos_key, pos_query), each [heads, 2span, d] or None."""
        pos_key = pos_query = None
        if self.is_v2:
            key_layer = self.key_proj if self.share_att_key else getattr(self, "pos_key_proj", None)
            query_layer = self.query_proj if self.share_att_key else getattr(self, "pos_query_proj", None)
        else:
            key_layer, query_layer = getattr(self, "pos_proj", None), getattr(self, "pos_q_proj", None)
        if key_layer is not None and ("c2p" in self.pos_att_type or "p2p" in self.pos_att_type):
            pos_key = self._heads(key_layer(rel_embeddings))
        if query_layer is not None and ("p2c" in self.pos_att_type or "p2p" in self.pos_att_type):
            pos_query = self._heads(query_layer(rel_embeddings))
        return pos_key, pos_query

    # ---- the relative-position terms ------------------------------------------------------------------
    def relative_attention_bias(self, q_scaled, k, relative_pos, rel_embeddings, scale):
        """c2p + p2c (+ p2p) scores, ``[B, heads, Lq, Lk]``; ``q_scaled`` is already multiplied by ``scale``."""
        q_len, k_len = q_scaled.size(-2), k.size(-2)
        if relative_pos is None:
            relative_pos = build_relative_position(q_len, k_len, q_scaled.device, self.position_buckets,
                                                   self.max_relative_positions)
            # Only distances up to max(Lq, Lk) occur, so only that part of the table is projected.
            span = min(self.pos_ebd_size, max(q_len, k_len))
        else:
            span = self.pos_ebd_size
        if relative_pos.dim() == 2:
            relative_pos = relative_pos.unsqueeze(0)
        if relative_pos.dim() == 4:
            relative_pos = relative_pos.squeeze(1)
        if relative_pos.dim() != 3:
            raise ValueError(f"relative_pos must be [Lq, Lk], [B, Lq, Lk] or [B, 1, Lq, Lk], "
                             f"got {tuple(relative_pos.shape)}")
        rel_embeddings = self.pos_dropout(rel_embeddings[self.pos_ebd_size - span: self.pos_ebd_size + span])
        rel_embeddings = rel_embeddings.to(q_scaled.dtype)
        pos_key, pos_query = self._project_positions(rel_embeddings)
        idx = torch.clamp(relative_pos.long() + span, 0, 2 * span - 1).to(q_scaled.device).unsqueeze(1)
        batch_heads_shape = (q_scaled.size(0), q_scaled.size(1), q_len, k_len)
        idx = idx.expand(batch_heads_shape)

        score = 0
        if "c2p" in self.pos_att_type:
            c2p = torch.matmul(q_scaled, pos_key.transpose(-1, -2))  # [B, h, Lq, 2span]
            score = score + torch.gather(c2p, -1, idx)
        if "p2c" in self.pos_att_type or "p2p" in self.pos_att_type:
            pos_query = pos_query * scale
        if "p2c" in self.pos_att_type:
            p2c = torch.matmul(pos_query, k.transpose(-1, -2))  # [B, h, 2span, Lk]
            score = score + torch.gather(p2c, -2, idx)
        if "p2p" in self.pos_att_type:
            rows = torch.clamp(torch.arange(q_len, device=q_scaled.device) + span, max=2 * span - 1)
            p2p = torch.matmul(pos_query[:, rows], pos_key.transpose(-1, -2))  # [h, Lq, 2span]
            p2p = p2p.unsqueeze(0).expand(q_scaled.size(0), -1, -1, -1)
            score = score + torch.gather(p2p, -1, idx)
        return score

    # ---- forward ------------------------------------------------------------------------------------
    def _backend(self, return_att: bool) -> str:
        if return_att or self.talking_head:
            return "eager"
        return "sdpa" if self.attention_backend == "auto" else self.attention_backend

    def uses_fused_kernel(self, device: torch.device, self_attention: bool = True) -> bool:
        """Whether the fused kernel runs here: ``attention_backend=flash`` on a device it runs on, c2p + p2c
        self-attention with a supported head size (the EMD's query subsets go to sdpa)."""
        from . import flash_attention  # noqa: PLC0415

        return (self._backend(False) == "flash" and flash_attention.is_available(device) and self.relative_attention
                and self_attention and set(self.pos_att_type) == {"c2p", "p2c"}
                and self.attention_head_size in (16, 32, 64, 128))

    def _flash_masks(self, q, query_states, relative_pos, attention_mask):
        """(the ``[B, L]`` key mask, the ``[B, L]`` document ids or None) when the fused kernel applies, else None:
        it covers self-attention with the encoder's own relative positions and a padding or document mask (custom
        positions and other masks go to sdpa)."""
        if not self.uses_fused_kernel(q.device, query_states is None):
            return None
        length = q.size(-2)
        standard = build_relative_position(length, length, q.device, self.position_buckets,
                                           self.max_relative_positions)
        if relative_pos is not None and relative_pos is not standard and not torch.equal(relative_pos, standard):
            return None
        return kernel_masks(attention_mask)

    def forward(self, hidden_states, attention_mask, return_att=False, query_states=None, relative_pos=None,
                rel_embeddings=None):
        """Args:
            hidden_states: [B, Lk, H], the keys/values (and queries unless ``query_states`` is given).
            attention_mask: [B, Lq, Lk] or [B, 1, Lq, Lk]; element [i, j] = 1 if query i may attend to key j.
            return_att: also return the attention probabilities [B, heads, Lq, Lk].
            query_states: [B, Lq, H], the queries (EMD), default ``hidden_states``.
            relative_pos: [B or 1, Lq, Lk] relative positions (bucketed already for v2/v3); built if None.
            rel_embeddings: [2 * span, H] relative-position embeddings (required when relative attention is on).

        Returns the context [B, Lq, heads*d], or ``(context, attention_probs)`` when ``return_att``.
        """
        q, k, v = self._project_qkv(hidden_states, query_states)
        scale_factor = 1 + len(self.pos_att_type)
        scale = 1.0 / math.sqrt(self.attention_head_size * scale_factor)
        if attention_mask.dim() == 3:
            attention_mask = attention_mask.unsqueeze(1)
        attention_mask = attention_mask.to(torch.bool)

        if self.relative_attention and self.pos_att_type and rel_embeddings is None:
            raise ValueError("rel_embeddings is required when relative_attention is on")
        backend = self._backend(return_att)
        context = probs = None
        if backend == "flash":
            context = self._fused(q, k, v, query_states, relative_pos, attention_mask, rel_embeddings, scale)
        if context is None:
            bias = None
            if self.relative_attention and self.pos_att_type:
                bias = self.relative_attention_bias(q * scale, k, relative_pos, rel_embeddings, scale)
            if backend == "eager":
                context, probs = self._eager(q, k, v, bias, attention_mask, scale)
            else:
                context = self._sdpa(q, k, v, bias, attention_mask, scale)
        context = context.transpose(-3, -2).reshape(*context.shape[:-3], context.size(-2), self.all_head_size)
        return (context, probs) if return_att else context

    def _eager(self, q, k, v, bias, attention_mask, scale):
        scores = torch.matmul(q * scale, k.transpose(-1, -2))
        if bias is not None:
            scores = scores + bias
        if self.talking_head:
            scores = self.head_logits_proj(scores.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        probs = XSoftmax.apply(scores.float(), attention_mask, -1).to(v.dtype)
        probs_dropped = self.dropout(probs)
        if self.talking_head:
            probs_dropped = self.head_weights_proj(probs_dropped.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return torch.matmul(probs_dropped, v), probs

    # torch.compile (impl.compile) stops here and runs the fused kernel as it is: it is compiled code already
    # (Triton), and the masks it takes come from a side table the compiler cannot trace. Two graph breaks a layer.
    @torch.compiler.disable
    def _fused(self, q, k, v, query_states, relative_pos, attention_mask, rel_embeddings, scale):
        """The context from the fused kernel, or None where it does not apply (the caller then uses sdpa)."""
        masks = self._flash_masks(q, query_states, relative_pos, attention_mask)
        return None if masks is None else self._flash(q, k, v, *masks, rel_embeddings, scale)

    def _flash(self, q, k, v, key_mask, document_ids, rel_embeddings, scale):
        """The fused kernel with the tables of :mod:`.flash_attention`: ``c2p = (scale q) pos_key^T``,
        ``p2c^T = k (scale pos_query)^T`` and the table column of every relative distance."""
        from .flash_attention import flash_disentangled_attention  # noqa: PLC0415

        span = self.pos_ebd_size
        rel_embeddings = self.pos_dropout(rel_embeddings[:2 * span]).to(q.dtype)
        pos_key, pos_query = self._project_positions(rel_embeddings)
        c2p = torch.matmul(q * scale, pos_key.transpose(-1, -2))
        p2c_t = torch.matmul(k, (pos_query * scale).transpose(-1, -2))
        columns = relative_position_columns(q.size(-2), span, q.device, self.position_buckets,
                                            self.max_relative_positions)
        dropout = self.dropout.drop_prob if self.training else 0.0
        return flash_disentangled_attention(q, k, v, c2p, p2c_t, columns, key_mask, scale, dropout,
                                            document_ids=document_ids)

    def _sdpa(self, q, k, v, bias, attention_mask, scale):
        neg = torch.finfo(q.dtype).min
        mask_bias = torch.zeros(attention_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attention_mask, neg)
        bias = mask_bias if bias is None else bias + mask_bias
        dropout = self.dropout.drop_prob if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, scale=scale)
        # A query row with no valid key gives zeros, as XSoftmax does (SDPA would average all values).
        return out * attention_mask.any(-1, keepdim=True).to(out.dtype)

    # ---- loading v1 checkpoints into the v2 layout ----------------------------------------------------
    def _convert_v1_state(self, state_dict, prefix, *args, **kwargs):
        """Convert v1 release keys (``in_proj``, ``q_bias``...) to the v2 layout, as upstream's pre-load hook."""
        weight = state_dict.pop(prefix + "in_proj.weight", None)
        if weight is None:
            return
        hidden = weight.size(-1)
        q, k, v = weight.reshape(self.num_attention_heads, -1, hidden).chunk(3, dim=1)
        state_dict[prefix + "query_proj.weight"] = q.reshape(-1, hidden)
        state_dict[prefix + "key_proj.weight"] = k.reshape(-1, hidden)
        state_dict[prefix + "value_proj.weight"] = v.reshape(-1, hidden)
        state_dict[prefix + "query_proj.bias"] = state_dict.pop(prefix + "q_bias")
        state_dict[prefix + "value_proj.bias"] = state_dict.pop(prefix + "v_bias")
        state_dict[prefix + "key_proj.bias"] = torch.zeros_like(self.key_proj.bias)
        if prefix + "pos_proj.weight" in state_dict and hasattr(self, "pos_key_proj"):
            state_dict[prefix + "pos_key_proj.weight"] = state_dict.pop(prefix + "pos_proj.weight")
            state_dict[prefix + "pos_key_proj.bias"] = torch.zeros_like(self.pos_key_proj.bias)
        for name in ("weight", "bias"):
            if prefix + f"pos_q_proj.{name}" in state_dict and hasattr(self, "pos_query_proj"):
                state_dict[prefix + f"pos_query_proj.{name}"] = state_dict.pop(prefix + f"pos_q_proj.{name}")


def set_attention_backend(model: nn.Module, backend: str) -> nn.Module:
    """Select the attention backend (``eager``, ``sdpa``, ``flash`` or ``auto``) of every attention module."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend: unknown backend {backend!r}; allowed: {ATTENTION_BACKENDS}")
    for module in model.modules():
        if isinstance(module, DisentangledSelfAttention):
            module.attention_backend = backend
    return model

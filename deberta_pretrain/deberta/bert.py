"""Embeddings, transformer layers and the encoder stack (upstream ``DeBERTa/deberta/bert.py``), in reading order."""

from __future__ import annotations

import torch
from torch import nn

from .attention import DisentangledSelfAttention
from .masks import document_key_view, extended_attention_mask
from .ops import ACT2FN, MaskedLayerNorm, StableDropout, layer_norm_for
from .relative_position import build_relative_position


class BertEmbeddings(nn.Module):
    """word (+ absolute position if ``position_biased_input``) (+ token type) -> embed_proj? -> masked LayerNorm
    -> dropout. ``position_embeddings`` always exists (the release has it; the EMD uses it as its query)."""

    def __init__(self, config):
        super().__init__()
        self.embedding_size = config.embed_size
        self.word_embeddings = nn.Embedding(config.vocab_size, self.embedding_size, padding_idx=config.padding_idx)
        self.position_biased_input = bool(config.position_biased_input)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, self.embedding_size)
        if config.type_vocab_size > 0:
            self.token_type_embeddings = nn.Embedding(config.type_vocab_size, self.embedding_size)
        if self.embedding_size != config.hidden_size:
            self.embed_proj = nn.Linear(self.embedding_size, config.hidden_size, bias=False)
        self.LayerNorm = layer_norm_for(config, config.hidden_size)
        self.dropout = StableDropout(config.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings).unsqueeze(0),
                             persistent=False)

    def forward(self, input_ids, token_type_ids=None, position_ids=None, mask=None):
        seq_length = input_ids.size(1)
        if position_ids is None:
            if seq_length > self.position_ids.size(1):
                raise ValueError(f"sequence length {seq_length} exceeds max_position_embeddings "
                                 f"({self.position_ids.size(1)}); pass position_ids or raise max_position_embeddings")
            position_ids = self.position_ids[:, :seq_length]
        embeddings = self.word_embeddings(input_ids)
        position_embeddings = self.position_embeddings(position_ids.long())
        if self.position_biased_input:
            embeddings = embeddings + position_embeddings
        if hasattr(self, "token_type_embeddings"):
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        if hasattr(self, "embed_proj"):
            embeddings = self.embed_proj(embeddings)
        embeddings = MaskedLayerNorm(self.LayerNorm, embeddings, mask)
        return {"embeddings": self.dropout(embeddings), "position_embeddings": position_embeddings}


class BertSelfOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = layer_norm_for(config, config.hidden_size)
        self.dropout = StableDropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_states):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_states)


class BertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = DisentangledSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(self, hidden_states, attention_mask, return_att=False, query_states=None, relative_pos=None,
                rel_embeddings=None):
        out = self.self(hidden_states, attention_mask, return_att=return_att, query_states=query_states,
                        relative_pos=relative_pos, rel_embeddings=rel_embeddings)
        context, probs = out if return_att else (out, None)
        residual = hidden_states if query_states is None else query_states
        attention_output = self.output(context, residual)
        return (attention_output, probs) if return_att else attention_output


class BertIntermediate(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states):
        return self.intermediate_act_fn(self.dense(hidden_states))


class BertOutput(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = layer_norm_for(config, config.hidden_size)
        self.dropout = StableDropout(config.hidden_dropout_prob)

    def forward(self, hidden_states, input_states):
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_states)


class BertLayer(nn.Module):
    """Attention -> feed-forward, each with a residual and a post-LayerNorm."""

    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, hidden_states, attention_mask, return_att=False, query_states=None, relative_pos=None,
                rel_embeddings=None):
        out = self.attention(hidden_states, attention_mask, return_att=return_att, query_states=query_states,
                             relative_pos=relative_pos, rel_embeddings=rel_embeddings)
        attention_output, probs = out if return_att else (out, None)
        layer_output = self.output(self.intermediate(attention_output), attention_output)
        return (layer_output, probs) if return_att else layer_output


class ConvLayer(nn.Module):
    """v2 xlarge/xxlarge: a 1-D convolution over the embeddings added to the first layer's output."""

    def __init__(self, config):
        super().__init__()
        kernel_size = config.conv_kernel_size
        self.conv = nn.Conv1d(config.hidden_size, config.hidden_size, kernel_size, padding=(kernel_size - 1) // 2,
                              groups=config.conv_groups)
        self.LayerNorm = layer_norm_for(config, config.hidden_size)
        self.dropout = StableDropout(config.hidden_dropout_prob)
        self.conv_act = ACT2FN[config.conv_act]

    def forward(self, hidden_states, residual_states, input_mask):
        out = self.conv(hidden_states.permute(0, 2, 1)).permute(0, 2, 1)
        out = out.masked_fill(~input_mask.to(torch.bool).unsqueeze(-1), 0)
        out = self.conv_act(self.dropout(out))
        return MaskedLayerNorm(self.LayerNorm, residual_states + out, input_mask)


class BertEncoder(nn.Module):
    """Modified BertEncoder with relative position bias support: the layer stack, the relative-position
    embedding table (``2 * span`` rows, LayerNorm-ed in v3) and the optional conv layer."""

    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])
        self.relative_attention = bool(config.relative_attention)
        self.position_buckets = config.position_buckets if config.is_v2 else -1
        self.max_relative_positions = config.max_relative_distance
        if self.relative_attention:
            self.rel_embeddings = nn.Embedding(config.relative_span * 2, config.hidden_size)
        self.norm_rel_ebd = [x.strip() for x in str(config.norm_rel_ebd).lower().split("|")]
        if "layer_norm" in self.norm_rel_ebd:
            self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        if (config.conv_kernel_size or 0) > 0:
            self.conv = ConvLayer(config)
        self.gradient_checkpointing = False

    def get_rel_embedding(self):
        if not self.relative_attention:
            return None
        rel_embeddings = self.rel_embeddings.weight
        if "layer_norm" in self.norm_rel_ebd:
            rel_embeddings = self.LayerNorm(rel_embeddings)
        return rel_embeddings

    def get_attention_mask(self, attention_mask, document_ids=None, fused: bool = False):
        """The [B, 1, L, L] boolean mask the layers take. ``fused``: every layer runs the fused kernel, which reads
        the [B, L] key mask (and document ids) remembered with the mask; with documents the mask is then a
        key-mask view that allocates no L x L tensor."""
        if fused and document_ids is not None and attention_mask.dim() <= 2:
            return document_key_view(attention_mask, document_ids)
        return extended_attention_mask(attention_mask, document_ids, remember=fused)

    def uses_fused_kernel(self, device, query_states=None, relative_pos=None) -> bool:
        """Whether every layer runs the fused attention kernel on this input (see
        ``DisentangledSelfAttention.uses_fused_kernel``): self-attention with the encoder's own positions."""
        return (query_states is None and relative_pos is None and len(self.layer) > 0
                and self.layer[0].attention.self.uses_fused_kernel(device))

    def get_rel_pos(self, hidden_states, query_states=None, relative_pos=None):
        if self.relative_attention and relative_pos is None:
            q_len = (query_states if query_states is not None else hidden_states).size(-2)
            relative_pos = build_relative_position(q_len, hidden_states.size(-2), hidden_states.device,
                                                   self.position_buckets, self.max_relative_positions)
        return relative_pos

    def forward(self, hidden_states, attention_mask, output_all_encoded_layers=True, return_att=False,
                query_states=None, relative_pos=None, document_ids=None):
        """Returns ``{"hidden_states": [layer outputs], "attention_probs": [per layer, if return_att]}``.
        ``document_ids`` ([B, L], with a 2-D ``attention_mask``): tokens attend only within their document."""
        input_mask = attention_mask if attention_mask.dim() <= 2 else (attention_mask.sum(-2) > 0)
        fused = not return_att and self.uses_fused_kernel(hidden_states.device, query_states, relative_pos)
        attention_mask = self.get_attention_mask(attention_mask, document_ids, fused)
        relative_pos = self.get_rel_pos(hidden_states, query_states, relative_pos)
        rel_embeddings = self.get_rel_embedding()
        all_layers, all_probs = [], []
        next_kv = hidden_states
        for i, layer in enumerate(self.layer):
            args = (next_kv, attention_mask, return_att, query_states, relative_pos, rel_embeddings)
            if self.gradient_checkpointing and self.training:
                out = torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
            else:
                out = layer(*args)
            output_states, probs = out if return_att else (out, None)
            if i == 0 and hasattr(self, "conv"):
                output_states = self.conv(hidden_states, output_states, input_mask)
            if query_states is not None:
                query_states = output_states
            else:
                next_kv = output_states
            if output_all_encoded_layers or i == len(self.layer) - 1:
                all_layers.append(output_states)
            if return_att:
                all_probs.append(probs)
        return {"hidden_states": all_layers, "attention_probs": all_probs}

"""Replaced-token detection (ELECTRA-style, as DeBERTa-v3) with gradient-disentangled embedding sharing (GDES).

A generator (a :class:`MaskedLanguageModel`, usually half the discriminator's depth) fills the masked positions with
tokens sampled from its softmax; the discriminator (:class:`ReplacedTokenDetectionModel`) tells, for every token,
whether it was replaced. Release names: the discriminator is ``deberta.*`` + ``mask_predictions.{dense, LayerNorm,
classifier}``; the generator is an ordinary MLM (``deberta.*`` + ``lm_predictions.lm_head.*``).

Embedding sharing (upstream's ``embedding_sharing``):

* ``gdes``: the discriminator's word and position tables are the generator's, *detached*, plus a delta of its own
  (``..._weight``, zero at start). RTD gradients reach only the delta; the generator's tables learn from MLM only.
* ``es``: the discriminator reads the generator's tables directly (RTD gradients flow into them).
  A discriminator without absolute positions in its input (``position_biased_input: false``, v3) reads the
  generator's position table as is under both (it only ever appears in exports).
* ``none``: separate tables.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..choices import EMBEDDING_SHARING
from .deberta import DeBERTa
from .mlm import MaskedLanguageModel
from .nnmodule import NNModule
from .ops import ACT2FN

SHARED_TABLES = ("word_embeddings", "position_embeddings")


def document_starts(document_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] document ids (constant along each document) -> [B, L] the position where each token's document
    starts."""
    columns = torch.arange(document_ids.size(1), device=document_ids.device).expand_as(document_ids)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    return torch.cummax(torch.where(starts, columns, 0), dim=1).values


class LMMaskPredictionHead(nn.Module):
    """Upstream's RTD head: ``classifier(act(dense(LayerNorm(H + H[:, 0]))))``, one logit per token (the [CLS] state
    is added to every position; no LayerNorm after the activation). With packed documents each token gets its own
    document's first state instead, so that no document sees another one's."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.classifier = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden_states, document_ids=None):
        if document_ids is None:
            context = hidden_states[:, :1, :]
        else:
            starts = document_starts(document_ids).unsqueeze(-1).expand(-1, -1, hidden_states.size(-1))
            context = torch.gather(hidden_states, 1, starts)
        states = self.transform_act_fn(self.dense(self.LayerNorm(hidden_states + context)))
        return self.classifier(states).squeeze(-1)


class ReplacedTokenDetectionModel(NNModule):
    """The DeBERTa-v3 discriminator: the encoder plus a per-token "replaced?" logit."""

    def __init__(self, config, *args, **kwargs):
        super().__init__(config)
        self.deberta = DeBERTa(config)
        self.config = self.deberta.config
        self.mask_predictions = LMMaskPredictionHead(self.config)
        self.apply(self.init_weights)

    def forward(self, input_ids, input_mask=None, labels=None, position_ids=None, attention_mask=None,
                token_type_ids=None, document_ids=None):
        """``labels``: [B, L], 1 where the token was replaced; ``document_ids``: optional [B, L] ids of packed
        documents (see ``MaskedLanguageModel``). Returns ``logits`` [B, L] and, with labels, ``loss``: binary
        cross-entropy averaged over every token of ``input_mask`` ([CLS] and [SEP] included, as upstream)."""
        mask = attention_mask if attention_mask is not None else input_mask
        encoded = self.deberta.encode(input_ids, mask, token_type_ids, position_ids, document_ids=document_ids)
        logits = self.mask_predictions(encoded["hidden_states"][-1], document_ids)
        out = {"logits": logits}
        if labels is not None:
            tokens = (input_mask if input_mask is not None else torch.ones_like(input_ids)).to(logits.dtype)
            per_token = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none")
            out["loss"] = (per_token * tokens).sum() / tokens.sum().clamp(min=1)
        return out


class SharedEmbedding(nn.Module):
    """An embedding table read from another model's ``nn.Embedding``: detached plus a delta ``_weight`` (GDES), or
    as is (ES). The source is held outside the module tree, so its weight is saved once, under the generator."""

    def __init__(self, source: nn.Embedding, mode: str):
        super().__init__()
        if mode not in ("gdes", "es"):
            raise ValueError(f"embedding sharing must be gdes or es, got {mode!r}")
        self.mode, self.padding_idx = mode, source.padding_idx
        self._source = (source,)  # a tuple: not registered as a submodule
        if mode == "gdes":
            self._weight = nn.Parameter(torch.zeros_like(source.weight))

    @property
    def weight(self) -> torch.Tensor:
        source = self._source[0].weight
        return source.detach() + self._weight if self.mode == "gdes" else source

    def forward(self, ids):
        return F.embedding(ids, self.weight, self.padding_idx)


def share_embeddings(generator: MaskedLanguageModel, discriminator: ReplacedTokenDetectionModel, mode: str) -> None:
    """Replace the discriminator's word and position tables by views of the generator's (``mode``: gdes or es;
    ``none`` leaves them separate)."""
    if mode not in EMBEDDING_SHARING:
        raise ValueError(f"rtd.embedding_sharing: {mode!r} is not one of {EMBEDDING_SHARING}")
    if mode == "none":
        return
    for name in SHARED_TABLES:
        # a discriminator that never reads absolute positions gets no delta for them (an unused parameter)
        table_mode = "es" if name == "position_embeddings" and not discriminator.config.position_biased_input \
            else mode
        source = getattr(generator.deberta.embeddings, name)
        target = getattr(discriminator.deberta.embeddings, name)
        if source.weight.shape != target.weight.shape:
            raise ValueError(f"rtd.embedding_sharing={mode} needs the generator's {name} table to have the "
                             f"discriminator's shape: {tuple(source.weight.shape)} != {tuple(target.weight.shape)} "
                             f"(rtd.generator must keep the width and vocabulary)")
        setattr(discriminator.deberta.embeddings, name, SharedEmbedding(source, table_mode))


def sample_replacements(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """One draw per row of ``softmax(logits / temperature)`` ([N, V]) by inverting its cumulative distribution at
    ``uniforms`` ([N], in [0, 1)): the randomness comes with the batch (drawn per sample by the collator), so the
    draws do not depend on the device, the world size or where a run resumed."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    cumulative = torch.cumsum(probs, dim=-1)
    picked = torch.searchsorted(cumulative, (uniforms.float() * cumulative[:, -1]).unsqueeze(-1))
    return picked.squeeze(-1).clamp(max=logits.size(-1) - 1)


# The per-batch statistics RTDModel reports, as one tensor (summed over micro-batches and ranks): counts, then
# histograms of the discriminator's probability over AUC_BINS equal bins for replaced and original tokens.
AUC_BINS = 100
RTD_STATS = ("loss", "generator_loss_sum", "generator_predictions", "generator_correct", "discriminator_loss_sum",
             "tokens", "discriminator_correct", "true_positives", "predicted_positives", "replaced") + tuple(
    f"{kind}_bin_{i}" for kind in ("replaced", "original") for i in range(AUC_BINS))


def score_histograms(logits: torch.Tensor, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Counts of sigmoid(logits) in :data:`AUC_BINS` equal bins, for replaced then original tokens: [2 * bins],
    with static shapes (no read-back)."""
    bins = (torch.sigmoid(logits.float()) * AUC_BINS).long().clamp(0, AUC_BINS - 1)
    index = bins + AUC_BINS * (~labels).long()
    return torch.zeros(2 * AUC_BINS, device=logits.device).scatter_add_(0, index.flatten(), tokens.float().flatten())


def auc_from_histograms(replaced, original) -> float:
    """P(score of a replaced token > score of an original one), ties within a bin counted half (ROC AUC)."""
    below, area = 0.0, 0.0
    for positives, negatives in zip(replaced, original):
        area += positives * (below + 0.5 * negatives)
        below += negatives
    total = sum(replaced) * sum(original)
    return area / total if total else 0.5


class RTDModel(nn.Module):
    """Generator + discriminator trained jointly: ``loss = MLM(generator) + rtd_lambda * BCE(discriminator)``.

    With GDES the two terms touch disjoint parameters (sampling and the shared tables are detached), so one
    optimizer over both equals upstream's decoupled G/D steps, except that gradient clipping sees both.
    """

    def __init__(self, generator: MaskedLanguageModel, discriminator: ReplacedTokenDetectionModel,
                 embedding_sharing: str = "gdes", rtd_lambda: float = 10.0, temperature: float = 1.0):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.embedding_sharing, self.rtd_lambda, self.temperature = embedding_sharing, rtd_lambda, temperature
        share_embeddings(generator, discriminator, embedding_sharing)

    def forward(self, input_ids, input_mask, labels, sample_uniforms, max_predictions: int, position_ids=None,
                attention_mask=None, document_ids=None):
        """``labels`` as for the MLM (original ids at masked positions), ``sample_uniforms`` [B, max_predictions]
        in [0, 1). Returns ``loss``, its two terms ``generator_loss`` and ``discriminator_loss``, ``stats`` (a float
        tensor ordered as :data:`RTD_STATS`), the discriminator's input ``replaced_ids``, ``logits`` [B, L] and
        ``rtd_labels``."""
        gen = self.generator(input_ids, input_mask, labels, position_ids, attention_mask,
                             max_predictions=max_predictions, document_ids=document_ids)
        positions, valid = gen["positions"], gen["valid"]
        with torch.no_grad():
            sampled = sample_replacements(gen["logits"].detach(), sample_uniforms.flatten(), self.temperature)
            current = torch.gather(input_ids, 1, positions)
            replaced_ids = input_ids.scatter(1, positions, torch.where(valid, sampled.view_as(positions), current))
            rtd_labels = (labels > 0) & (replaced_ids != labels)
        disc = self.discriminator(replaced_ids, input_mask, rtd_labels, position_ids, attention_mask,
                                  document_ids=document_ids)
        loss = gen["loss"] + self.rtd_lambda * disc["loss"]
        with torch.no_grad():
            tokens = input_mask.bool()
            predicted = (disc["logits"] > 0) & tokens
            stats = torch.stack([
                loss.detach().float(), gen["loss"].detach().float() * gen["num_predictions"],
                gen["num_predictions"].float(), gen["num_correct"].float(),
                disc["loss"].detach().float() * tokens.sum(), tokens.sum().float(),
                ((predicted == rtd_labels) & tokens).sum().float(), (predicted & rtd_labels).sum().float(),
                predicted.sum().float(), rtd_labels.sum().float()])
            stats = torch.cat([stats, score_histograms(disc["logits"].detach(), rtd_labels, tokens)])
        return {"loss": loss, "stats": stats, "logits": disc["logits"], "rtd_labels": rtd_labels,
                "replaced_ids": replaced_ids, "generator_loss": gen["loss"], "discriminator_loss": disc["loss"]}


def merged_tables(state: dict, generator_prefix: str = "generator.",
                  discriminator_prefix: str = "discriminator.") -> tuple[dict, dict]:
    """Split an :class:`RTDModel` state into (discriminator, generator) states under release names, each standing
    alone: a shared table is written whole into the discriminator (generator table + delta under GDES, the
    generator's under ES) and the ``_weight`` delta dropped; tables of its own (no sharing) pass unchanged."""
    generator = {k[len(generator_prefix):]: v for k, v in state.items() if k.startswith(generator_prefix)}
    discriminator = {k[len(discriminator_prefix):]: v for k, v in state.items() if k.startswith(discriminator_prefix)}
    for name in SHARED_TABLES:
        key = f"deberta.embeddings.{name}"
        delta = discriminator.pop(f"{key}._weight", None)
        if delta is not None:
            discriminator[f"{key}.weight"] = generator[f"{key}.weight"] + delta
        elif f"{key}.weight" not in discriminator:
            discriminator[f"{key}.weight"] = generator[f"{key}.weight"].clone()
    return discriminator, generator


def gdes_delta_from(discriminator_state: dict, generator_state: dict, deltas=SHARED_TABLES) -> dict:
    """A released or exported discriminator state -> the state of a GDES discriminator over the given generator:
    a stored delta (``..._weight``, upstream's own checkpoints) is kept; otherwise the delta is the merged table
    minus the generator's, so that the discriminator starts with the embeddings it was saved with. ``deltas``: the
    tables the discriminator keeps a delta of. (A merged
    ``weight`` saved next to a delta lags it by one step upstream, so the delta wins.)"""
    out = dict(discriminator_state)
    for name in SHARED_TABLES:
        key = f"deberta.embeddings.{name}"
        if name not in deltas:  # read from the generator as is: the stored table has no place
            out.pop(f"{key}.weight", None), out.pop(f"{key}._weight", None)
            continue
        merged, delta = out.pop(f"{key}.weight", None), out.get(f"{key}._weight")
        base = generator_state.get(f"{key}.weight")
        if delta is None and merged is not None and base is not None and base.shape == merged.shape:
            out[f"{key}._weight"] = merged.float() - base.float()
    return out

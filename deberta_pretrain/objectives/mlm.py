"""Masked language modelling (DeBERTa v1's recipe): the MLM head predicts the masked tokens."""

from __future__ import annotations

import math

from ..data.masking import MLMCollator, default_max_predictions
from ..deberta import MaskedLanguageModel, flops
from .base import Objective, ratio, stat_vector, uses_emd


def mlm_collator(cfg, tokenizer, seed: int) -> MLMCollator:
    """The masking of ``cfg.data`` over ``tokenizer``'s vocabulary."""
    tok = tokenizer
    continuation = tok.word_continuation_table() if cfg.data.masking != "token" else None
    return MLMCollator(tok.vocab_size, tok.mask_token_id, tok.pad_token_id,
                       [tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.unk_token_id, tok.mask_token_id],
                       seed, cfg.data.masking, cfg.data.mask_prob, cfg.data.max_predictions,
                       cfg.data.mask_token_prob, cfg.data.random_token_prob, cfg.data.max_ngram, continuation,
                       cfg.data.document_attention, tok.sep_token_id)


def max_predictions(cfg, length: int) -> int:
    """The masking cap per block, which also sizes the sparse head's static slots."""
    return cfg.data.max_predictions or default_max_predictions(length, cfg.data.mask_prob)


class MLMObjective(Objective):
    """Cross-entropy on the masked tokens; the train loss is the mean over micro-batches, the validation loss is
    token-weighted."""

    name = "mlm"
    stat_names = ("loss", "micro_batches", "loss_sum", "predictions", "correct", "tokens")

    def __init__(self, cfg, model_config, tokenizer, length: int = 512, initial_state=None, generator=None):
        if generator is not None:
            raise ValueError("objective=mlm has no generator (rtd.init_generator is for objective=rtd)")
        super().__init__(cfg, model_config, tokenizer, initial_state)
        self.max_predictions = max_predictions(cfg, length)

    def new_model(self):
        return MaskedLanguageModel(self.model_config, use_emd=uses_emd(self.cfg, self.model_config))

    def collator(self, seed):
        return mlm_collator(self.cfg, self.tokenizer, seed)

    def forward(self, engine, batch):
        out = engine(**batch, max_predictions=self.max_predictions)
        loss, count = out["loss"], out["num_predictions"]
        return loss, stat_vector(loss, 1.0, loss * count, count, out["num_correct"], batch["input_mask"].sum())

    def summarize(self, totals, split):
        if split == "train":
            return {"loss": ratio(totals["loss"], totals["micro_batches"]),
                    "accuracy": ratio(totals["correct"], totals["predictions"])}
        loss = ratio(totals["loss_sum"], totals["predictions"])
        return {"loss": loss, "accuracy": ratio(totals["correct"], totals["predictions"]),
                "perplexity": math.exp(min(loss, 50.0)), "predictions": int(totals["predictions"])}

    def flops_per_token(self, length, tokens_per_step):
        return flops.flops_per_token(self.model_config, length, self.cfg.data.mask_prob,
                                       uses_emd(self.cfg, self.model_config), tokens_per_step)

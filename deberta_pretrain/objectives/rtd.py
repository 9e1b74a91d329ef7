"""Replaced-token detection with gradient-disentangled embedding sharing (DeBERTa-v3's recipe).

The generator predicts the masked tokens (MLM); its samples fill them in; the discriminator labels every token
replaced or original. ``loss = generator MLM + rtd.lambda x discriminator BCE``. See ``deberta_pretrain.deberta.rtd``
for the model and the embedding sharing.
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf

from ..deberta import MaskedLanguageModel, ModelConfig, flops
from ..deberta.nnmodule import report_load_result
from ..deberta.rtd import (AUC_BINS, RTD_STATS, ReplacedTokenDetectionModel, RTDModel, auc_from_histograms,
                           gdes_delta_from)
from .base import Objective, ratio, uses_emd
from .mlm import max_predictions, mlm_collator


def generator_config(cfg, discriminator: ModelConfig) -> ModelConfig:
    """The discriminator's config with half its depth (upstream's recipes), then every ``rtd.generator.*`` key."""
    fields = discriminator.to_dict()
    fields["num_hidden_layers"] = max(1, discriminator.num_hidden_layers // 2)
    overrides = OmegaConf.to_container(cfg.rtd.generator, resolve=True) if cfg.rtd.generator else {}
    unknown = sorted(set(overrides) - set(fields) - set(ModelConfig().to_dict()))
    if unknown:
        raise ValueError(f"rtd.generator: unknown model keys {unknown}")
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return ModelConfig.from_dict(fields).validate()


class RTDCollator:
    """The MLM masking of the data config (the rtd objective's defaults: every chosen token becomes [MASK]) plus
    one uniform number per prediction slot for sampling, drawn from the sample's key like the masks."""

    def __init__(self, mlm_collator, slots: int, seed: int):
        self.mlm_collator, self.slots, self.seed = mlm_collator, slots, seed

    def __call__(self, items):
        batch = self.mlm_collator(items)
        uniforms = [np.random.default_rng([self.seed, *key, 1]).random(self.slots) for key, _ in items]
        batch["sample_uniforms"] = torch.from_numpy(np.stack(uniforms).astype(np.float32))
        return batch


class RTDObjective(Objective):
    """Generator + discriminator as one model (:class:`RTDModel`); the train loss is the mean of the micro-batch
    losses, the validation loss ``generator_loss + lambda x discriminator_loss`` with both token-weighted."""

    name = "rtd"
    stat_names = RTD_STATS + ("micro_batches",)
    progress_keys = ("generator_loss", "discriminator_accuracy")

    def __init__(self, cfg, model_config, tokenizer, length: int = 512, initial_state=None,
                 generator: tuple | None = None):
        super().__init__(cfg, model_config, tokenizer, initial_state)
        self.generator_state, self.generator_config = generator or (None, generator_config(cfg, model_config))
        self.max_predictions = max_predictions(cfg, length)
        if uses_emd(cfg, self.generator_config) and self.generator_config.num_hidden_layers < 2:
            raise ValueError(f"the generator has {self.generator_config.num_hidden_layers} layer, but its enhanced "
                             f"mask decoder needs 2; set rtd.generator.num_hidden_layers=2 (or more)")
        if cfg.rtd.embedding_sharing != "none":
            for key in ("embed_size", "vocab_size", "max_position_embeddings"):
                mine, theirs = getattr(self.generator_config, key), getattr(model_config, key)
                if mine != theirs:
                    raise ValueError(f"rtd.embedding_sharing={cfg.rtd.embedding_sharing} shares the embedding "
                                     f"tables: the generator's {key} ({mine}) must equal the discriminator's "
                                     f"({theirs}); change rtd.generator or use rtd.embedding_sharing=none")

    def new_model(self):
        cfg = self.cfg
        generator = MaskedLanguageModel(self.generator_config, use_emd=uses_emd(cfg, self.generator_config))
        discriminator = ReplacedTokenDetectionModel(self.model_config)
        return RTDModel(generator, discriminator, cfg.rtd.embedding_sharing, cfg.rtd["lambda"], cfg.rtd.temperature)

    def load_initial(self, model):
        """The generator from ``rtd.init_generator``, the discriminator from ``model.init_from``; under embedding
        sharing the discriminator's stored tables become deltas over the generator's (see ``gdes_delta_from``)."""
        sources = (("generator", self.generator_state, self.cfg.rtd.init_generator or self.cfg.model.init_from),
                   ("discriminator", self.initial_state, self.cfg.model.init_from))
        for part, state, source in sources:
            if state is None:
                continue
            module = getattr(model, part)
            if part == "discriminator" and self.cfg.rtd.embedding_sharing != "none":
                deltas = [name.split(".")[-2] for name, _ in module.named_parameters() if name.endswith("._weight")]
                state = gdes_delta_from(state, model.generator.state_dict(), deltas)
            report_load_result(module.load_state_dict(state, strict=False), f"{source} ({part})", strict=False)

    def model_configs(self):
        return {"model": self.model_config, "generator": self.generator_config}

    def config_key(self, name: str) -> str:
        return "model" if name == "model" else f"rtd.{name}"

    def param_rates(self):
        """``rtd.discriminator_lr``: the discriminator's own rate (its parameter groups: ``discriminator.*``)."""
        rate = self.cfg.rtd.discriminator_lr
        return {"discriminator.": rate} if rate else {}

    def collator(self, seed):
        return RTDCollator(mlm_collator(self.cfg, self.tokenizer, seed), self.max_predictions, seed)

    def forward(self, engine, batch):
        out = engine(**batch, max_predictions=self.max_predictions)
        return out["loss"], torch.cat([out["stats"].double(), out["stats"].new_ones(1, dtype=torch.float64)])

    def summarize(self, totals, split):
        t = totals
        generator_loss = ratio(t["generator_loss_sum"], t["generator_predictions"])
        discriminator_loss = ratio(t["discriminator_loss_sum"], t["tokens"])
        loss = (ratio(t["loss"], t["micro_batches"]) if split == "train"
                else generator_loss + self.cfg.rtd["lambda"] * discriminator_loss)
        return {"loss": loss, "generator_loss": generator_loss,
                "generator_accuracy": ratio(t["generator_correct"], t["generator_predictions"]),
                "discriminator_loss": discriminator_loss,
                "discriminator_accuracy": ratio(t["discriminator_correct"], t["tokens"]),
                "precision": ratio(t["true_positives"], t["predicted_positives"]),
                "recall": ratio(t["true_positives"], t["replaced"]),
                "replaced_fraction": ratio(t["replaced"], t["generator_predictions"]),
                "auc": auc_from_histograms([t[f"replaced_bin_{i}"] for i in range(AUC_BINS)],
                                           [t[f"original_bin_{i}"] for i in range(AUC_BINS)])}

    def flops_per_token(self, length, tokens_per_step):
        return flops.rtd_flops_per_token(self.generator_config, self.model_config, length, self.cfg.data.mask_prob,
                                   uses_emd(self.cfg, self.generator_config), tokens_per_step)

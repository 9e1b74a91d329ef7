"""What every pretraining objective provides to the trainer.

An objective owns its model(s), how a batch is made (a collator run in the data-loader workers), the loss, and the
statistics it reports. Statistics stay on the device as one tensor per micro-batch (ordered as ``stat_names``);
the trainer sums them and reads them once per log step, so a training step never waits for the host.
"""

from __future__ import annotations

import torch
from torch import nn

from ..deberta import set_attention_backend
from ..deberta.bert import BertEncoder
from ..deberta.nnmodule import report_load_result


class Objective:
    """Base class. Subclasses set ``name``, ``stat_names`` and ``progress_keys`` and implement :meth:`new_model`,
    :meth:`collator`, :meth:`forward`, :meth:`summarize` and :meth:`flops_per_token`."""

    name = ""
    stat_names: tuple[str, ...] = ()
    progress_keys: tuple[str, ...] = ()  # metrics shown next to the loss on the progress bar

    def __init__(self, cfg, model_config, tokenizer, initial_state: dict | None = None):
        self.cfg, self.model_config, self.tokenizer = cfg, model_config, tokenizer
        self.initial_state = initial_state

    # ---- the model ----------------------------------------------------------------------------------------
    def new_model(self) -> nn.Module:
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """A freshly initialised model (the caller seeds torch) with the initial weights loaded and the runtime
        switches applied."""
        model = self.new_model()
        self.load_initial(model)
        set_attention_backend(model, self.cfg.impl.attention_backend)
        for module in model.modules():
            if isinstance(module, BertEncoder):
                module.gradient_checkpointing = bool(self.cfg.impl.gradient_checkpointing)
        return model

    def load_initial(self, model: nn.Module) -> None:
        """Load the weights the run starts from (``model.init_from``), if any; missing and unexpected keys are
        logged."""
        if self.initial_state is not None:
            report_load_result(model.load_state_dict(self.initial_state, strict=False), self.cfg.model.init_from,
                               strict=False)

    def param_rates(self) -> dict:
        """{parameter-name prefix: learning rate} of parameters trained at their own rate (none by default)."""
        return {}

    def model_configs(self) -> dict:
        """The models' configs by name, written to the run directory (``layout.model_config_file``; ``model`` is
        the one exported as the model)."""
        return {"model": self.model_config}

    def config_key(self, name: str) -> str:
        """The config key that sets the model ``name`` of :meth:`model_configs`, for messages."""
        return name

    # ---- batches, loss, statistics ---------------------------------------------------------------------------
    def collator(self, seed: int):
        raise NotImplementedError

    def forward(self, engine, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, statistics) of one micro-batch; statistics: a float64 tensor on the device, one value per
        ``stat_names`` entry, summed over micro-batches and ranks by the trainer."""
        raise NotImplementedError

    def train_step(self, engine, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, backward and (at the accumulation boundary, DeepSpeed decides) the optimizer step."""
        loss, stats = self.forward(engine, batch)
        engine.backward(loss)
        engine.step()
        return loss.detach(), stats

    def summarize(self, totals: dict[str, float], split: str) -> dict:
        """Summed statistics -> the metrics logged for ``split`` (train or validation)."""
        raise NotImplementedError

    def flops_per_token(self, length: int, tokens_per_step: int) -> float:
        raise NotImplementedError


def uses_emd(cfg, model_config) -> bool:
    """``impl.use_emd``, or upstream's rule when it is null: EMD iff absolute positions are not in the input."""
    return cfg.impl.use_emd if cfg.impl.use_emd is not None else not model_config.position_biased_input


def stat_vector(*values) -> torch.Tensor:
    """Scalars (tensors or numbers) -> one float64 tensor on the device of the first tensor."""
    device = next(v.device for v in values if torch.is_tensor(v))
    return torch.stack([v.detach().to(torch.float64) if torch.is_tensor(v)
                        else torch.tensor(float(v), dtype=torch.float64, device=device) for v in values])


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0

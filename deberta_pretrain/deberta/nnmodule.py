"""``NNModule``: weight initialisation and loading of pretrained models for every model class."""

from __future__ import annotations

import logging

from torch import nn

from . import loading

logger = logging.getLogger(__name__)


def init_weights(module: nn.Module, initializer_range: float) -> None:
    """Linear and Embedding weights ~ N(0, initializer_range) (the padding row included, as upstream); Linear
    biases 0. LayerNorms keep their (1, 0) initialisation."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=initializer_range)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()


def report_load_result(result, source: str, strict: bool) -> None:
    """Warn about (or, with ``strict``, raise on) missing and unexpected keys, naming the source."""
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if not missing and not unexpected:
        return
    message = f"loading {source}: missing keys {missing}; unexpected keys {unexpected}"
    if strict:
        raise KeyError(message)
    logger.warning(message)


class NNModule(nn.Module):
    """Base class of our models: keeps the config, initialises weights N(0, ``config.initializer_range``) and
    loads pretrained models with :meth:`load_model`.

    Example::

        class MyModule(NNModule):
            def __init__(self, config):
                super().__init__(config)
                self.bert = DeBERTa(config)
                self.apply(self.init_weights)
    """

    def __init__(self, config, *inputs, **kwargs):
        super().__init__()
        self.config = config

    def init_weights(self, module: nn.Module) -> None:
        """Apply Gaussian(mean=0, std=``config.initializer_range``) initialisation to ``module``."""
        init_weights(module, self.config.initializer_range)

    @classmethod
    def load_model(cls, model_path, model_config=None, tag=None, no_cache=False, cache_dir=None, *inputs,
                   strict=False, sha256=None, **kwargs):
        """Instantiate ``cls`` from a pretrained model.

        Args:
            model_path: a weights file or a directory holding one, a release name (see
                :mod:`deberta_pretrain.deberta.release`), or ``None``/``"-"`` for a new model built from
                ``model_config``.
            model_config: path of a ``model_config.json`` (or a dict / :class:`ModelConfig`). Without it the config
                is taken from ``state['config']``, else from ``model_config.json`` beside the weights. When both
                exist, it overrides the checkpoint's values except the shape fields.
            tag, no_cache, cache_dir: release download options (release tag, no persistent cache, cache folder).
            strict: raise ``KeyError`` on missing/unexpected keys instead of logging a warning.
            sha256: expected hashes of downloaded release files, ``{"pytorch_model.bin": "...", ...}``.
        """
        user_config = loading.as_model_config(model_config)
        if model_path is None or model_path == "-":
            if user_config is None:
                raise ValueError("load_model(None): a new model needs model_config")
            return cls(user_config.validate(), *inputs, **kwargs)
        from .release import resolve_model_path  # noqa: PLC0415 (release imports requests lazily)

        weights_path = resolve_model_path(model_path, tag=tag, no_cache=no_cache, cache_dir=cache_dir, sha256=sha256)
        state, checkpoint_config = loading.load_model_state(weights_path)
        config = loading.merge_configs(checkpoint_config, user_config).validate()
        model = cls(config, *inputs, **kwargs)
        result = model.load_state_dict(state, strict=False)
        report_load_result(result, str(model_path), strict)
        return model

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

"""Export a pretraining checkpoint for the original DeBERTa code and for Hugging Face transformers.

    python launch/export.py checkpoint=outputs/base1 output=release/base1     # newest checkpoint, both formats
    python launch/export.py checkpoint=outputs/base1/checkpoints/step_00010000 output=release/base1-10k format=hf
    python launch/export.py checkpoint=outputs/base1 output=release/base1 format=release dtype=bf16 overwrite=true

format: release (pytorch_model.bin + model_config.json + the vocabulary), hf (config.json + model.safetensors +
tokenizer files), or all (both, in one directory; default). dtype: fp32 (default), bf16, fp16. An objective=rtd run
exports its discriminator to output/ and its generator to output/generator/. Every export carries its model card
(README.md, with the Hub's metadata; license=apache-2.0 states a license). The keys: conf/export.yaml
(``--help`` lists them).
"""

import os

import hydra
from omegaconf import DictConfig

from deberta_pretrain.cli import command_errors
from deberta_pretrain.config import check_tool_config, register_tool_configs

register_tool_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # consolidation runs on the CPU; no GPU needed
    from deberta_pretrain.export import export  # noqa: PLC0415

    with command_errors("interrupted: no export was written (a partial one is removed)"):
        check_tool_config(cfg, "export")
        out = export(cfg.checkpoint, cfg.output, cfg.format, cfg.dtype, cfg.overwrite, cfg.license)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

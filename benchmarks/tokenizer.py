"""Tokenizer throughput per core: our reference engine, our fast engine (GPT2Tokenizer.encode_batch, model ids),
the seed API's ``tokenize()`` (token strings) of GPT2Tokenizer and of SPMTokenizer (a SentencePiece unigram model
trained on the same text first), and tiktoken's own GPT-2 encoding (built offline from OpenAI's files) as the
reference, on the same text, single-threaded.

    python benchmarks/tokenizer.py [--repeat 2] [--spm-pieces 4000]

Prints JSON: tokens/s of each, the ratios to tiktoken (goal >= 0.8 for the fast engine and both ``tokenize()``) and
whether all ids agree.
"""

import argparse
import json
import tempfile

from common import best_time, machine, python_help_documents

from deberta_pretrain.data.vocab_training import train_spm
from deberta_pretrain.deberta import GPT2Tokenizer, SPMTokenizer
from deberta_pretrain.deberta.bpe import GPT2_PATTERN, ReferenceBPE, bytes_to_unicode


def official_tiktoken_gpt2(tokenizer: GPT2Tokenizer):
    """tiktoken's GPT-2 encoding from OpenAI's files: the same definition as tiktoken.get_encoding('gpt2')."""
    import tiktoken  # noqa: PLC0415

    byte_decoder = {v: k for k, v in bytes_to_unicode().items()}
    encoder = tokenizer.gpt2_encoder["encoder"]
    ranks = {bytes(byte_decoder[c] for c in token): rank for token, rank in encoder.items()
             if token != "<|endoftext|>"}
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2, help="copies of the python-help text")
    parser.add_argument("--spm-pieces", type=int, default=4000,
                        help="size of the SentencePiece vocabulary (python-help supports up to ~4600)")
    args = parser.parse_args()
    docs = python_help_documents(args.repeat)
    fast, reference = GPT2Tokenizer(engine="tiktoken"), GPT2Tokenizer(engine="reference")
    official = official_tiktoken_gpt2(fast)
    encoder, merges = fast.gpt2_encoder["encoder"], [tuple(m) for m in fast.gpt2_encoder["vocab"]]

    with tempfile.TemporaryDirectory() as tmp:
        spm = SPMTokenizer(train_spm(python_help_documents(1), args.spm_pieces, tmp, character_coverage=1.0,
                                     threads=1))
    official_ids = official.encode_ordinary_batch(docs, num_threads=1)
    num_tokens = sum(len(ids) for ids in official_ids)
    fast_ids = fast.encode_batch(docs)
    agree = all(list(fast._gpt2_to_id[o]) == list(f) for o, f in zip(official_ids, fast_ids))
    results = {"tiktoken_gpt2": best_time(lambda: official.encode_ordinary_batch(docs, num_threads=1)),
               "fast_engine": best_time(lambda: fast.encode_batch(docs)),
               "tiktoken_gpt2_per_document": best_time(lambda: [official.encode_ordinary(d) for d in docs]),
               "gpt2_tokenize": best_time(lambda: [fast.tokenize(d) for d in docs]),
               "spm_tokenize": best_time(lambda: [spm.tokenize(d) for d in docs]),
               # a fresh engine each time, so its word cache starts empty as in a real run
               "reference_engine": best_time(lambda: ReferenceBPE(encoder, merges).encode_batch(docs), repeats=1)}
    spm_tokens = sum(len(spm.tokenize(d)) for d in docs)
    reference_agree = [reference.encode(d) for d in docs[:40]] == [list(f) for f in fast_ids[:40]]
    print(json.dumps({
        "benchmark": "tokenizer", "machine": machine(),
        "settings": {"text": f"python-help x{args.repeat}", "documents": len(docs), "spm_pieces": args.spm_pieces,
                     "megabytes": round(sum(len(d.encode()) for d in docs) / 1e6, 3), "tokens": num_tokens,
                     "threads": 1},
        "tokens_per_s": {k: round((spm_tokens if k == "spm_tokenize" else num_tokens) / v)
                         for k, v in results.items()},
        "fast_vs_tiktoken": round(results["tiktoken_gpt2"] / results["fast_engine"], 3),
        # tokenize() takes one text: against tiktoken called the same way; per byte of text, since the two
        # vocabularies cut the same text into different numbers of tokens
        "gpt2_tokenize_vs_tiktoken": round(results["tiktoken_gpt2_per_document"] / results["gpt2_tokenize"], 3),
        "spm_tokenize_vs_tiktoken": round(results["tiktoken_gpt2_per_document"] / results["spm_tokenize"], 3),
        "reference_vs_tiktoken": round(results["tiktoken_gpt2"] / results["reference_engine"], 4),
        "ids_identical": {"fast_vs_tiktoken": agree, "reference_vs_fast_first_40_docs": reference_agree},
    }, indent=2))


if __name__ == "__main__":
    main()

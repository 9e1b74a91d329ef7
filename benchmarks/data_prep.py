"""Data-prep throughput end to end (text -> shards + manifest) and shard-reader random access.

    python benchmarks/data_prep.py [--repeat 4] [--num-proc 1 2] [--spm-pieces 32000]

Prints JSON: MB/s of input text per num_proc setting with GPT-2 BPE, the same with a SentencePiece vocabulary
(unigram, trained on the corpus first; goal: within 2x of GPT-2 per MB, ``spm_vs_gpt2``), and samples/s (and MB/s)
of random reads from the memory-mapped shards, against a plain in-memory numpy array of the same blocks.
"""

import argparse
import json
import os
import tempfile

import numpy as np

from common import best_time, machine

from deberta_pretrain.data import ShardedDataset
from deberta_pretrain.data.prepare import prepare
from deberta_pretrain.data.inputs import python_help_topics
from deberta_pretrain.data.vocab_training import train_spm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=4, help="copies of the python-help text in the corpus")
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--spm-pieces", type=int, default=4000,
                        help="size of the SentencePiece vocabulary (python-help supports up to ~4600)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, "corpus.txt")
        with open(corpus, "w", encoding="utf-8") as f:
            for copy in range(args.repeat):  # distinct documents per copy, one paragraph each
                for text in python_help_topics():
                    f.write(f"copy {copy}. " + text.replace("\n\n", "\n").strip() + "\n\n")
        megabytes = os.path.getsize(corpus) / 1e6
        spm_model = train_spm([python_help_topics()[i] for i in range(0, len(python_help_topics()))],
                              args.spm_pieces, tmp, character_coverage=1.0, threads=1)
        prep, prep_spm = {}, {}
        for vocab, results in ((None, prep), (spm_model, prep_spm)):
            for num_proc in args.num_proc:
                out = os.path.join(tmp, f"out{num_proc}" + ("-spm" if vocab else ""))

                def run(out=out, num_proc=num_proc, vocab=vocab):
                    prepare({"output": out, "input": {"type": "text", "paths": [corpus],
                                                       "doc_separator": "blank_line"},
                             "vocab": vocab, "engine": "auto", "max_seq_length": args.max_seq_length,
                             "packing": "continuous", "validation_fraction": 0.01, "segment_mb": 0.25,
                             "num_proc": num_proc, "overwrite": True}, progress=False)
                seconds = best_time(run, repeats=1)
                results[f"num_proc={num_proc}"] = {"seconds": round(seconds, 3),
                                                   "mb_per_s": round(megabytes / seconds, 3)}

        dataset = ShardedDataset(os.path.join(tmp, f"out{args.num_proc[0]}"), "train")
        in_memory = np.stack([dataset[i] for i in range(len(dataset))])
        order = np.random.default_rng(0).integers(0, len(dataset), size=20000)
        mapped = best_time(lambda: [dataset[i] for i in order])
        memory = best_time(lambda: [in_memory[i].astype(np.int64) for i in order])
        block_mb = args.max_seq_length * dataset.dtype.itemsize / 1e6
        print(json.dumps({
            "benchmark": "data_prep", "machine": machine(),
            "settings": {"text": f"python-help x{args.repeat} (text input, blank-line documents)",
                         "megabytes": round(megabytes, 3), "max_seq_length": args.max_seq_length,
                         "spm_pieces": args.spm_pieces,
                         "train_blocks": len(dataset), "random_reads": len(order)},
            "prepare": prep,
            "prepare_spm": prep_spm,
            "spm_vs_gpt2": {k: round(prep_spm[k]["mb_per_s"] / prep[k]["mb_per_s"], 3) for k in prep},
            "reader": {"samples_per_s": round(len(order) / mapped),
                       "mb_per_s": round(len(order) * block_mb / mapped, 1),
                       "in_memory_samples_per_s": round(len(order) / memory),
                       "ratio_to_in_memory": round(memory / mapped, 3)},
        }, indent=2))


if __name__ == "__main__":
    main()

"""Does document attention help? Two equal runs on a corpus of short documents packed into blocks, one with
``data.document_attention=true`` and one with full-block attention, compared on what an encoder is used for: the
masked-token loss of each validation document encoded alone (a packed row with document attention is exactly that;
tests/test_document_attention.py). Also the full-block loss of both, for what packing-aware training gives up.

    python benchmarks/document_attention.py [--steps 300] [--length 128] [--out outputs/doc-attention]

Prints one JSON object: the machine, the settings, per run the validation loss and accuracy of documents alone and
of packed blocks with full attention, and the differences. Runs on CPU in a few minutes (tiny model, fp32).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys

import torch

from common import machine
from deberta_pretrain.data.masking import MLMCollator, default_max_predictions
from deberta_pretrain.data.prepare import prepare
from deberta_pretrain.data.shards import ShardedDataset
from deberta_pretrain.data.inputs import python_help_topics
from deberta_pretrain.deberta import MaskedLanguageModel, ModelConfig
from deberta_pretrain.deberta.vocabulary import load_tokenizer
from deberta_pretrain.training.checkpoint import consolidated_state_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def short_documents(folder: str, length: int) -> str:
    """The Python help topics cut into paragraphs (one document each: tens of tokens, several per block),
    prepared in blocks of ``length`` tokens with 10 % held out."""
    text = os.path.join(folder, "paragraphs.txt")
    with open(text, "w", encoding="utf-8") as f:
        for topic in python_help_topics():
            f.write(topic.strip() + "\n\n")
    out = os.path.join(folder, "data")
    if not os.path.exists(os.path.join(out, "manifest.json")):
        prepare({"output": out, "input": {"type": "text", "paths": [text], "doc_separator": "blank_line"},
                 "vocab": None, "engine": "auto", "max_seq_length": length, "packing": "continuous",
                 "validation_fraction": 0.1, "segment_mb": 1, "num_proc": 1, "overwrite": False}, progress=False)
    return out


def train(data: str, out: str, name: str, steps: int, documents: bool, seed: int) -> str:
    overrides = {"name": name, "output_root": out, "data.path": data, "model": "tiny", "precision": "fp32",
                 "seed": seed, "train.max_steps": steps, "train.global_batch_size": 16, "train.micro_batch_size": 16,
                 "train.checkpoint_every": steps, "train.eval_every": steps, "train.eval_samples": 64,
                 "optim.lr": 1e-3, "optim.warmup_steps": steps // 10, "data.document_attention": documents,
                 "logging.wandb.mode": "disabled", "logging.progress_bar": False}
    env = dict(os.environ, DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"), WANDB_MODE="disabled")
    subprocess.run([sys.executable, os.path.join(ROOT, "launch", "pretrain.py"),
                    *(f"{k}={v}" for k, v in overrides.items())], check=True, cwd=ROOT, env=env,
                   stdout=sys.stderr)  # this script's standard output is its JSON alone
    return os.path.join(out, name)


def validation_figures(run_dir: str, data: str, steps: int, blocks: int) -> dict:
    """The run's last checkpoint on the first ``blocks`` validation blocks (fixed masks): as separate documents
    and as whole blocks."""
    config = ModelConfig.from_json_file(os.path.join(run_dir, "model_config.json"))
    model = MaskedLanguageModel(config).eval()
    model.load_state_dict(consolidated_state_dict(os.path.join(run_dir, "checkpoints"), f"step_{steps:08d}"),
                          strict=False)
    tokenizer = load_tokenizer(os.path.join(data, "bpe_encoder.bin"))
    validation = ShardedDataset(data, "validation", verify="size")
    special = [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id,
               tokenizer.mask_token_id]
    figures = {}
    for view, documents in (("documents_alone", True), ("full_block", False)):
        collator = MLMCollator(tokenizer.vocab_size, tokenizer.mask_token_id, tokenizer.pad_token_id, special, seed=1,
                               document_attention=documents, sep_id=tokenizer.sep_token_id)
        loss_sum = correct = count = 0.0
        with torch.no_grad():
            for start in range(0, min(blocks, len(validation)), 16):
                items = [((0, i), validation[i]) for i in range(start, min(start + 16, blocks, len(validation)))]
                out = model(**collator(items), max_predictions=default_max_predictions(len(items[0][1])))
                n = float(out["num_predictions"])
                loss_sum, correct, count = loss_sum + float(out["loss"]) * n, correct + float(out["num_correct"]), \
                    count + n
        figures[view] = {"loss": loss_sum / count, "accuracy": correct / count, "perplexity":
                         math.exp(min(loss_sum / count, 50)), "predictions": int(count)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--blocks", type=int, default=256, help="validation blocks evaluated")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(ROOT, "outputs", "doc-attention"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    data = short_documents(args.out, args.length)
    results = {}
    for name, documents in (("document_attention", True), ("full_block_attention", False)):
        run_dir = train(data, args.out, f"{name}-{args.steps}", args.steps, documents, args.seed)
        results[name] = validation_figures(run_dir, data, args.steps, args.blocks)
    alone = {name: r["documents_alone"]["loss"] for name, r in results.items()}
    print(json.dumps({"machine": machine(), "settings": vars(args), "runs": results,
                      "documents_alone_loss_difference": alone["document_attention"] - alone["full_block_attention"]},
                     indent=2))


if __name__ == "__main__":
    main()

"""A SentencePiece vocabulary through the whole pipeline: data prep (16- and 32-bit shards), pretraining, export,
and the exported tokenizer and model in Hugging Face. The vocabularies are trained here on the python-help text."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import train_spm
from deberta_pretrain.data import ShardedDataset
from deberta_pretrain.data.prepare import prepare
from deberta_pretrain.data.inputs import python_help_topics
from deberta_pretrain.deberta import SPMTokenizer
from pretrain_helpers import ROOT, run_pretrain, tiny_overrides


def prepare_with(vocab, output, tokenizer=None, length=64):
    return prepare({"output": str(output), "input": {"type": "python-help"}, "vocab": str(vocab),
                    "tokenizer": tokenizer, "engine": "auto", "max_seq_length": length, "packing": "document",
                    "validation_fraction": 0.1, "segment_mb": 0.2, "num_proc": 1, "overwrite": False},
                   progress=False)


def first_documents_ids(tokenizer, length):
    """The first training block of ``packing=document`` data: [CLS] + the first training document's ids + [SEP]."""
    from deberta_pretrain.data.prepare import is_validation

    text = next(t for t in python_help_topics() if not is_validation(t, 0.1))
    ids = tokenizer.encode(text)[: length - 2]
    return [tokenizer.cls_token_id, *ids, tokenizer.sep_token_id]


@pytest.mark.parametrize("extra_pieces,dtype", [(0, "<u2"), (66000, "<i4")], ids=["16-bit", "32-bit"])
def test_prepare_with_a_sentencepiece_model_round_trips(tmp_path, extra_pieces, dtype):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    train_spm(model_dir / "spm.model", extra_pieces=extra_pieces)
    manifest = prepare_with(model_dir, tmp_path / "data", tokenizer="spm")  # a model folder holding spm.model
    assert manifest["vocab"]["kind"] == "spm" and manifest["vocab"]["file"] == "spm.model"
    assert manifest["dtype"] == dtype and manifest["vocab"]["size"] == 3001 + extra_pieces
    assert open(tmp_path / "data" / "spm.model", "rb").read() == open(model_dir / "spm.model", "rb").read()
    tokenizer = SPMTokenizer(model_dir / "spm.model")
    block = ShardedDataset(tmp_path / "data", "train")[0]
    expected = first_documents_ids(tokenizer, 64)
    assert block[: len(expected)].tolist() == expected
    if extra_pieces:
        assert int(np.max(block)) > 65535  # ids past 16 bits survive the shards
    with pytest.raises(ValueError, match="tokenizer=gpt2, but .*spm.model is a spm vocabulary"):
        prepare_with(model_dir / "spm.model", tmp_path / "other", tokenizer="gpt2")


def test_a_folder_without_a_vocabulary_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds neither spm.model nor bpe_encoder.bin"):
        prepare_with(tmp_path, tmp_path / "data")


@pytest.mark.slow
def test_continue_pretraining_an_hf_folder_and_export_it(tmp_path):
    """The recipe of docs/pretraining.md on a tiny v3-shaped Hugging Face folder made here (config.json,
    model.safetensors with HF's legacy MLM head, spm.model): prepare with its vocabulary, pretrain from it, export,
    load the result in HF."""
    transformers = pytest.importorskip("transformers")
    models = tmp_path / "models" / "tiny-v3"
    config = transformers.DebertaV2Config(
        vocab_size=3001, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=128, relative_attention=True, position_buckets=16, norm_rel_ebd="layer_norm",
        share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
        layer_norm_eps=1e-7, max_relative_positions=-1)
    transformers.DebertaV2ForMaskedLM(config).save_pretrained(str(models))
    train_spm(models / "spm.model")
    prepare_with(models, tmp_path / "data")  # the kind is inferred from the folder's spm.model
    result = run_pretrain(tiny_overrides(tmp_path / "data", tmp_path, "run", **{
        "model.init_from": str(models), "data.masking": "whole_word", "optim.lr": 5e-4}))
    out = result.stdout + result.stderr  # the legacy head was renamed and loaded; only the EMD's position table is new
    assert "no MLM head" not in out
    assert "missing keys ['deberta.embeddings.position_embeddings.weight']; unexpected keys []" in out
    run_dir = tmp_path / "run"
    assert json.load(open(run_dir / "model_config.json"))["hidden_size"] == 64  # the folder's shape, not tiny's
    assert open(run_dir / "spm.model", "rb").read() == open(models / "spm.model", "rb").read()
    assert not (run_dir / "bpe_encoder.bin").exists()
    export = tmp_path / "export"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "export.py"), f"checkpoint={run_dir}",
                             f"output={export}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isfile(export / "tokenizer.json")  # our ids, byte fallback included (tests/test_hf_spm_export.py)
    ours = SPMTokenizer(export / "spm.model")
    theirs = transformers.AutoTokenizer.from_pretrained(str(export))
    text = "Return the value of the named attribute of object."
    assert theirs(text)["input_ids"] == [ours.cls_token_id, *ours.encode(text), ours.sep_token_id]
    model = transformers.AutoModelForMaskedLM.from_pretrained(str(export))
    assert (model.config.vocab_size, model.config.hidden_size) == (3001, 64)


@pytest.mark.slow
def test_training_reads_32_bit_shards(tmp_path):
    train_spm(tmp_path / "spm.model", extra_pieces=66000)
    manifest = prepare_with(tmp_path / "spm.model", tmp_path / "data")
    assert manifest["dtype"] == "<i4"
    run_pretrain(tiny_overrides(tmp_path / "data", tmp_path, "run", **{"model.vocab_size": 69001,
                                                                        "train.max_steps": 2}))
    records = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2] and all(0 < r["loss"] < 20 for r in train)

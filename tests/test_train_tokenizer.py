"""data_prep/train_tokenizer.py: vocabularies trained on python-help load into our tokenizers and give the ids of
independent implementations (sentencepiece itself; Hugging Face's DebertaTokenizer over the exported files)."""

import json
import subprocess
import sys

import pytest
import transformers

from deberta_pretrain.data.inputs import python_help_topics
from deberta_pretrain.data.vocab_training import train_vocabulary
from deberta_pretrain.deberta import GPT2Tokenizer, SPMTokenizer
from deberta_pretrain.deberta.bpe import ReferenceBPE
from pretrain_helpers import ROOT

TEXTS = [t[:1500] for t in python_help_topics()[::7]] + ["naïve café 😀 tabs\tand  spaces", "x = [1, 2]  # ok"]


def settings(tmp_path, kind, vocab_size, **extra):
    return {"output": str(tmp_path / kind), "kind": kind, "vocab_size": vocab_size, "sample_mb": 100.0,
            "held_out_fraction": 0.05, "character_coverage": 0.9995, "num_threads": 1, "seed": 0, "overwrite": False,
            "input": {"type": "python-help"}, **extra}


def test_gpt2_bpe_vocabulary_loads_everywhere_with_the_same_ids(tmp_path):
    report = train_vocabulary(settings(tmp_path, "gpt2-bpe", 1200), progress=False)
    tokenizer = GPT2Tokenizer(str(tmp_path / "gpt2-bpe" / "bpe_encoder.bin"))
    assert tokenizer.vocab_size == report["vocab_size"] == 1200
    assert tokenizer.special_ids() == {"pad": 0, "cls": 1, "sep": 2, "unk": 3, "mask": 1199}
    assert tokenizer.bpe.name == "tiktoken"  # merges in id order: the fast engine applies
    reference = ReferenceBPE(tokenizer.gpt2_encoder["encoder"], [tuple(m) for m in tokenizer.gpt2_encoder["vocab"]])
    from deberta_pretrain.export import hf_bpe_tokenizer_files

    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    hf_bpe_tokenizer_files(tokenizer, str(hf_dir))
    hf = transformers.DebertaTokenizer.from_pretrained(str(hf_dir))
    for text in TEXTS:
        ids = tokenizer.encode(text)
        assert tokenizer.bpe.encode(text) == reference.encode(text)
        assert hf(text)["input_ids"] == [1] + ids + [2]
        assert tokenizer.decode(tokenizer.convert_ids_to_tokens(ids)) == text
        assert tokenizer.unk_token_id not in ids  # byte-level: nothing is unknown
    assert 1.0 < report["tokens_per_word"] < 3.0 and report["held_out_words"] > 0


def test_spm_vocabulary_has_v3s_layout_and_sentencepieces_ids(tmp_path):
    import sentencepiece

    report = train_vocabulary(settings(tmp_path, "spm", 1500), progress=False)
    path = tmp_path / "spm" / "spm.model"
    tokenizer = SPMTokenizer(str(path))
    processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
    assert [processor.id_to_piece(i) for i in range(4)] == ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
    assert tokenizer.vocab_size == report["vocab_size"] == 1501 and tokenizer.mask_token_id == 1500
    for text in TEXTS:
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))
        assert ids == processor.encode(text)
        assert 3 not in ids  # byte fallback: no [UNK]
    assert report["tokens_per_word"] < 3.0


def test_sampling_bounds_the_training_text_and_errors_leave_nothing(tmp_path):
    report = train_vocabulary(settings(tmp_path, "spm", 400, sample_mb=0.05), progress=False)
    largest = max(len(t.encode()) for t in python_help_topics())
    assert report["bytes_sampled"] <= 0.05e6 + largest and report["bytes_read"] > 0.4e6
    with pytest.raises(FileExistsError, match="overwrite=true"):
        train_vocabulary(settings(tmp_path, "spm", 400), progress=False)
    with pytest.raises(ValueError, match="kind"):
        train_vocabulary(settings(tmp_path, "wordpiece", 400), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spm"]  # no temporary folder left behind


@pytest.mark.slow
def test_command_line_data_prep_and_pretraining_with_the_trained_vocabulary(tmp_path):
    """The commands of docs/data-prep.md: train a vocabulary, prepare data with it, pretrain a few steps on it."""
    result = subprocess.run([sys.executable, "data_prep/train_tokenizer.py", f"output={tmp_path / 'v'}",
                             "kind=gpt2-bpe", "vocab_size=800"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "v" / "report.json").read_text())["vocab_size"] == 800
    result = subprocess.run([sys.executable, "data_prep/prepare.py", f"output={tmp_path / 'd'}",
                             f"vocab={tmp_path / 'v'}", "max_seq_length=64", "validation_fraction=0.1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert manifest["vocab"]["size"] == 800 and manifest["vocab"]["special_ids"]["mask"] == 799
    from pretrain_helpers import assert_trained, run_pretrain, tiny_overrides

    run_pretrain(tiny_overrides(tmp_path / "d", tmp_path, "run", **{"model.vocab_size": 800}))
    assert_trained(tmp_path / "run")
    from deberta_pretrain.deberta.gpt2_vocab import load_bpe_encoder

    trained = load_bpe_encoder(tmp_path / "v" / "bpe_encoder.bin")
    assert load_bpe_encoder(tmp_path / "run" / "bpe_encoder.bin") == trained

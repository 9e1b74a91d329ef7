"""``SPMTokenizer`` against independent references, with a SentencePiece model trained here in the v3 layout
(``[PAD] [CLS] [SEP] [UNK]`` as pieces 0-3, byte fallback): SentencePiece's own encoding (what upstream's tokenizer
and HF's sentencepiece-backed one call), and Hugging Face's ``DebertaV2Tokenizer`` built from the same file."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import train_spm
from deberta_pretrain.data.inputs import python_help_topics
from deberta_pretrain.deberta import SPMTokenizer

spm = pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def model_dir(spm_model_dir):
    return spm_model_dir


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return SPMTokenizer(model_dir / "spm.model")


@pytest.fixture(scope="module")
def reference(model_dir):
    return spm.SentencePieceProcessor(model_file=str(model_dir / "spm.model"))


def test_special_ids_follow_upstream(tokenizer, reference):
    """The v3 layout: the four specials are pieces 0-3, [MASK] is the first id after the model's pieces (128000 for
    the releases' 128,000-piece model)."""
    assert reference.get_piece_size() == 3000
    assert tokenizer.special_ids() == {"pad": 0, "cls": 1, "sep": 2, "unk": 3, "mask": 3000}
    assert tokenizer.vocab_size == len(tokenizer) == 3001
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 3000]) == ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]


def test_ids_equal_sentencepiece_and_hugging_face_on_real_text(tokenizer, reference, model_dir):
    """transformers 5 has only the tokenizers-backed DebertaV2Tokenizer, converted from the spm file; it lacks byte
    fallback and part of SentencePiece's normalisation (NFKC of e.g. the ellipsis), so where it differs it has put
    [UNK] where SentencePiece (and upstream, and HF's former sentencepiece-backed class) produced real pieces."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.DebertaV2Tokenizer.from_pretrained(str(model_dir))
    assert hf.mask_token_id == tokenizer.mask_token_id and hf.unk_token_id == tokenizer.unk_token_id
    documents = python_help_topics()
    batch = tokenizer.encode_batch(documents)
    differing = 0
    for text, ids in zip(documents, batch):
        expected = reference.encode(text)
        assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)) == expected
        assert ids.tolist() == expected
        theirs = hf(text, add_special_tokens=False)["input_ids"]
        if theirs != expected:
            differing += 1
            assert hf.unk_token_id in theirs and hf.unk_token_id not in expected
    assert differing <= len(documents) // 4  # 10 of the 79 help topics hold such a character


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=0, max_size=60))
def test_ids_equal_sentencepiece_on_any_unicode(tokenizer, reference, text):
    """Characters the model never saw go through byte fallback, as in the v3 releases."""
    assert tokenizer.encode(text) == reference.encode(text)
    assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)) == reference.encode(text)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60))
def test_decode_round_trip(tokenizer, reference, text):
    """Decoding gives back the text as SentencePiece normalises it (NFKC, whitespace runs collapsed)."""
    normalised = reference.decode(reference.encode(text))
    assert tokenizer.decode(tokenizer.tokenize(text)) == normalised
    assert tokenizer.decode_ids(tokenizer.encode(text)) == normalised


def test_word_starts_follow_the_sentencepiece_marker(tokenizer):
    tokens = tokenizer.tokenize("Whole-word masking, tokenization")
    flags = [tokenizer.part_of_whole_word(t) for t in tokens]
    assert flags == [not (t.startswith("\u2581") or t in {"-", ","}) for t in tokens]
    assert not any(tokenizer.part_of_whole_word(t) for t in tokenizer.special_tokens)
    table = tokenizer.word_continuation_table()
    assert table.shape == (tokenizer.vocab_size,) and not table[tokenizer.mask_token_id]


def test_split_by_punct_and_lower_case(model_dir, reference):
    split = SPMTokenizer(model_dir / "spm.model", split_by_punct=True)
    pieces = reference.encode_as_pieces
    assert split.tokenize("a,b") == pieces("a") + pieces(",") + pieces("b")  # each chunk encoded on its own
    assert split.split_to_words("x=1, y") == ["x", "=", "1", ",", " y"]
    lower = SPMTokenizer(model_dir / "spm.model", do_lower_case=True)
    assert lower.encode("Return VALUE") == reference.encode("return value")


def test_a_model_without_byte_fallback_maps_unknown_characters_to_unk(tmp_path):
    path = train_spm(tmp_path / "spm.model", byte_fallback=False, vocab_size=800)
    tokenizer, reference = SPMTokenizer(path), spm.SentencePieceProcessor(model_file=str(path))
    text = "x \u4e2d y"  # a character the python-help text does not contain
    assert tokenizer.encode(text) == reference.encode(text) and tokenizer.unk_token_id in tokenizer.encode(text)
    assert "[UNK]" in tokenizer.tokenize(text)
    assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text)) == reference.encode(text)


def test_a_file_that_is_not_a_sentencepiece_model_is_named(tmp_path):
    bad = tmp_path / "spm.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="spm.model: not a SentencePiece model"):
        SPMTokenizer(bad)
    with pytest.raises(FileNotFoundError, match="missing.model does not exist"):
        SPMTokenizer(tmp_path / "missing.model")

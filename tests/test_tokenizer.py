"""GPT2Tokenizer against tiktoken's official GPT-2 encoding (built offline from OpenAI's files), vocabulary files,
the seed's examples."""

import hashlib
import os
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deberta_pretrain.deberta import GPT2Tokenizer
from deberta_pretrain.deberta import gpt2_vocab

tiktoken = pytest.importorskip("tiktoken")
GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"


@pytest.fixture(scope="module")
def official_gpt2(tmp_path_factory):
    """tiktoken.get_encoding("gpt2") with its download cache seeded by the packaged originals (no network)."""
    cache = tmp_path_factory.mktemp("tiktoken_cache")
    encoder_json, vocab_bpe = gpt2_vocab.default_gpt2_files()
    for name, path in (("encoder.json", encoder_json), ("vocab.bpe", vocab_bpe)):
        shutil.copy(path, cache / hashlib.sha1((GPT2_URL + name).encode()).hexdigest())
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    try:
        yield tiktoken.get_encoding("gpt2")
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def tokenizers():
    return {"tiktoken": GPT2Tokenizer(engine="tiktoken"), "reference": GPT2Tokenizer(engine="reference")}


def python_help_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def test_seed_example():
    tokenizer = GPT2Tokenizer()
    tokens = tokenizer.tokenize("Hello world!")
    assert tokens == ["15496", "995", "0"]
    assert tokenizer.decode(tokens) == "Hello world!"


def test_special_ids_and_vocabulary_size():
    tokenizer = GPT2Tokenizer()
    assert [tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.unk_token_id] == [0, 1, 2, 3]
    assert tokenizer.mask_token_id == 50264 and tokenizer.vocab_size == 50265 == len(tokenizer)
    assert tokenizer.dict_source == "gpt2-order"
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 50264]) == ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    # GPT-2 order: model id = GPT-2 id + 4.
    assert tokenizer.convert_tokens_to_ids(["15496", "0"]) == [15500, 4]


@pytest.mark.parametrize("engine", ["tiktoken", "reference"])
def test_python_help_text_equals_official_gpt2(engine, tokenizers, official_gpt2):
    text = python_help_text()
    ours = tokenizers[engine].tokenize(text)
    assert [int(t) for t in ours] == official_gpt2.encode_ordinary(text)
    assert tokenizers[engine].decode(ours) == text


unicode_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)),  # lone surrogates cannot be UTF-8 encoded
    max_size=200,
)
mixed_text = st.lists(st.sampled_from(["  ", "\n\n", "\t", " 's", "'ll", "😀👍🏽", "é", "e\u0301", "\u200b", "x",
                                       "The", " quick", "1234", "\x00", "\x7f", "ℝ", "日本語", "!!?"])
                      ).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=st.one_of(unicode_text, mixed_text))
def test_engines_equal_official_gpt2_on_generated_unicode(text, tokenizers, official_gpt2):
    expected = official_gpt2.encode_ordinary(text)
    for tokenizer in tokenizers.values():
        tokens = tokenizer.tokenize(text)
        assert [int(t) for t in tokens] == expected
        assert tokenizer.decode(tokens) == text


def test_bpe_encoder_file_round_trip(tmp_path):
    tokenizer = GPT2Tokenizer()
    path = tokenizer.save_pretrained(tmp_path)
    assert os.path.basename(path) == "bpe_encoder.bin"
    raw = torch.load(path, weights_only=True)
    assert set(raw) >= {"encoder", "vocab", "dict_map"} and raw["dict_source"] == "gpt2-order"
    reloaded = GPT2Tokenizer(path)
    text = "Round trip: ids and tokens survive the file."
    assert reloaded.encode(text) == tokenizer.encode(text)
    assert reloaded.tokenize(text) == tokenizer.tokenize(text)


class NotData:
    """Any class instance needs pickle's arbitrary-object loading."""


def test_vocabulary_file_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "bpe_encoder.bin"
    torch.save({"encoder": {}, "vocab": [], "dict_map": [], "x": NotData()}, path)
    with pytest.raises(ValueError, match="bpe_encoder.bin"):
        GPT2Tokenizer(str(path))
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        GPT2Tokenizer(str(tmp_path / "missing.bin"))


def test_fairseq_dict_sets_id_order_and_unknown_tokens(tmp_path):
    dict_txt = tmp_path / "dict.txt"
    dict_txt.write_text("995 100\n15496 50\n0 7\n")  # " world", "Hello", "!"
    vocab = gpt2_vocab.build_bpe_encoder(dict_txt=dict_txt)
    assert vocab["dict_source"].startswith("fairseq:")
    path = tmp_path / "bpe_encoder.bin"
    gpt2_vocab.save_bpe_encoder(vocab, path)
    tokenizer = GPT2Tokenizer(str(path))
    assert tokenizer.vocab_size == 4 + 3 + 1 and tokenizer.mask_token_id == 7
    assert tokenizer.encode("Hello world!") == [5, 4, 6]
    assert tokenizer.encode("Hello there") == [5, tokenizer.unk_token_id]
    bad = tmp_path / "bad_dict.txt"
    bad.write_text("995 100\nthis-line-has-no-count\n")
    with pytest.raises(ValueError, match="bad_dict.txt:2"):
        gpt2_vocab.build_bpe_encoder(dict_txt=bad)


def test_add_symbol_special_tokens_and_whole_words():
    tokenizer = GPT2Tokenizer(special_tokens=["[E1]"])
    e1 = tokenizer.id("[E1]")
    assert e1 == 50265 and tokenizer.sym(e1) == "[E1]"
    assert tokenizer.add_symbol("[E1]", 3) == e1 and tokenizer.count[e1] == 4
    assert tokenizer.decode(["15496", "[E1]", "995"]) == "Hello world"
    hello, space_world, bang = tokenizer.tokenize("Hello world!")
    ing = tokenizer.tokenize(" tokenization")[1]
    assert tokenizer.decode([ing]) == "ization"
    assert tokenizer.part_of_whole_word(ing)
    assert not tokenizer.part_of_whole_word(space_world)
    assert not tokenizer.part_of_whole_word(bang)
    assert tokenizer.part_of_whole_word(hello, is_bos=True)
    table = tokenizer.word_continuation_table()
    assert table[tokenizer.convert_tokens_to_ids([ing])[0]] and not table[tokenizer.convert_tokens_to_ids([space_world])[0]]

"""An exported SentencePiece vocabulary reads the ids the model was trained on (issue #19): Hugging Face's
``AutoTokenizer`` on the export's folder gives ``[CLS] + SPMTokenizer.encode(text) + [SEP]``, byte fallback
included, where transformers' own ``DebertaV2Tokenizer`` puts ``[UNK]``."""

import io
import json
import shutil

import pytest

from deberta_pretrain.data.inputs import python_help_topics
from deberta_pretrain.deberta import SPMTokenizer
from deberta_pretrain.deberta.hf_spm import differing_texts, tokenizer_json, write_tokenizer_json
from deberta_pretrain.export import hf_tokenizer_files

transformers = pytest.importorskip("transformers")
sentencepiece = pytest.importorskip("sentencepiece")

TEXTS = [
    "def f(x):\n\treturn x  # newline,\ttab and two spaces\r\n",
    "   leading and trailing spaces   ",
    "emoji 🙂, a ZWJ sequence 👩‍💻 and a flag 🇩🇪",
    "Devanagari नमस्ते, Georgian გამარჯობა, CJK 漢字 かな, Ethiopic ሰላም, Hangul 한국어",
    "accents: naïve café Ångström Ærø señor straße İstanbul",
    "compatibility forms: ﬁ ① ＡＢＣ … ™ ½ x²",
    "text that looks like pieces: <0x0A> ［PAD］ ▁ ▁word a▁b",
    "",
    " ",
]


@pytest.fixture(scope="module")
def model_dir(spm_model_dir):
    return spm_model_dir


@pytest.fixture(scope="module")
def ours(model_dir):
    return SPMTokenizer(model_dir / "spm.model")


@pytest.fixture(scope="module")
def exported(ours, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    hf_tokenizer_files(ours, str(folder))
    (folder / "config.json").write_text(json.dumps({"model_type": "deberta-v2"}))  # as an export has it
    return folder


@pytest.fixture(scope="module")
def hf(exported):
    return transformers.AutoTokenizer.from_pretrained(str(exported))


def framed(ours, text):
    return [ours.cls_token_id, *ours.encode(text), ours.sep_token_id]


def test_hf_reads_our_ids_where_byte_fallback_fires(ours, hf, exported):
    assert {"spm.model", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in exported.iterdir()}
    assert hf.is_fast
    for text in TEXTS:
        assert hf(text)["input_ids"] == framed(ours, text), text
    byte_texts = [t for t in TEXTS if any(ours.spm.is_byte(i) for i in ours.encode(t))]
    assert len(byte_texts) >= 3  # emoji, rare scripts, accents: the test fails with the old export
    assert hf.decode(hf(TEXTS[2])["input_ids"], skip_special_tokens=True) == TEXTS[2]


def test_hf_reads_our_ids_on_every_python_help_topic(ours, hf):
    documents = python_help_topics()
    theirs = hf(documents, add_special_tokens=False)["input_ids"]
    assert [i for i, (doc, ids) in enumerate(zip(documents, theirs)) if ids != ours.encode(doc)] == []


def test_the_old_export_put_unk_where_we_have_bytes(ours, model_dir, exported, tmp_path):
    """Why tokenizer.json, and why its config names PreTrainedTokenizerFast: transformers' DebertaV2Tokenizer from
    spm.model (the export before issue #19), and in transformers 5 even beside tokenizer.json, has no byte
    fallback."""
    ids = ours.encode("🙂")
    assert len(ids) == 5 and all(ours.spm.is_byte(i) for i in ids[1:])  # "▁" and the emoji's four UTF-8 bytes
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(model_dir / "spm.model", old)
    (old / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "DebertaV2Tokenizer"}))
    assert ours.unk_token_id == 3 and 3 in transformers.AutoTokenizer.from_pretrained(str(old))("🙂")["input_ids"]
    if int(transformers.__version__.split(".")[0]) >= 5:
        named = shutil.copytree(exported, tmp_path / "named")
        config = json.loads((named / "tokenizer_config.json").read_text())
        (named / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "DebertaV2Tokenizer"}))
        assert 3 in transformers.AutoTokenizer.from_pretrained(str(named))("🙂")["input_ids"]


def test_pairs_specials_and_mask(ours, hf):
    a, b = TEXTS[2], "What is a list?"
    pair = hf(a, b)
    assert pair["input_ids"] == framed(ours, a) + ours.encode(b) + [ours.sep_token_id]
    assert pair["token_type_ids"] == [0] * (len(ours.encode(a)) + 2) + [1] * (len(ours.encode(b)) + 1)
    assert pair["attention_mask"] == [1] * len(pair["input_ids"])
    assert len(hf) == len(ours) == 3001
    for name in ("pad", "cls", "sep", "unk", "mask"):
        assert getattr(hf, f"{name}_token_id") == getattr(ours, f"{name}_token_id"), name
    assert hf.convert_tokens_to_ids("[MASK]") == ours.mask_token_id == 3000
    # A word replaced by [MASK], as in masking: the words around it keep their ids.
    assert hf("the [MASK] of a list")["input_ids"] == [
        ours.cls_token_id, *ours.encode("the"), ours.mask_token_id, *ours.encode("of a list"), ours.sep_token_id]


def train_variant(path, **options):
    """A small unigram model with SentencePiece options that the v3 layout does not use."""
    lines = [line for doc in python_help_topics() for line in doc.split("\n") if line.strip()]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=2000, model_type="unigram",
        character_coverage=1.0, pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2,
        eos_piece="[SEP]", unk_id=3, unk_piece="[UNK]", minloglevel=2, **{"byte_fallback": True, **options})
    path.write_bytes(model.getvalue())
    return path


@pytest.mark.parametrize("options, lower", [
    ({"normalization_rule_name": "identity"}, False),  # no NFKC: a newline is the byte piece <0x0A>
    ({"remove_extra_whitespaces": False}, False),
    ({"add_dummy_prefix": False}, False),
    ({"user_defined_symbols": ["<extra_0>", "def"]}, False),
    ({"byte_fallback": False}, False),
    ({}, True),
], ids=["identity", "keep-spaces", "no-dummy-prefix", "user-defined", "no-byte-fallback", "lowercase"])
def test_other_sentencepiece_settings(tmp_path, options, lower):
    tokenizer = SPMTokenizer(train_variant(tmp_path / "spm.model", **options), do_lower_case=lower)
    texts = [*TEXTS, "x <extra_0> y<extra_0>def", "ΣΟΦΟΣ ΟΔΟΣ.", "\n"]
    if options.get("remove_extra_whitespaces") is False:
        # tokenizers maps the grapheme "\r\n" to one space, SentencePiece to two (huggingface/tokenizers#2116)
        texts = [t.replace("\r\n", "\n") for t in texts]
    source = tokenizer if lower else tokenizer.vocab_file  # an spm.model path does, without do_lower_case
    assert differing_texts(tokenizer, tokenizer_json(source), texts) == []
    if options.get("normalization_rule_name") == "identity":
        assert tokenizer.convert_ids_to_tokens(tokenizer.encode("a\nb"))[1:2] == ["<0x0A>"]


def test_the_check_reports_what_differs_and_export_says_why(ours, tmp_path):
    assert write_tokenizer_json(ours, tmp_path) == []  # export's own check texts all agree
    # A special token spelt out in the text: HF's convention (fill-mask needs it), not our data prep's.
    text = (tmp_path / "tokenizer.json").read_text(encoding="utf-8")
    assert differing_texts(ours, text, ["a [MASK] b", "a b"]) == ["a [MASK] b"]
    split = SPMTokenizer(ours.vocab_file, split_by_punct=True)
    with pytest.raises(ValueError, match="split_by_punct"):
        tokenizer_json(split)
    folder = tmp_path / "split"
    folder.mkdir()
    with pytest.warns(UserWarning, match="no tokenizer.json"):
        hf_tokenizer_files(split, str(folder))
    assert not (folder / "tokenizer.json").exists()
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "DebertaV2Tokenizer"

"""The data-prep pipeline and the shard reader: round trip to the source text, counts, splits, corruption and
interrupted runs."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from deberta_pretrain.data import DataError, ShardedDataset
from deberta_pretrain.data import prepare as prepare_module
from deberta_pretrain.data.packing import pack_documents
from deberta_pretrain.deberta import GPT2Tokenizer

SPECIAL = {0, 1, 2, 3, 50264}


@pytest.fixture(scope="module")
def tokenizer():
    return GPT2Tokenizer()


def write_corpus(folder, n_docs=120, seed=0):
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "Python", "tensor", "naïve", "日本", "😀", "x=1;"]
    docs = []
    for i in range(n_docs):
        n = int(rng.integers(1, 40))
        docs.append(f"doc {i}: " + " ".join(rng.choice(words, n)))
    os.makedirs(folder, exist_ok=True)
    half = len(docs) // 2
    for name, part in (("a.txt", docs[:half]), ("b.txt", docs[half:])):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write("\n".join(part) + "\n")
    return docs


def config(output, source, **overrides):
    cfg = {"output": str(output), "input": source, "vocab": None, "engine": "auto", "max_seq_length": 32,
           "packing": "continuous", "validation_fraction": 0.2, "segment_mb": 0.001, "num_proc": 1,
           "overwrite": False}
    cfg.update(overrides)
    return cfg


def documents_from_shards(path, split, tokenizer):
    """Decode every shard back into documents: block interiors are concatenated per shard (packing restarts at
    each shard) and split at [SEP]."""
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    docs = []
    for shard in manifest["splits"][split]["shards"]:
        blocks = np.fromfile(os.path.join(path, shard["file"]), dtype=manifest["dtype"]).reshape(-1, 32)
        stream = []
        for block in blocks.astype(np.int64):
            assert block[0] == tokenizer.cls_token_id
            end = int(np.nonzero(block != tokenizer.pad_token_id)[0][-1])
            assert block[end] == tokenizer.sep_token_id
            stream.extend(block[1:end].tolist())
        current = []
        for token in stream + [tokenizer.sep_token_id]:
            if token == tokenizer.sep_token_id:
                docs.append(tokenizer.decode_ids(current))
                current = []
            else:
                assert token not in SPECIAL
                current.append(token)
    return docs


def test_continuous_packing_round_trips_to_the_source_text(tmp_path, tokenizer):
    docs = write_corpus(tmp_path / "corpus")
    source = {"type": "text", "paths": [str(tmp_path / "corpus" / "*.txt")], "doc_separator": "line"}
    manifest = prepare_module.prepare(config(tmp_path / "out", source), progress=False)
    train = documents_from_shards(tmp_path / "out", "train", tokenizer)
    validation = documents_from_shards(tmp_path / "out", "validation", tokenizer)
    assert sorted(train + validation) == sorted(docs)
    assert not set(train) & set(validation) and 0 < len(validation) < len(train)
    assert manifest["num_segments"] > 1 and len(manifest["splits"]["train"]["shards"]) > 1
    for split, split_docs in (("train", train), ("validation", validation)):
        info = manifest["splits"][split]
        assert info["num_documents"] == len(split_docs)
        dataset = ShardedDataset(tmp_path / "out", split)
        rows = np.stack([dataset[i] for i in range(len(dataset))])
        assert len(dataset) == info["num_samples"] == len(rows)
        assert info["num_tokens"] == int((rows != 0).sum())
        # Document tokens + one [SEP] between neighbouring documents of a shard + [CLS] and [SEP] per block.
        doc_tokens = sum(len(tokenizer.encode(d)) for d in split_docs)
        separators = len(split_docs) - len(info["shards"])
        assert info["num_tokens"] == doc_tokens + separators + 2 * info["num_samples"]
    assert manifest["vocab"]["size"] == 50265 and manifest["vocab"]["special_ids"]["mask"] == 50264
    assert manifest["dtype"] == "<u2"


def test_document_packing_puts_each_short_document_in_its_own_block(tmp_path, tokenizer):
    docs = write_corpus(tmp_path / "corpus", n_docs=30)
    source = {"type": "text", "paths": [str(tmp_path / "corpus" / "*.txt")]}
    prepare_module.prepare(config(tmp_path / "out", source, packing="document", max_seq_length=128,
                                  validation_fraction=0.0), progress=False)
    dataset = ShardedDataset(tmp_path / "out", "train")
    assert len(dataset) == len(docs)
    decoded = []
    for i in range(len(dataset)):
        block = dataset[i]
        assert block[0] == 1 and (block == 2).sum() == 1
        decoded.append(tokenizer.decode_ids([t for t in block.tolist() if t not in SPECIAL]))
    assert sorted(decoded) == sorted(docs)


def test_pack_documents_by_hand():
    docs = [np.array([10, 11, 12]), np.array([20, 21])]
    blocks = pack_documents(docs, 6, cls_id=1, sep_id=2, pad_id=0, mode="continuous")
    assert blocks.tolist() == [[1, 10, 11, 12, 2, 2], [1, 20, 21, 2, 0, 0]]
    blocks = pack_documents(docs, 6, cls_id=1, sep_id=2, pad_id=0, mode="document")
    assert blocks.tolist() == [[1, 10, 11, 12, 2, 0], [1, 20, 21, 2, 0, 0]]


def test_corrupt_truncated_or_missing_shards_are_detected(tmp_path):
    write_corpus(tmp_path / "corpus")
    source = {"type": "text", "paths": [str(tmp_path / "corpus" / "*.txt")]}
    out = tmp_path / "out"
    prepare_module.prepare(config(out, source), progress=False)
    ShardedDataset(out, "train")  # clean: accepted (and remembered as verified)
    shard = out / "train-00001.bin"
    data = bytearray(shard.read_bytes())
    data[7] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="train-00001.bin.*sha256"):
        ShardedDataset(out, "train")
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(DataError, match="train-00001.bin.*truncated"):
        ShardedDataset(out, "train", verify="size")
    shard.unlink()
    with pytest.raises(DataError, match="train-00001.bin.*missing"):
        ShardedDataset(out, "train", verify="size")
    with pytest.raises(DataError, match="vocabulary sha256"):
        (out / "train-00001.bin").write_bytes(bytes(data))
        ShardedDataset(out, "validation", expected_vocab={"sha256": "0" * 64})


def test_interrupted_run_is_not_trusted_and_a_rerun_gives_the_same_shards(tmp_path, monkeypatch):
    docs = write_corpus(tmp_path / "corpus", n_docs=200)
    source = {"type": "text", "paths": [str(tmp_path / "corpus" / "*.txt")]}
    clean = tmp_path / "clean"
    prepare_module.prepare(config(clean, source), progress=False)

    real_process = prepare_module.process_segment
    calls = {"n": 0}

    def crash_after_three(task):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("simulated kill")
        return real_process(task)

    monkeypatch.setattr(prepare_module, "process_segment", crash_after_three)
    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        prepare_module.prepare(config(interrupted, source), progress=False)
    with pytest.raises(DataError, match="no manifest"):
        ShardedDataset(interrupted, "train")
    assert not [n for n in os.listdir(interrupted) if n.endswith(".tmp")]

    done = []
    monkeypatch.setattr(prepare_module, "process_segment", lambda task: done.append(task["index"]) or
                        real_process(task))
    prepare_module.prepare(config(interrupted, source), progress=False)
    assert 0 not in done and 1 not in done and 2 not in done  # finished segments were skipped
    clean_manifest = json.load(open(clean / "manifest.json"))
    again_manifest = json.load(open(interrupted / "manifest.json"))
    assert clean_manifest["splits"] == again_manifest["splits"]
    for split in ("train", "validation"):
        for shard in clean_manifest["splits"][split]["shards"]:
            assert (clean / shard["file"]).read_bytes() == (interrupted / shard["file"]).read_bytes()
    assert len(docs) == sum(clean_manifest["splits"][s]["num_documents"] for s in ("train", "validation"))


def test_other_settings_in_the_same_output_need_overwrite(tmp_path):
    write_corpus(tmp_path / "corpus")
    source = {"type": "text", "paths": [str(tmp_path / "corpus" / "*.txt")]}
    out = tmp_path / "out"
    prepare_module.prepare(config(out, source), progress=False)
    with pytest.raises(FileExistsError, match="overwrite=true"):
        prepare_module.prepare(config(out, source, max_seq_length=64), progress=False)
    manifest = prepare_module.prepare(config(out, source, max_seq_length=64, overwrite=True), progress=False)
    assert manifest["max_seq_length"] == 64
    assert ShardedDataset(out, "train")[0].shape == (64,)


def test_jsonl_parquet_inputs_and_their_errors(tmp_path, tokenizer):
    records = [{"text": f"record number {i} says hello", "id": i} for i in range(20)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    manifest = prepare_module.prepare(
        config(tmp_path / "j", {"type": "jsonl", "paths": [str(tmp_path / "d.jsonl")], "text_field": "text"},
               validation_fraction=0.0), progress=False)
    assert manifest["splits"]["train"]["num_documents"] == 20

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": [r["text"] for r in records]}), tmp_path / "d.parquet")
    manifest = prepare_module.prepare(
        config(tmp_path / "p", {"type": "parquet", "paths": [str(tmp_path / "d.parquet")], "text_field": "body"},
               validation_fraction=0.0), progress=False)
    assert manifest["splits"]["train"]["num_documents"] == 20
    decoded = documents_from_shards(tmp_path / "p", "train", tokenizer)
    assert sorted(decoded) == sorted(r["text"] for r in records)

    with pytest.raises(ValueError, match="d.jsonl:1: no field 'body'"):
        prepare_module.prepare(config(tmp_path / "j2", {"type": "jsonl", "paths": [str(tmp_path / "d.jsonl")],
                                                        "text_field": "body"}), progress=False)
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        prepare_module.prepare(config(tmp_path / "t", {"type": "text", "paths": [str(tmp_path / "nothing-here*")]}),
                               progress=False)


def test_datasets_source_streams_a_local_corpus_and_names_what_it_cannot_load(tmp_path, tokenizer, monkeypatch):
    """source=hf goes through ``datasets.load_dataset(..., streaming=True)``; a local dataset folder stands in for a
    hub corpus (no network in tests). A corpus that cannot be loaded fails before anything is written."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    records = [f"streamed document {i} with some words" for i in range(15)] + ["   "]
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "train.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in records) + "\n")
    source = {"type": "hf", "name": str(tmp_path / "corpus"), "config_name": None, "split": "train",
              "streaming": True, "text_field": "body"}
    manifest = prepare_module.prepare(config(tmp_path / "out", source, validation_fraction=0.0), progress=False)
    assert manifest["splits"]["train"]["num_documents"] == 15  # the blank record is skipped
    assert sorted(documents_from_shards(tmp_path / "out", "train", tokenizer)) == sorted(records[:15])

    for name, split, expected in ((str(tmp_path / "corpus"), "validation", "Bad split"),
                                  ("no-such-corpus-anywhere", "train", "no-such-corpus-anywhere")):
        bad = dict(source, name=name, split=split)
        with pytest.raises(ValueError, match=f"input=hf: cannot load.*{expected}"):
            prepare_module.prepare(config(tmp_path / "bad", bad), progress=False)
        assert not (tmp_path / "bad").exists()


def test_prepare_command_reports_bad_input_in_one_line(tmp_path):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data_prep", "prepare.py")
    result = subprocess.run([sys.executable, script, f"output={tmp_path / 'out'}", "input=text",
                             f"input.paths=[{tmp_path / 'missing'}/*.txt]"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: input.paths: no file matches '{tmp_path}/missing/*.txt'"
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("script", ["prepare.py", "train_tokenizer.py"])
def test_the_old_source_group_of_data_prep_is_named_in_one_line(tmp_path, script):
    """Data prep's input was the group ``source`` (the word now names a mixture's datasets only): the old overrides
    stop with one line that gives the new ones, exit 1, nothing written."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data_prep", script)
    result = subprocess.run([sys.executable, path, f"output={tmp_path / 'out'}", "source=text",
                             f"+source.paths=[{tmp_path}/*.txt]"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: data prep's input is now the config group input (source names the datasets of a pretraining "
        f"mixture): write input=text +input.paths=[{tmp_path}/*.txt]"]
    assert not (tmp_path / "out").exists()


def test_python_help_source_in_parallel_equals_serial(tmp_path):
    serial = prepare_module.prepare(config(tmp_path / "s", {"type": "python-help"}, max_seq_length=64,
                                           segment_mb=0.1), progress=False)
    parallel = prepare_module.prepare(config(tmp_path / "p", {"type": "python-help"}, max_seq_length=64,
                                             segment_mb=0.1, num_proc=2), progress=False)
    assert serial["splits"] == parallel["splits"]
    assert serial["splits"]["train"]["num_tokens"] > 100_000
    assert serial["splits"]["validation"]["num_documents"] > 0


def test_reader_pickles_without_open_maps(tmp_path):
    write_corpus(tmp_path / "corpus", n_docs=40)
    out = tmp_path / "out"
    prepare_module.prepare(config(out, {"type": "text", "paths": [str(tmp_path / "corpus" / "*.txt")]}),
                           progress=False)
    dataset = ShardedDataset(out, "train")
    first = dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._maps == {} and np.array_equal(clone[0], first)
    with pytest.raises(IndexError):
        dataset[len(dataset)]

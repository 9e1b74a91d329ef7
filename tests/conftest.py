"""Shared test set-up: CPU-only determinism, the GPU marker, small model configs."""

import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # tests/run.sh runs one worker per core: each worker, and every process it starts, computes on one thread (two
    # threads per process on a machine that is busy anyway spend much of their time waiting for each other).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


# The longest test files (minutes of subprocess runs each) go first: tests/run.sh hands whole files to its workers in
# collection order, and a long file started last would leave the other workers idle at the end.
LONGEST_FIRST = ("test_quickstart.py", "test_pretrain.py", "test_rtd_pretrain.py", "test_compile.py",
                 "test_elastic_resume.py", "test_fork.py", "test_streaming.py",
                 "test_faults.py", "test_multinode.py", "test_finetune.py", "test_export.py", "test_gpu_check.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def single_process_world():
    """In-process fine-tuning (``run_finetune``) starts a one-process torch.distributed world, and DeepSpeed caches
    its groups: one world serves every module of this test process that uses it, and is closed at the end."""
    yield
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    import deepspeed.comm.comm as ds_comm  # noqa: PLC0415

    ds_comm.cdb = None


def small_config(generation: str, position_biased_input: bool = False, **overrides) -> dict:
    """A small v1 or v3-style config dict (the release schema), cheap enough for exhaustive checks."""
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=97,
                max_position_embeddings=64, relative_attention=True, position_biased_input=position_biased_input,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, type_vocab_size=0, hidden_act="gelu",
                layer_norm_eps=1e-7, initializer_range=0.02)
    if generation == "v1":
        base.update(model_type="deberta", pos_att_type="c2p|p2c", max_relative_positions=-1)
    else:
        base.update(model_type="deberta-v2", pos_att_type="p2c|c2p", position_buckets=8, share_att_key=True,
                    norm_rel_ebd="layer_norm", attention_head_size=8, max_relative_positions=-1)
    base.update(overrides)
    return base


def compose_pretrain(*overrides):
    """The config ``launch/pretrain.py`` composes from ``conf/`` with ``overrides`` (no run)."""
    from hydra import compose, initialize_config_dir  # noqa: PLC0415

    from deberta_pretrain.config import register_configs  # noqa: PLC0415

    register_configs()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with initialize_config_dir(config_dir=os.path.join(root, "conf"), version_base=None):
        return compose("pretrain", overrides=list(overrides))


def padded_batch(vocab_size=97, lengths=(20, 13, 1), seed=0):
    """Token ids and a 2-D input mask for rows of the given lengths, padded with 0 to the longest."""
    g = torch.Generator().manual_seed(seed)
    length = max(lengths)
    ids = torch.randint(4, vocab_size, (len(lengths), length), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return ids * mask, mask


@pytest.fixture(scope="session")
def python_help_64(tmp_path_factory):
    """The built-in python-help text prepared in blocks of 64 tokens (10 % validation, several shards)."""
    from deberta_pretrain.data.prepare import prepare  # noqa: PLC0415

    path = tmp_path_factory.mktemp("data") / "python-help"
    prepare({"output": str(path), "input": {"type": "python-help"}, "vocab": None, "engine": "auto",
             "max_seq_length": 64, "packing": "continuous", "validation_fraction": 0.1, "segment_mb": 0.1,
             "num_proc": 1, "overwrite": False}, progress=False)
    return path


@pytest.fixture(scope="session")
def numbers_64(tmp_path_factory):
    """A second source for mixtures, on python_help_64's vocabulary and block length but unlike it: 3,000 lines of
    spelled-out sums ("two plus three is five, ..."), prepared in blocks of 64 tokens (10 % validation)."""
    import numpy as np  # noqa: PLC0415

    from pretrain_helpers import prepare_lines  # noqa: PLC0415

    words = "zero one two three four five six seven eight nine ten eleven twelve".split()
    rng = np.random.default_rng(0)
    lines = []
    for a, b in rng.integers(0, 7, (3000, 2)):
        lines.append(f"{words[a]} plus {words[b]} is {words[a + b]}, and {words[b]} plus {words[a]} is "
                     f"{words[a + b]} too.")
    return prepare_lines(tmp_path_factory.mktemp("numbers"), "numbers", lines)


@pytest.fixture(scope="session")
def spm_model_dir(tmp_path_factory):
    """A folder holding ``spm.model``, trained by :func:`train_spm` once per test process."""
    folder = tmp_path_factory.mktemp("spm")
    train_spm(folder / "spm.model")
    return folder


def train_spm(path, byte_fallback=True, vocab_size=3000, extra_pieces=0):
    """A SentencePiece unigram model trained on the python-help text in DeBERTa v3's layout ([PAD] [CLS] [SEP] [UNK]
    as pieces 0-3, byte fallback); ``extra_pieces`` user-defined pieces come next, pushing the text's pieces to high
    ids. Written to ``path``, which is returned."""
    import io  # noqa: PLC0415

    import sentencepiece  # noqa: PLC0415

    from deberta_pretrain.data.inputs import python_help_topics  # noqa: PLC0415

    lines = [line for doc in python_help_topics() for line in doc.split("\n") if line.strip()]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size + extra_pieces,
        model_type="unigram", character_coverage=1.0, byte_fallback=byte_fallback, pad_id=0, pad_piece="[PAD]",
        bos_id=1, bos_piece="[CLS]", eos_id=2, eos_piece="[SEP]", unk_id=3, unk_piece="[UNK]",
        user_defined_symbols=[f"<extra_{i}>" for i in range(extra_pieces)], minloglevel=2)
    path.write_bytes(model.getvalue())
    return path

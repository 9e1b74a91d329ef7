"""Mixtures of prepared datasets (data.sources): shares, the order of samples, per-source metrics, bad input."""

import json
import os

import numpy as np
import pytest
from conftest import compose_pretrain

from deberta_pretrain.data.corpus import Corpus
from deberta_pretrain.data.mixture import Interleave, source_shares, stream_key
from deberta_pretrain.data.sampler import StepSampler
from deberta_pretrain.training.metrics import read_metrics
from pretrain_helpers import mixture_overrides, run_pretrain, tiny_overrides


def prefix_counts(sources: np.ndarray, k: int) -> np.ndarray:
    """[n, k]: how many of the first n + 1 positions each source fed (counted here, by hand)."""
    return np.cumsum(np.eye(k, dtype=np.int64)[sources], axis=0)


def deviation(shares, n=10_000) -> float:
    """The largest |count - n * share| over every prefix of n positions of the interleave of ``shares``."""
    sources, _ = Interleave(shares).locate(np.arange(n))
    expected = np.arange(1, n + 1)[:, None] * np.asarray(shares)[None, :]
    return float(np.abs(prefix_counts(sources, len(shares)) - expected).max())


def test_every_prefix_holds_each_source_within_one_sample_of_its_share():
    assert source_shares({"a": 5, "b": 3, "c": 2}, {}, 1.0) == pytest.approx({"a": 0.5, "b": 0.3, "c": 0.2})
    assert deviation([0.5, 0.3, 0.2]) < 1
    tokens = {"a": 1_000, "b": 30_000, "c": 270_000}
    uniform = source_shares(dict.fromkeys(tokens), tokens, alpha=0)
    assert uniform == pytest.approx(dict.fromkeys(tokens, 1 / 3))
    assert deviation(list(uniform.values())) < 1
    by_size = source_shares(dict.fromkeys(tokens), tokens, alpha=1)
    assert by_size == pytest.approx({"a": 1 / 301, "b": 30 / 301, "c": 270 / 301})
    assert deviation(list(by_size.values())) < 1
    tempered = source_shares(dict.fromkeys(tokens), tokens, alpha=0.3)  # XLM-R: small sources get more
    assert tempered["a"] == pytest.approx(1_000**0.3 / sum(t**0.3 for t in tokens.values()))
    assert deviation(list(tempered.values())) < 1


def test_each_source_is_read_once_per_epoch_and_starts_its_next_epoch_on_its_own():
    sizes, shares = [7, 50], [0.5, 0.5]
    sampler = StepSampler(sizes, 1, 8, 8, 1, 0, shares, [stream_key("a"), stream_key("b")])
    read = [sample for step in range(25) for sample in sampler.micro_batch(step, 0)]  # 200 samples, 100 each
    for source, size in enumerate(sizes):
        mine = [(epoch, index) for s, epoch, index in read if s == source]
        assert len(mine) == 100
        for epoch in range(100 // size):  # every complete epoch is a permutation of the source
            assert sorted(i for e, i in mine if e == epoch) == list(range(size))
    assert sampler.samples_per_source(25) == [100, 100]
    small_epochs = [e for s, e, _ in read if s == 0]
    assert max(small_epochs) == 14 and max(e for s, e, _ in read if s == 1) == 1


def test_the_samples_of_a_step_do_not_depend_on_world_size_or_accumulation():
    """1 process x accumulation 2 and 2 processes x accumulation 1 read the same samples at every step."""
    args = ([40, 13, 25], 9)
    extra = ([0.5, 0.3, 0.2], [stream_key(n) for n in "abc"])
    alone = StepSampler(*args, 8, 4, 1, 0, *extra)
    pair = [StepSampler(*args, 8, 4, 2, rank, *extra) for rank in (0, 1)]
    for step in range(30):
        one = alone.micro_batch(step, 0) + alone.micro_batch(step, 1)
        two = pair[0].micro_batch(step, 0) + pair[1].micro_batch(step, 0)
        assert sorted(one) == sorted(two), step


def test_one_data_path_reads_as_before_mixtures_existed():
    """data.path is a mixture of one: position g is perm_e(g mod N) with the permutation keyed (seed, epoch), as the
    single-source sampler always did (Feistel permutation checked separately in test_masking_sampler_schedule)."""
    from deberta_pretrain.data.permutation import FeistelPermutation

    sampler = StepSampler(37, 5, 8, 4, 2, 1)
    got = sampler.micro_batch(11, 1)  # positions 11 * 8 + (1 * 2 + 1) * 4 = 100..103
    expected = [(0, g // 37, int(FeistelPermutation(37, [5, g // 37])([g % 37])[0])) for g in range(100, 104)]
    assert got == expected


@pytest.mark.parametrize("sources,message", [
    ("{web: {path: P, weight: 1}, wiki: {path: P2}}", "a weight is given for web but not for wiki"),
    ("{web: {path: P, weight: -1}, wiki: {path: P2, weight: 1}}", "data.sources.web.weight must be a finite number "
                                                                   ">= 0, got -1"),
    ("{web: {path: P, weight: lots}, wiki: {path: P2, weight: 1}}", "data.sources.web.weight must be a finite"),
    ("{web: {path: P, weight: inf}, wiki: {path: P2, weight: 1}}", "data.sources.web.weight must be a finite"),
    ("{web: {path: P, weight: 0}, wiki: {path: P2, weight: 0}}", "every share is zero"),
    ("{web: {path: P, weight: 1}, wiki: {path: P, weight: 1}}", "web (P), wiki (P) are the same data"),
    ("{web: {path: P, weight: 1}, wiki: {path: LINK, weight: 1}}", "web (P), wiki (LINK) are the same data"),
    ("{web: {path: FILE, weight: 1}}", "data.sources.web.path: FILE is a file"),
    ("{web: {path: RUN, weight: 1}}", "data.sources.web.path: RUN is not prepared data (no manifest.json; it holds "
                                      "metrics.jsonl"),
    ("{web.en: {path: P, weight: 1}}", "'web.en' is not a valid source name"),
    ("{web: {path: Q, weight: 1}}", "data.sources.web.path: Q does not exist"),
    ("{web: {path: EMPTY, weight: 1}}", "data.sources.web.path: EMPTY: no manifest.json"),
    ("{web: {path: P, wieght: 1}}", "unknown key data.sources.web.wieght (did you mean data.sources.web.weight?)"),
])
def test_bad_sources_are_named_before_anything_runs(python_help_64, tmp_path, sources, message):
    from deberta_pretrain.config import validate

    import shutil

    (tmp_path / "empty").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    (tmp_path / "notes.txt").write_text("text\n")
    shutil.copytree(python_help_64, tmp_path / "copy")
    (tmp_path / "link").symlink_to(python_help_64)  # the same prepared data under another path
    paths = {"LINK": str(tmp_path / "link"), "P2": str(tmp_path / "copy"), "P": str(python_help_64),
             "Q": str(tmp_path / "missing"),
             "EMPTY": str(tmp_path / "empty"), "FILE": str(tmp_path / "notes.txt"), "RUN": str(tmp_path / "run")}
    for placeholder, path in paths.items():
        sources = sources.replace(f"path: {placeholder}", f"path: {path}")
        message = message.replace(f" {placeholder}", f" {path}").replace(f"({placeholder})", f"({path})")
    with pytest.raises((ValueError, OSError)) as error:  # as Run reports them: one line each, exit 1
        cfg = compose_pretrain("name=x", f"data.sources={sources}")
        validate(cfg)
        corpus = Corpus(cfg.data)
        corpus.locate(copy_here=False)
        corpus.check_compatible()
    assert message in str(error.value)


def test_sources_must_share_vocabulary_and_block_length(python_help_64, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(python_help_64, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["max_seq_length"] = 128
    (other / "manifest.json").write_text(json.dumps(manifest))
    cfg = compose_pretrain("name=x", f"data.sources={{a: {{path: {python_help_64}}}, b: {{path: {other}}}}}")
    corpus = Corpus(cfg.data)
    corpus.locate(copy_here=False)
    with pytest.raises(ValueError, match=f"a and b differ in block length \\(max_seq_length\\): 64 in "
                                         f"{python_help_64}, 128 in {other}"):
        corpus.check_compatible()
    manifest["max_seq_length"], manifest["vocab"]["sha256"] = 64, "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="a and b differ in vocabulary sha256"):
        corpus.check_compatible()


def test_a_bad_weight_on_the_command_line_exits_1_and_writes_nothing(python_help_64, numbers_64, tmp_path):
    mixture = mixture_overrides({"help": -0.5, "numbers": 1}, {"help": python_help_64, "numbers": numbers_64})
    result = run_pretrain(tiny_overrides(python_help_64, tmp_path, "bad", **mixture), check=False, timeout=120)
    assert result.returncode == 1
    assert "data.sources.help.weight must be a finite number >= 0, got -0.5" in result.stdout + result.stderr
    assert not (tmp_path / "bad").exists()


def test_each_source_gets_a_curve_in_the_loss_and_accuracy_plots():
    from deberta_pretrain.training.plots import curves

    records = [{"step": 2, "split": "train", "loss": 3.0, "accuracy": 0.1, "auc": 0.5},
               {"step": 2, "split": "validation", "loss": 2.5, "accuracy": 0.2, "auc": 0.6},
               {"step": 2, "split": "validation/web", "loss": 2.0, "accuracy": 0.3, "auc": 0.7},
               {"step": 2, "split": "validation/wiki", "loss": 3.0, "accuracy": 0.1, "auc": 0.5}]
    assert [label for label, *_ in curves(records, ("loss",))] == ["train", "validation", "validation/web",
                                                                   "validation/wiki"]
    assert [label for label, *_ in curves(records, ("auc", "precision"))] == ["train auc", "validation auc"]


@pytest.mark.slow
def test_learning_follows_the_mixture(python_help_64, numbers_64, tmp_path):
    """Two short runs on the same two sources with the weights swapped: each run's validation loss is lower on the
    source it weighted higher than the other run's loss on that source. The runs also show the per-source records:
    samples and epoch of each source in every training record, one validation record per source and evaluation."""
    paths = {"help": python_help_64, "numbers": numbers_64}
    blocks = json.loads((python_help_64 / "manifest.json").read_text())["splits"]["train"]["num_samples"]
    losses = {}
    for name, weights in (("help-heavy", {"help": 0.8, "numbers": 0.2}), ("numbers-heavy", {"help": 0.2,
                                                                                            "numbers": 0.8})):
        run_pretrain(tiny_overrides(python_help_64, tmp_path, name, **mixture_overrides(weights, paths), **{
            "train.max_steps": 12, "train.global_batch_size": 8, "train.micro_batch_size": 8,
            "train.checkpoint_every": 12, "train.eval_every": 6, "train.eval_samples": 32, "train.log_every": 3,
            "optim.lr": 2e-3, "optim.warmup_steps": 2}))
        records = read_metrics(tmp_path / name)
        train = [r for r in records if r["split"] == "train"]
        assert [r["step"] for r in train] == [3, 6, 9, 12]
        for r in train:  # 8 samples per step, divided 4:1 within one sample
            heavy, light = (r["samples/help"], r["samples/numbers"])[:: 1 if weights["help"] > 0.5 else -1]
            assert heavy + light == 8 * r["step"] and abs(light - 8 * r["step"] * 0.2) < 1
            assert r["epoch/help"] == pytest.approx(r["samples/help"] / blocks)
        for step in (0, 6, 12):
            splits = {r["split"] for r in records if r["step"] == step and r["split"] != "train"}
            assert splits == {"validation", "validation/help", "validation/numbers"}
        last = {r["split"]: r for r in records if r["step"] == 12}
        assert last["validation"]["loss"] == pytest.approx(
            weights["help"] * last["validation/help"]["loss"] + weights["numbers"] * last["validation/numbers"]["loss"],
            rel=1e-6)  # equal predictions per source here, so the weighted record is the weighted mean
        losses[name] = {source: last[f"validation/{source}"]["loss"] for source in paths}
    assert losses["help-heavy"]["help"] < losses["numbers-heavy"]["help"]
    assert losses["numbers-heavy"]["numbers"] < losses["help-heavy"]["numbers"]
    assert os.path.isfile(tmp_path / "help-heavy" / ".hydra" / "config.yaml")


def test_the_model_card_of_a_mixture_names_its_sources_and_their_tokens(python_help_64, tmp_path):
    """A mixture run's card: the sources' names as the Hub's ``datasets``, tokens seen per source (samples x block
    length from the last training record), one validation row per source, a manifest digest per source."""
    import json

    import yaml
    from huggingface_hub import ModelCard

    from deberta_pretrain.deberta import ModelConfig
    from deberta_pretrain.deberta.vocabulary import load_tokenizer
    from deberta_pretrain.model_card import model_card

    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    config = {"name": "mix", "objective": "mlm", "precision": "bf16", "seed": 1,
              "data": {"path": None, "masking": "span", "mask_prob": 0.15,
                       "sources": {"help": {"path": str(python_help_64), "weight": 0.7},
                                   "web": {"path": str(python_help_64), "weight": 0.3}}},
              "train": {"global_batch_size": 8, "max_steps": 10}, "model": {"init_from": "deberta-v3-base"}}
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    records = [{"step": 10, "split": "train", "loss": 5.0, "samples/help": 56, "samples/web": 24},
               {"step": 10, "split": "validation/help", "loss": 4.25, "accuracy": 0.5},
               {"step": 10, "split": "validation/web", "loss": 6.5, "accuracy": 0.25}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    model = ModelConfig.from_dict({"model_type": "deberta-v2", "hidden_size": 32, "num_hidden_layers": 2,
                                   "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 50265})
    tokenizer = load_tokenizer(str(python_help_64 / "bpe_encoder.bin"))
    path = tmp_path / "README.md"
    path.write_text(model_card(str(run_dir), str(run_dir / "checkpoints" / "step_00000010"), 10, model, tokenizer,
                               1234, "mlm"))
    card = ModelCard.load(path)
    assert card.data.datasets == ["help", "web"] and card.data.base_model == "microsoft/deberta-v3-base"
    assert "- 10 steps of 8 blocks of 64 tokens: 5,120 tokens" in card.text
    assert "- tokens per source (at step 10): help 3,584, web 1,536" in card.text
    assert "| validation/help | 10 | 4.2500 | 0.5000 |" in card.text and "| validation/web | 10 | 6.5000 |" in card.text
    assert card.text.count("manifest.json sha256") == 2

"""MLM masking, the step sampler, the LR schedule, the DeepSpeed config arithmetic and the FLOP formula."""

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_pretrain, small_config
from deberta_pretrain.data.masking import IGNORE_INDEX, MLMCollator, default_max_predictions
from deberta_pretrain.data.sampler import StepSampler
from deberta_pretrain.deberta import ModelConfig
from deberta_pretrain.training import optim

VOCAB, MASK, PAD, CLS, SEP, UNK = 1000, 999, 0, 1, 2, 3
SPECIAL = [PAD, CLS, SEP, UNK, MASK]


def blocks(n=64, length=128, seed=0):
    rng = np.random.default_rng(seed)
    out = rng.integers(4, MASK, size=(n, length))
    out[:, 0], out[:, -1] = CLS, SEP
    out[::3, 100:] = PAD  # some padded blocks
    return out


def collator(masking="token", **kw):
    continuation = np.zeros(VOCAB, dtype=bool)
    continuation[500:MASK] = True  # ids >= 500 continue the previous word
    return MLMCollator(VOCAB, MASK, PAD, SPECIAL, seed=7, masking=masking, continuation=continuation, **kw)


def test_masking_rates_specials_and_labels():
    c = collator()
    data = blocks(400)
    batch = c([((0, i), b) for i, b in enumerate(data)])
    ids, labels, inputs = data, batch["labels"].numpy(), batch["input_ids"].numpy()
    predicted = labels != IGNORE_INDEX
    candidates = ~np.isin(ids, SPECIAL)
    rate = predicted.sum() / candidates.sum()
    assert abs(rate - 0.15) < 0.01
    assert not predicted[~candidates].any()  # specials and padding are never predicted
    assert (labels[predicted] == ids[predicted]).all()
    masked = inputs[predicted] == MASK
    kept = inputs[predicted] == ids[predicted]
    random = ~masked & ~kept
    assert abs(masked.mean() - 0.8) < 0.02 and abs(random.mean() - 0.1) < 0.02
    assert (inputs[~predicted] == ids[~predicted]).all()
    assert (batch["input_mask"].numpy() == (ids != PAD)).all()
    assert not np.isin(inputs[predicted][random], SPECIAL).any()


def test_masks_depend_only_on_seed_epoch_and_index():
    c = collator()
    data = blocks(8)
    together = c([((3, i), b) for i, b in enumerate(data)])["input_ids"].numpy()
    alone = np.stack([c([((3, i), data[i])])["input_ids"].numpy()[0] for i in reversed(range(8))][::-1])
    assert (together == alone).all()
    other_epoch = c([((4, i), b) for i, b in enumerate(data)])["input_ids"].numpy()
    assert (other_epoch != together).any()
    other_source = c([((3, i, 7), b) for i, b in enumerate(data)])["input_ids"].numpy()  # a mixture's stream key
    assert (other_source != together).any()


def test_max_predictions_cap_and_upstream_default():
    assert default_max_predictions(512) == 80 and default_max_predictions(128) == 20
    c = collator(mask_prob=0.5, max_predictions=5)
    labels = c([((0, 0), blocks(1)[0])])["labels"].numpy()
    assert (labels != IGNORE_INDEX).sum() == 5


def word_spans(ids):
    """Positions grouped into words by the continuation rule of `collator`."""
    words, current = [], []
    for pos, token in enumerate(ids):
        if token in SPECIAL:
            if current:
                words.append(current)
            current = []
            continue
        if current and token >= 500:
            current.append(pos)
        else:
            if current:
                words.append(current)
            current = [pos]
    if current:
        words.append(current)
    return words


@pytest.mark.parametrize("masking", ["whole_word", "span"])
def test_whole_words_are_masked_together(masking):
    c = collator(masking)
    data = blocks(100)
    batch = c([((0, i), b) for i, b in enumerate(data)])
    labels = batch["labels"].numpy()
    runs = []
    for row in range(len(data)):
        predicted = set(np.nonzero(labels[row] != IGNORE_INDEX)[0].tolist())
        assert predicted
        words = word_spans(data[row])
        for word in words:
            hit = [p in predicted for p in word]
            assert all(hit) or not any(hit), "a word is either fully predicted or not at all"
        flags = [all(p in predicted for p in w) for w in words]
        run = 0
        for flag in flags + [False]:
            if flag:
                run += 1
            elif run:
                runs.append(run)
                run = 0
    if masking == "span":
        assert max(runs) >= 2  # n-grams of several words occur


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_every_sample_read_exactly_once_per_epoch(world_size):
    num_samples, micro = 96, 2
    global_batch = micro * world_size * 2
    samplers = [StepSampler(num_samples, 5, global_batch, micro, world_size, r) for r in range(world_size)]
    seen = []
    steps = math.ceil(num_samples / global_batch) + 1
    for step in range(steps):
        for m in range(samplers[0].accumulation):
            for s in samplers:
                seen.extend(s.micro_batch(step, m))
    epoch0 = [index for _, epoch, index in seen if epoch == 0]
    assert sorted(epoch0) == list(range(num_samples))
    # The same global batch is read whatever the world size: the stream does not depend on it.
    reference = StepSampler(num_samples, 5, global_batch, global_batch, 1, 0)
    assert sorted(seen[:global_batch]) == sorted(reference.micro_batch(0, 0))


def test_upstream_warmup_linear_by_hand():
    # total 100 steps, warmup 10: x/w during warmup, then (1 - x) with x = step / total (not renormalised).
    assert optim.lr_multiplier(5, 100, 10, "linear") == pytest.approx(0.5)
    assert optim.lr_multiplier(10, 100, 10, "linear") == pytest.approx(0.9)
    assert optim.lr_multiplier(60, 100, 10, "linear") == pytest.approx(0.4)
    assert optim.lr_multiplier(60, 100, 10, "linear", end_ratio=0.1) == pytest.approx(0.9 * 0.4 + 0.1)
    assert optim.lr_multiplier(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert optim.lr_multiplier(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert optim.lr_multiplier(50, 100, 10, "constant") == 1.0
    # wsd over 100 updates, warm-up 10, decay 20: the peak holds through update 80, then 1 - t, 1 - sqrt(t) or the
    # cosine's half wave to the end ratio at update 100
    for shape, at_90 in (("linear", 0.5), ("sqrt", 1 - 0.5 ** 0.5), ("cosine", 0.5)):
        wsd = [optim.lr_multiplier(u, 100, 10, "wsd", 0.1, 20, shape) for u in range(1, 101)]
        assert wsd[4] == pytest.approx(0.5) and wsd[9:80] == [1.0] * 71, shape
        assert wsd[89] == pytest.approx(0.1 + 0.9 * at_90) and wsd[99] == pytest.approx(0.1), shape
    assert optim.lr_multiplier(85, 100, 10, "wsd", 0.0, 20, "cosine") == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.25)))


def test_deepspeed_config_batch_arithmetic_and_errors():
    from deberta_pretrain.training.engine import EngineSpec
    from deberta_pretrain.training.engine import deepspeed_config as engine_config

    def deepspeed_config(cfg, world_size, on_gpu):
        return engine_config(EngineSpec.for_pretraining(cfg), world_size, on_gpu)

    cfg = compose_pretrain("name=x", "data.path=d")
    cfg.train.global_batch_size, cfg.train.micro_batch_size, cfg.precision = 64, 8, "bf16"
    config = deepspeed_config(cfg, world_size=4, on_gpu=False)
    assert config["gradient_accumulation_steps"] == 2 and config["bf16"] == {"enabled": True}
    assert "optimizer" not in config  # a torch AdamW is passed in, nothing to compile
    assert "optimizer" not in deepspeed_config(cfg, world_size=4, on_gpu=True)  # torch's fused AdamW
    cfg.deepspeed.zero_stage, cfg.deepspeed.offload = 2, True  # offloaded state: DeepSpeed's CPU-Adam
    assert deepspeed_config(cfg, world_size=4, on_gpu=True)["optimizer"]["type"] == "AdamW"
    cfg.deepspeed.zero_stage, cfg.deepspeed.offload = 0, False
    cfg.deepspeed.extra = {"zero_optimization": {"reduce_bucket_size": 123}}
    merged = deepspeed_config(cfg, world_size=1, on_gpu=False)
    assert merged["zero_optimization"] == {"stage": 0, "reduce_bucket_size": 123}
    with pytest.raises(ValueError, match=r"train.global_batch_size \(64\) must be a multiple of "
                                         r"train.micro_batch_size x world size \(8 x 3\)"):
        deepspeed_config(cfg, world_size=3, on_gpu=False)
    with pytest.raises(ValueError, match=r"train.global_batch_size \(64\) .* \(8 x 3\)"):  # the sampler: the same
        StepSampler(100, 0, 64, 8, 3, 0)
    finetuning = dataclasses.replace(EngineSpec.for_pretraining(cfg), global_key="task.recipe.batch_size")
    with pytest.raises(ValueError, match=r"^task.recipe.batch_size \(64\)"):  # fine-tuning names its own key
        engine_config(finetuning, 3, False)
    cfg.deepspeed.offload = True
    with pytest.raises(ValueError, match="deepspeed.offload needs deepspeed.zero_stage >= 1"):
        deepspeed_config(cfg, world_size=1, on_gpu=False)
    cfg.deepspeed.offload, cfg.precision = False, "fp16"
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        deepspeed_config(cfg, world_size=1, on_gpu=False)


def test_no_weight_decay_on_biases_and_layer_norm_weights():
    import torch

    model = torch.nn.Module()
    model.dense = torch.nn.Linear(2, 2)
    model.LayerNorm = torch.nn.LayerNorm(2)
    cfg = OmegaConf.create({"objective": "mlm", "optim": {"weight_decay": 0.01}})
    decay, no_decay = optim.param_groups(model, optim.group_settings(cfg.optim))
    assert decay["params"] == [model.dense.weight] and decay["weight_decay"] == 0.01
    assert {id(p) for p in no_decay["params"]} == {id(model.dense.bias), id(model.LayerNorm.weight),
                                                   id(model.LayerNorm.bias)}


def test_rtd_discriminator_learning_rate_gets_its_own_groups():
    import torch

    model = torch.nn.Module()
    model.generator, model.discriminator = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    cfg = OmegaConf.create({"objective": "rtd", "optim": {"weight_decay": 0.01},
                            "rtd": {"discriminator_lr": 3e-4}})
    from deberta_pretrain.objectives.rtd import RTDObjective

    rates = RTDObjective.param_rates(SimpleNamespace(cfg=cfg))  # the objective's policy: its own groups
    groups = optim.param_groups(model, optim.group_settings(cfg.optim, rates))
    assert [g["params"] for g in groups] == [[model.generator.weight], [model.generator.bias],
                                             [model.discriminator.weight], [model.discriminator.bias]]
    assert [g.get("lr") for g in groups] == [None, None, 3e-4, 3e-4]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0, 0.01, 0.0]


def test_flops_per_token_reproduces_the_published_accounting():
    """PaLM-style accounting worked by hand (sparse head f=0.15, no EMD): v3-base 712 and v1-base 715 MFLOP/token
    at L=512, v3-base 641 at L=128."""
    v3 = ModelConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     vocab_size=128100, relative_attention=True, pos_att_type="p2c|c2p", position_buckets=256,
                     share_att_key=True, norm_rel_ebd="layer_norm", attention_head_size=64)
    v1 = ModelConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                     vocab_size=50265, relative_attention=True, pos_att_type="c2p|p2c")
    from deberta_pretrain.deberta import flops

    huge = 10**12  # amortised relative-embedding projections vanish
    assert flops.relative_slots(v3, 512) == 511 and flops.relative_slots(v3, 128) == 255
    assert flops.relative_slots(v1, 512) == 1023
    assert flops.flops_per_token(v3, 512, 0.15, False, huge) / 1e6 == pytest.approx(712, rel=0.01)
    assert flops.flops_per_token(v1, 512, 0.15, False, huge) / 1e6 == pytest.approx(715, rel=0.01)
    assert flops.flops_per_token(v3, 128, 0.15, False, huge) / 1e6 == pytest.approx(641, rel=0.01)
    assert flops.detect_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert flops.detect_peak_tflops("NVIDIA H100 PCIe") == 756.0


def test_model_schema_is_the_release_schema_with_its_defaults():
    import dataclasses

    from deberta_pretrain.config import ModelSchema
    from deberta_pretrain.deberta.config import _DEFAULTS

    schema = {f.name: f.default for f in dataclasses.fields(ModelSchema)}
    assert set(schema) == set(_DEFAULTS) | {"model_type", "init_from"}
    assert {k: v for k, v in schema.items() if k in _DEFAULTS} == _DEFAULTS


def test_every_key_gets_its_value_from_the_yaml_files():
    """The schema holds types only (no second set of defaults): a composed config has no missing value but the
    name, the data is named as missing until data.path or data.sources is given, and a group file that lost a key
    is caught by name before anything runs."""
    from omegaconf import OmegaConf

    from deberta_pretrain.config import validate

    cfg = compose_pretrain()
    assert OmegaConf.missing_keys(cfg) == {"name"}
    with pytest.raises(ValueError, match=r"no data: set data.path=<prepared dir> or data.sources="):
        validate(compose_pretrain("name=x"))
    cfg = compose_pretrain("name=x", "data.path=d")
    cfg.train.eval_every = "???"  # as if conf/pretrain.yaml had lost the key: the schema gives no fallback
    with pytest.raises(ValueError, match="no value for train.eval_every"):
        validate(cfg)


def test_every_choice_the_schema_accepts_the_model_runs_and_others_are_refused_by_both():
    """The attention backends and embedding-sharing modes of the config schema: each runs in the model (a backend
    gives eager's logits), and a name outside them is refused by the schema check and by the model alike."""
    from deberta_pretrain.choices import ATTENTION_BACKENDS, EMBEDDING_SHARING
    from deberta_pretrain.config import validate
    from deberta_pretrain.deberta import MaskedLanguageModel, set_attention_backend
    from deberta_pretrain.deberta.rtd import ReplacedTokenDetectionModel, RTDModel

    config = ModelConfig.from_dict(small_config("v3"))
    torch.manual_seed(0)
    model = MaskedLanguageModel(config).eval()
    ids = torch.randint(3, config.vocab_size, (2, 16))
    with torch.no_grad():
        logits = {b: set_attention_backend(model, b)(ids, torch.ones_like(ids))["logits"] for b in ATTENTION_BACKENDS}
    for backend in ATTENTION_BACKENDS:
        torch.testing.assert_close(logits[backend], logits["eager"], atol=1e-5, rtol=1e-4)
    for mode in EMBEDDING_SHARING:
        RTDModel(MaskedLanguageModel(config), ReplacedTokenDetectionModel(config), mode)
    with pytest.raises(ValueError, match="'tiled'"):
        set_attention_backend(model, "tiled")
    with pytest.raises(ValueError, match="'shared'"):
        RTDModel(MaskedLanguageModel(config), ReplacedTokenDetectionModel(config), "shared")
    with pytest.raises(ValueError, match="impl.attention_backend.*'tiled'"):
        validate(compose_pretrain("name=x", "data.path=d", "impl.attention_backend=tiled"))
    with pytest.raises(ValueError, match="rtd.embedding_sharing.*'shared'"):
        validate(compose_pretrain("name=x", "data.path=d", "objective=rtd", "rtd.embedding_sharing=shared"))


@pytest.mark.parametrize("n", [1, 2, 3, 97, 1000, 4096, 65537])
def test_feistel_permutation_is_a_seeded_bijection(n):
    from deberta_pretrain.data.permutation import FeistelPermutation

    values = FeistelPermutation(n, [5, 0])(np.arange(n))
    assert sorted(values.tolist()) == list(range(n))
    if n >= 97:
        other = FeistelPermutation(n, [5, 1])(np.arange(n))
        assert (values != other).mean() > 0.9  # another epoch, another order
        assert abs(np.corrcoef(np.arange(n), values)[0, 1]) < 0.1  # not close to the identity


def test_sampler_needs_no_memory_per_sample():
    """A trillion samples: a stored permutation would need terabytes; the computed one answers at once."""
    sampler = StepSampler(10**12, 1, 8, 4, 2, 1)
    batch = sampler.micro_batch(123456789, 0)
    assert len(batch) == 4 and all(epoch == 0 and 0 <= index < 10**12 for _, epoch, index in batch)
    assert len({index for _, _, index in batch}) == 4


@pytest.mark.parametrize("n,batch,world", [(10, 3, 2), (1, 4, 3), (7, 2, 1), (16, 4, 2)])
def test_evaluation_batches_cover_every_example_once_with_equal_passes_per_rank(n, batch, world):
    """Pretraining's validation and fine-tuning's predictions share these batches (ZeRO-3 needs every rank to run
    the same number of forward passes)."""
    from deberta_pretrain.training.distributed import padded_batches

    per_rank = [list(padded_batches(n, batch, rank, world)) for rank in range(world)]
    assert len({len(passes) for passes in per_rank}) == 1 and len(per_rank[0]) == math.ceil(n / (batch * world))
    real = sorted(i for passes in per_rank for indices, is_real in passes if is_real for i in indices)
    assert real == list(range(n))
    assert all(indices == [0] for passes in per_rank for indices, is_real in passes if not is_real)

"""Fine-tuning that works with its defaults on any model size (issue #23): a custom task's default learning-rate grid,
the setting chosen by the median dev score over seeds, runs identified by seed and grid point (a grown grid trains
only its new points), and a warning when nothing was learned.

In-process on a model of the quick start's shape (hidden 128, 2 layers, 4 heads; a 1,000-piece vocabulary to load
quickly), randomly initialised: the generated task is lexical (two words of each sentence give its class away),
which a model learns from scratch at a learning rate that suits its size."""

import json
import random

import numpy as np
import pytest

from finetune_helpers import finetune, model_folder, single_process_world  # noqa: F401 (a fixture)

QUIET = ["logging.wandb.mode=disabled", "logging.progress_bar=false"]
CLASS_WORDS = {"sport": "goal match team coach league score player stadium referee season".split(),
               "music": "song album band guitar melody concert singer chorus rhythm lyrics".split()}
FILLER = ("the a of to in is that for it as with was on be by this are from at or an which not have can but all "
          "when there also more one new some list value function object file name type return string").split()


@pytest.fixture(scope="module")
def quickstart_shaped(tmp_path_factory):
    return model_folder(tmp_path_factory.mktemp("model"), tmp_path_factory.mktemp("vocab"), hidden_size=128,
                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=512, attention_head_size=32,
                        max_position_embeddings=128)


def lexical_task(folder, n_train=384, n_dev=96, seed=0):
    """Sentences of 10 filler words with two words of their class inserted; balanced classes. (train, dev) files."""
    rng = random.Random(seed)
    paths = []
    for split, n in (("train", n_train), ("dev", n_dev)):
        path = folder / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for i in range(n):
                label = sorted(CLASS_WORDS)[i % 2]
                words = rng.choices(FILLER, k=10)
                for word in rng.sample(CLASS_WORDS[label], 2):
                    words.insert(rng.randrange(len(words) + 1), word)
                f.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")
        paths.append(path)
    return paths


def custom(train, dev, out, model, *more):
    return [f"checkpoint={model}", f"output={out}", "task=custom", f"task.train={train}", f"task.validation={dev}",
            *QUIET, *more]


def test_the_defaults_train_a_small_model_and_a_base_models_rate_alone_is_flagged(quickstart_shaped, tmp_path):
    train, dev = lexical_task(tmp_path)
    results = finetune(*custom(train, dev, tmp_path / "defaults", quickstart_shaped))
    task = results["tasks"]["custom"]
    majority = 0.5
    assert task["summary"]["accuracy"]["median"] > majority + 0.3, task["grid"]  # measured 0.885 (lr 3e-4 chosen)
    assert [entry["recipe"]["lr"] for entry in task["grid"]] == [2e-5, 1e-4, 3e-4] and task["warning"] is None
    assert task["chosen"]["lr"] != 2e-5
    table = (tmp_path / "defaults" / "results.md").read_text()
    assert f"| custom | lr {task['chosen']['lr']:g} | accuracy |" in table and "setting chosen by the median" in table

    flagged = finetune(*custom(train, dev, tmp_path / "base-rate", quickstart_shaped, "task.recipe.lr=2e-5"))
    warning = flagged["tasks"]["custom"]["warning"]
    assert warning.startswith("task custom: nothing was learned with task.recipe.lr=2e-05 (")
    assert "task.recipe.lr='[1e-4,3e-4,1e-3]'" in warning
    assert f"- warning: {warning}" in (tmp_path / "base-rate" / "results.md").read_text()


def test_a_grid_trains_each_run_once_and_is_chosen_by_the_median_over_seeds(quickstart_shaped, tmp_path,
                                                                             monkeypatch):
    from deberta_pretrain.finetune import suite

    trained = []
    real = suite.finetune_once

    def counted(cfg, task, *args):
        trained.append((task.recipe.lr, args[2]))  # (lr, seed): args are pretrained, data, seed, ...
        return real(cfg, task, *args)

    monkeypatch.setattr(suite, "finetune_once", counted)
    train, dev = lexical_task(tmp_path, n_train=96, n_dev=48)
    out = tmp_path / "out"
    common = [*custom(train, dev, out, quickstart_shaped), "seeds=[1,2]", "task.recipe.epochs=1",
              "task.recipe.batch_size=16"]
    first = finetune(*common, "task.recipe.lr=[1e-5,3e-4]")["tasks"]["custom"]
    assert sorted(trained) == [(1e-5, 1), (1e-5, 2), (3e-4, 1), (3e-4, 2)] and len(first["runs"]) == 4
    medians = {}
    for run in json.loads((out / "custom.json").read_text())["runs"]:  # chosen by the median, computed here
        medians.setdefault(run["recipe"]["lr"], []).append(run["best"]["selection_score"])
    best_lr = max(medians, key=lambda lr: np.median(medians[lr]))
    assert first["chosen"]["lr"] == best_lr
    assert first["summary"]["accuracy"]["median"] == pytest.approx(
        np.median([r["best"]["accuracy"] for r in first["runs"] if r["recipe"]["lr"] == best_lr]))

    trained.clear()
    again = finetune(*common, "task.recipe.lr=[1e-5,3e-4]")["tasks"]["custom"]
    assert trained == [] and again["summary"] == first["summary"]
    grown = finetune(*common, "task.recipe.lr=[1e-5,3e-4,1e-3]")["tasks"]["custom"]
    assert sorted(trained) == [(1e-3, 1), (1e-3, 2)] and len(grown["runs"]) == 6
    assert len(grown["grid"]) == 3

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

from finetune_helpers import finetune, model_folder

pytestmark = pytest.mark.usefixtures("single_process_world")  # run_finetune in this process

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
    assert warning.startswith("task custom: nothing was learned with lr 2e-05 (1 of 1 seeds; ")
    assert "the learning rate is likely too low for the model's size: try higher rates, e.g. " \
           "task.recipe.lr='[6e-05,0.0002]'" in warning
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


# ---- the choice and the diagnosis on made-up runs (no training) ----------------------------------------------------
def made_up(seed, lr, selection, accuracy=None, diverged=False):
    point = {"lr": lr, "epochs": 3, "batch_size": 32, "warmup_steps": None}
    if diverged:
        return {"seed": seed, "recipe": point, "best": None, "last": None, "diverged": "nan at step 2"}
    accuracy = selection if accuracy is None else accuracy
    return {"seed": seed, "recipe": point, "best": {"step": 4, "selection_score": selection, "accuracy": accuracy}}


def test_the_choice_is_the_best_median_over_seeds_and_a_diverged_seed_counts_as_the_worst():
    from deberta_pretrain.finetune.grid import choose, grid_points
    from deberta_pretrain.finetune.grid import trials_by_key as runs_by_key
    from deberta_pretrain.finetune.results import summarize
    from deberta_pretrain.finetune.suite import missing_trials as missing_runs

    recipe = {"lr": [1e-5, 3e-5, 1e-4], "epochs": 3.0, "batch_size": 32, "warmup_steps": None}
    runs = [made_up(1, 1e-5, 0.70), made_up(2, 1e-5, 0.71), made_up(3, 1e-5, 0.72),  # median 0.71
            made_up(1, 3e-5, 0.50), made_up(2, 3e-5, 0.74), made_up(3, 3e-5, 0.75),  # median 0.74 (mean 0.66)
            made_up(1, 1e-4, 0.90), made_up(2, 1e-4, 0.0, diverged=True), made_up(3, 1e-4, 0.0, diverged=True)]
    points = grid_points(recipe)
    chosen, chosen_runs, scored = choose(runs_by_key(runs), points, [1, 2, 3])
    assert chosen["lr"] == 3e-5 and [r["seed"] for r in chosen_runs] == [1, 2, 3]
    assert [median for _, median in scored] == [pytest.approx(0.71), pytest.approx(0.74), None]
    assert summarize(chosen_runs)["accuracy"] == {"median": 0.74, "min": 0.5, "max": 0.75}
    assert summarize(runs[-3:])["accuracy"] == {"median": 0.9, "min": 0.9, "max": 0.9, "diverged_seeds": 2}
    assert choose(runs_by_key(runs), points, [1])[0]["lr"] == 1e-4  # one seed: its best point
    task = {"recipe": recipe}
    from omegaconf import OmegaConf

    record = {"runs": runs}
    assert missing_runs(OmegaConf.create(task), [1, 2, 3], record) == []  # 3.0 epochs here, 3 in the runs
    grown = OmegaConf.create({"recipe": {**recipe, "lr": [1e-5, 3e-4]}})
    assert missing_runs(grown, [1, 4], record) == [(p, s) for p in grid_points(grown.recipe) for s in (1, 4)
                                                   if not (p["lr"] == 1e-5 and s == 1)]
    everything_diverged = [made_up(1, lr, 0, diverged=True) for lr in (1e-5, 3e-5, 1e-4)]
    with pytest.raises(ValueError, match="every run of the grid .* diverged"):
        choose(runs_by_key(everything_diverged), points, [1])


def test_nothing_learned_is_judged_against_a_constant_prediction_and_the_label_prior():
    from deberta_pretrain.finetune.metrics import compute, learned_nothing, selection_score

    train = [0] * 70 + [1] * 30  # imbalanced, as CoLA: accuracy alone would flag a model that learned
    dev = [0] * 7 + [1] * 3
    predictions = [0, 0, 0, 0, 0, 0, 1, 1, 1, 0]  # 8 of 10 right: MCC about 0.52
    mcc = selection_score(compute(["mcc"], predictions, dev), ["mcc"], None)
    learned = {"final_train_loss": 0.45, "best": {"selection_score": mcc, "predictions": {"validation": predictions}}}
    assert learned_nothing(learned, train, {"validation": dev}, "classification", ["mcc"], None) is None
    constant = {"final_train_loss": 0.45, "best": {"selection_score": 0.0}}  # what predicting one class gives
    assert "a constant prediction scores 0.000" in learned_nothing(constant, train, {"validation": dev},
                                                                   "classification", ["mcc"], None)
    prior = -(0.7 * np.log(0.7) + 0.3 * np.log(0.3))
    flat = {"final_train_loss": 0.62, "best": {"selection_score": mcc}}
    assert learned_nothing(flat, train, {"validation": dev}, "classification", ["mcc"], None) == \
        f"final training loss 0.620, predicting the label prior {prior:.3f}"
    two_splits = {"validation_matched": dev, "validation_mismatched": dev}  # MNLI-like: the keys carry the split
    assert learned_nothing({"final_train_loss": 0.4, "best": {"selection_score": 0.8}}, train, two_splits,
                           "classification", ["accuracy"], None) is None
    values = [0.5, 1.5, 2.5, 3.5]  # regression: a constant's correlation is undefined, counted as 0
    assert learned_nothing({"final_train_loss": 0.2, "best": {"selection_score": 0.6}}, values, {"validation": values},
                           "regression", ["pearson"], None) is None
    assert "best dev score undefined" in learned_nothing({"final_train_loss": 0.2, "best": {"selection_score": None}},
                                                         values, {"validation": values}, "regression", ["pearson"],
                                                         None)


def test_fine_tuning_uses_the_shared_engine_builder_with_zero_2(quickstart_shaped, tmp_path, monkeypatch):
    """The engine options pretraining has, fine-tuning has too: ZeRO-2 and gradient clipping from the fine-tuning
    config's own sections, through training/engine.py, and its metrics log; the model still learns the task."""
    from deberta_pretrain.finetune import engine as trainer
    from deberta_pretrain.training import engine as shared

    built = []

    def spy(model, spec, world_size, on_gpu, load_universal=False):
        built.append((spec, shared.build_engine(model, spec, world_size, on_gpu, load_universal)))
        return built[-1][1]

    monkeypatch.setattr(trainer, "shared_build_engine", spy)
    train, dev = lexical_task(tmp_path)
    results = finetune(*custom(train, dev, tmp_path / "zero2", quickstart_shaped, "task.recipe.lr=3e-4",
                               "deepspeed.zero_stage=2"))
    spec, engine = built[0]
    assert engine.zero_optimization_stage() == 2
    assert engine.gradient_clipping() == 1.0 and spec.optim.lr == 3e-4 and spec.optim.schedule == "linear"
    assert results["tasks"]["custom"]["summary"]["accuracy"]["median"] > 0.8
    with open(tmp_path / "zero2" / "metrics.jsonl") as f:  # pretraining's metrics log: one record per evaluation
        records = [json.loads(line) for line in f]
    assert records and {r["split"] for r in records} == {"validation/custom"}
    assert all({"step", "accuracy", "train_loss", "seed", "lr"} <= set(r) for r in records)


def test_nothing_learned_under_capped_steps_does_not_blame_the_rate():
    """With train.max_steps or train.max_train_samples set, the advice is to lift the cap, not to change the rate."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from deberta_pretrain.finetune.results import nothing_learned_warning

    runs = [{"nothing_learned": "accuracy 0.5 = the majority class"}]
    for train, advice in (({"max_steps": 5, "max_train_samples": None}, "cut short by train.max_steps=5: raise or "
                                                                          "drop it before changing the rate"),
                          ({"max_steps": None, "max_train_samples": None}, "the learning rate is likely too low")):
        cfg = OmegaConf.create({"suite": None, "train": train})
        point = {"lr": 2e-5, "epochs": 3, "batch_size": 32, "warmup_steps": None}
        warning = nothing_learned_warning(cfg, SimpleNamespace(name="custom"), point, runs, [point])
        assert warning.startswith("task custom: nothing was learned with lr 2e-05") and advice in warning, warning

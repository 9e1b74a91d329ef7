"""Fine-tuning: the classification model against Hugging Face's, the metrics against their definitions, and the
suite machinery end to end on GLUE-schema folders built here (no network)."""

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers

from conftest import padded_batch, small_config
from deberta_pretrain.deberta import MaskedLanguageModel, ModelConfig, SequenceClassificationModel
from deberta_pretrain.finetune.metrics import compute
from pretrain_helpers import ROOT


@pytest.mark.parametrize("generation", ["v1", "v3"])
def test_classifier_equals_hf_in_both_directions(generation):
    """Our SequenceClassificationModel and HF's Deberta(V2)ForSequenceClassification with the same weights give the
    same logits, whichever side the weights come from (the release names are HF's)."""
    fields = small_config(generation)
    fields["pooling"] = {"dropout": 0.0, "hidden_act": "gelu"}
    config = ModelConfig.from_dict(fields)
    torch.manual_seed(0)
    ours = SequenceClassificationModel(config, num_labels=3).eval()
    hf_fields = {k: v for k, v in config.to_dict().items() if k != "pooling"}
    hf_fields.update(num_labels=3, pooler_dropout=0.0, pooler_hidden_act="gelu",
                     pos_att_type=hf_fields["pos_att_type"].split("|"))
    cls = (transformers.DebertaV2ForSequenceClassification if generation == "v3"
           else transformers.DebertaForSequenceClassification)
    hf_config_cls = transformers.DebertaV2Config if generation == "v3" else transformers.DebertaConfig
    hf = cls(hf_config_cls(**hf_fields)).eval()
    ids, mask = padded_batch()
    # ours -> HF
    missing, unexpected = hf.load_state_dict(ours.state_dict(), strict=False)
    assert not [k for k in missing if "position_ids" not in k]
    assert unexpected in ([], ["deberta.embeddings.position_embeddings.weight"])  # HF has none without abs. positions
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask).logits,
                                   ours(ids, input_mask=mask)["logits"], rtol=1e-5, atol=1e-5)
    # HF -> ours
    torch.manual_seed(1)
    hf2 = cls(hf_config_cls(**hf_fields)).eval()
    result = ours.load_state_dict({k: v for k, v in hf2.state_dict().items() if "position_ids" not in k},
                                  strict=False)
    assert result.missing_keys in ([], ["deberta.embeddings.position_embeddings.weight"])  # unused by both
    assert not result.unexpected_keys
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, input_mask=mask)["logits"],
                                   hf2(input_ids=ids, attention_mask=mask).logits, rtol=1e-5, atol=1e-5)
    labels = torch.tensor([0, 2, 1])
    out = ours(ids, input_mask=mask, labels=labels)
    torch.testing.assert_close(out["loss"], torch.nn.functional.cross_entropy(out["logits"], labels))


def average_ranks(values):
    """Ranks 0..n-1, tied values sharing the mean of their ranks (Spearman's definition)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):
        ranks[values == value] = ranks[values == value].mean()
    return ranks


def reference_metrics(predictions, labels) -> dict:
    """The metrics from their definitions (numpy only)."""
    p, y = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    tp, tn = np.sum((p == 1) & (y == 1)), np.sum((p == 0) & (y == 0))
    fp, fn = np.sum((p == 1) & (y == 0)), np.sum((p == 0) & (y == 1))
    ranks = [average_ranks(v) for v in (p, y)]
    return {"accuracy": float(np.mean(p == y)), "f1": float(2 * tp / (2 * tp + fp + fn)),
            "mcc": float((tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))),
            "pearson": float(np.corrcoef(p, y)[0, 1]), "spearman": float(np.corrcoef(*ranks)[0, 1])}


def test_metrics_match_their_definitions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    predictions = np.where(rng.random(200) < 0.8, labels, 1 - labels)
    expected = reference_metrics(predictions, labels)
    got = compute(["accuracy", "f1", "mcc"], predictions.tolist(), labels.tolist())
    assert got == pytest.approx({k: expected[k] for k in got}, abs=1e-12)
    scores = rng.normal(size=100)
    values = scores + rng.normal(scale=0.5, size=100)
    expected = reference_metrics(values, scores)
    assert compute(["pearson", "spearman"], values, scores) == pytest.approx(
        {"pearson": expected["pearson"], "spearman": expected["spearman"]}, abs=1e-12)


def sentences(count, seed):
    from deberta_pretrain.data.inputs.python_help import python_help_topics

    words = " ".join(python_help_topics()[:20]).split()
    rng = np.random.default_rng(seed)
    return [" ".join(words[i:i + rng.integers(5, 12)]) for i in rng.integers(0, len(words) - 20, count)]


def glue_folder(root, task, rows):
    folder = root / task
    folder.mkdir(parents=True)
    for split, n in (("train", rows), ("validation", rows // 2)):
        a, b = sentences(n, hash((task, split)) % 1000), sentences(n, 1 + hash((task, split)) % 1000)
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in range(n):
                record = {"sentence1": a[i], "sentence2": b[i], "idx": i}
                if task == "sst2":
                    record = {"sentence": a[i], "idx": i}
                record["label"] = round(float(len(a[i]) % 50) / 10, 2) if task == "stsb" else int(len(a[i]) % 2)
                f.write(json.dumps(record) + "\n")
    return folder


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny pretrained-looking model folder (release format, GPT-2 vocabulary)."""
    from deberta_pretrain.deberta import GPT2Tokenizer
    from deberta_pretrain.export import write_model

    folder = tmp_path_factory.mktemp("encoder")
    config = ModelConfig.from_dict(small_config("v3", vocab_size=50265, max_position_embeddings=128))
    torch.manual_seed(0)
    write_model(MaskedLanguageModel(config).state_dict(), config, GPT2Tokenizer(), str(folder), "release", "fp32")
    return folder


def finetune(*args, check=True):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "finetune.py"), *args,
                             "logging.wandb.mode=disabled", "logging.progress_bar=false"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1"))
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.mark.slow
def test_suite_end_to_end_on_local_glue_folders(encoder, tmp_path):
    """glue-small over local folders in GLUE's schema: a table for every task, metrics that equal an independent
    computation on the stored predictions, a re-run that skips finished tasks, and an export HF loads with the same
    logits as ours."""
    for task in ("sst2", "mrpc", "stsb", "rte"):
        glue_folder(tmp_path / "glue", task, 24)
    out = tmp_path / "out"
    args = [f"checkpoint={encoder}", "suite=glue-small", f"+suite.overrides.data_dir={tmp_path}/glue",
            "+suite.overrides.recipe.max_length=32", "+suite.overrides.recipe.batch_size=8", "train.max_steps=3",
            "train.eval_every=2", f"output={out}", "seeds=[1,2]", "export=true"]
    first = finetune(*args)
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["tasks"]) == ["mrpc", "rte", "sst2", "stsb"]
    table = (out / "results.md").read_text()
    for task_name, metric in (("sst2", "accuracy"), ("mrpc", "f1"), ("mrpc", "accuracy"), ("stsb", "pearson"),
                              ("stsb", "spearman"), ("rte", "accuracy")):
        lr = results["tasks"][task_name]["chosen"]["lr"]  # each task's own recipe rate, in the setting column
        row = f"| {task_name} | lr {lr:g} | {metric} |"
        assert row in table and row in first.stdout
    for name, task in results["tasks"].items():
        dev = [json.loads(line) for line in open(tmp_path / "glue" / name / "validation.jsonl")]
        labels = [r["label"] for r in dev]
        for run in task["runs"]:
            predictions = run["best"]["predictions"]["validation"]
            expected = reference_metrics(predictions, labels)
            for metric in ("pearson", "spearman") if name == "stsb" else ("accuracy",):
                assert run["best"][metric] == pytest.approx(expected[metric], abs=1e-9), (name, metric)
            assert run["best"]["step"] in (2, 3) and run["steps"] == 3
        values = [run["best"]["accuracy" if name != "stsb" else "pearson"] for run in task["runs"]]
        summary = task["summary"]["accuracy" if name != "stsb" else "pearson"]
        assert summary["median"] == pytest.approx(float(np.median(values)))
        assert summary["min"] == min(values) and summary["max"] == max(values)

    again = finetune(*args)
    assert (again.stdout + again.stderr).count("finished earlier with these settings, skipped") == 4

    exported = out / "sst2"
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(exported)).eval()
    ours = SequenceClassificationModel.load_model(str(exported), num_labels=2, strict=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(exported))
    ids = torch.tensor([tokenizer("an exported classifier reads this")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids).logits, ours(ids)["logits"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_custom_task_from_csv_infers_the_problem(encoder, tmp_path):
    """task=custom with a CSV of two text fields and string labels: classification over the sorted label names;
    float labels make it a regression; a missing field is named."""
    import csv

    for split, n in (("train", 16), ("dev", 8)):
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["question", "passage", "answer", "score"])
            for i, (q, p) in enumerate(zip(sentences(n, 3), sentences(n, 4))):
                writer.writerow([q, p, ["no", "yes"][i % 2], f"{(i % 7) / 3:.3f}"])
    common = [f"checkpoint={encoder}", "task=custom", f"task.train={tmp_path}/train.csv",
              f"task.validation={tmp_path}/dev.csv", "task.text_fields=[question,passage]",
              "task.recipe.max_length=32", "task.recipe.batch_size=8", "task.recipe.lr=1e-4", "train.max_steps=2"]
    finetune(*common, "task.label_field=answer", f"output={tmp_path}/cls")
    record = json.loads((tmp_path / "cls" / "custom.json").read_text())
    assert record["problem"] == "classification" and record["labels"] == ["no", "yes"]
    assert set(record["summary"]) == {"accuracy", "f1"}
    finetune(*common, "task.label_field=score", f"output={tmp_path}/reg")
    record = json.loads((tmp_path / "reg" / "custom.json").read_text())
    assert record["problem"] == "regression" and set(record["summary"]) == {"pearson", "spearman"}
    bad = finetune(*common, "task.label_field=answer", "task.text_fields=[question,pasage]",
                   f"output={tmp_path}/bad", check=False)
    assert bad.returncode == 1 and re.search(r"no field \['pasage'\]", bad.stderr)


@pytest.mark.slow
def test_two_processes_give_the_first_update_of_one(encoder, tmp_path):
    """deepspeed with 2 processes (micro-batch 4 each) and python with 1 (micro-batch 8), the same global batch of 8:
    the same weights after the first update (dropout off)."""
    common = [f"checkpoint={encoder}", "task=python-help", "task.recipe.batch_size=8", "task.recipe.cls_dropout=0",
              "task.recipe.max_length=32", "train.max_steps=1", "train.max_eval_samples=16", "export=true"]
    finetune(*common, f"output={tmp_path}/one")
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    from deberta_pretrain.training.distributed import free_port

    result = subprocess.run([deepspeed, "--num_gpus", "2", "--master_port", str(free_port()),
                             os.path.join(ROOT, "launch", "finetune.py"), *common, f"output={tmp_path}/two",
                             "logging.wandb.mode=disabled", "logging.progress_bar=false"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    one = torch.load(tmp_path / "one" / "python-help" / "pytorch_model.bin", weights_only=True)
    two = torch.load(tmp_path / "two" / "python-help" / "pytorch_model.bin", weights_only=True)
    initial = torch.load(encoder / "pytorch_model.bin", weights_only=True)
    assert not torch.equal(one["deberta.encoder.layer.0.attention.self.query_proj.weight"],
                           initial["deberta.encoder.layer.0.attention.self.query_proj.weight"])  # it did update
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-6, msg=key)


def test_the_word_order_task_cannot_be_solved_from_word_counts():
    """python-help-order's classes hold the same words: a bag-of-words classifier (scikit-learn) stays at chance,
    while the word order itself (bigram counts) carries the label."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    from deberta_pretrain.finetune.tasks import python_help_order_task

    train, dev = python_help_order_task("train"), python_help_order_task("validation")
    assert not {r["sentence"] for r in train} & {r["sentence"] for r in dev}
    assert abs(sum(r["label"] == "shuffled" for r in dev) / len(dev) - 0.5) < 0.05
    majority = max(sum(r["label"] == label for r in dev) for label in ("original", "shuffled")) / len(dev)

    def accuracy(ngrams):
        vectorizer = CountVectorizer(ngram_range=ngrams, token_pattern=r"\S+", lowercase=False)
        classifier = LogisticRegression(max_iter=2000, C=1.0)
        classifier.fit(vectorizer.fit_transform([r["sentence"] for r in train]), [r["label"] for r in train])
        predicted = classifier.predict(vectorizer.transform([r["sentence"] for r in dev]))
        return float(np.mean(predicted == np.array([r["label"] for r in dev])))

    assert accuracy((1, 1)) < majority + 0.05
    assert accuracy((2, 2)) > majority + 0.1


def test_scores_are_plotted_against_the_pretraining_step_with_the_from_scratch_baseline(tmp_path):
    from deberta_pretrain.training.plots import finetune_baselines, finetune_scores, plot_finetune

    def results(folder, step, accuracy):
        path = tmp_path / "finetune" / "glue-small" / folder
        path.mkdir(parents=True)
        summary = {"accuracy": {"median": accuracy, "min": accuracy, "max": accuracy}}
        (path / "results.json").write_text(json.dumps({"suite": "glue-small", "pretraining_step": step,
                                                       "tasks": {"rte": {"summary": summary}}}))

    results("step_00000200", 200, 0.7)
    results("step_00000100", 100, 0.6)
    results("from_scratch", None, 0.5)
    assert finetune_scores(tmp_path) == {"glue-small": {"rte accuracy": [(100, 0.6), (200, 0.7)]}}
    assert finetune_baselines(tmp_path) == {"glue-small": {"rte accuracy": 0.5}}
    (tmp_path / "plots").mkdir()
    [png] = plot_finetune(tmp_path, tmp_path / "plots")
    assert os.path.basename(png) == "finetune-glue-small.png" and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

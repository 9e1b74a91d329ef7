"""Fine-tuning checks what it is given before it trains (issue #19): the labels, the config, the data files, the
results it writes and the settings recorded with them. Every refusal is a one-line ValueError that names the file,
row and value (or the key and both values), changes no file and writes no results.

In-process on a tiny model folder (a few optimizer steps where anything trains); one command-line call checks the
exit code and the one-line message."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_helpers import compose, finetune, model_folder
from pretrain_helpers import ROOT

pytestmark = pytest.mark.usefixtures("single_process_world")  # run_finetune in this process

TEXTS = ["the cat sat on the mat", "a dog ran across the park", "numbers add up to ten", "rain fell all day long",
         "she read the whole book", "the train left at noon", "birds sang in the tall trees", "he fixed the old bike"]
QUICK = ["logging.wandb.mode=disabled", "logging.progress_bar=false", "train.max_steps=2"]
SMALL_RECIPE = ["task.recipe.max_length=32", "task.recipe.batch_size=4", "task.recipe.warmup_steps=0",
                "task.recipe.lr=1e-4"]  # one rate: a custom task's default is a grid of three
ABSENT = object()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A tiny model folder in release format, with a small SentencePiece vocabulary (quick to load)."""
    return model_folder(tmp_path_factory.mktemp("encoder"), tmp_path_factory.mktemp("vocab"),
                        max_position_embeddings=128)


def run(encoder, out, *overrides):
    """run_finetune in this process on ``encoder``, results to ``out``, a few steps (``QUICK``)."""
    return finetune(f"checkpoint={encoder}", f"output={out}", *QUICK, *overrides)


def snapshot(*folders) -> dict:
    """{path: sha256} of every file under ``folders``."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def refused(encoder, folder, overrides, *parts, checkpoint=None) -> str:
    """run_finetune (output ``folder/out``) raises a one-line ValueError holding each of ``parts``; no file under
    ``folder`` or the checkpoint changed or appeared."""
    out = folder / "out"
    existed = out.exists()
    before = snapshot(encoder, folder)
    with pytest.raises(ValueError) as error:
        run(checkpoint or encoder, out, *overrides)
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    assert snapshot(encoder, folder) == before
    assert out.exists() == existed
    return message


def write_jsonl(path, labels, text="text"):
    """One record per label (``ABSENT``: no label field), with a text of :data:`TEXTS` in field ``text``."""
    with open(path, "w", encoding="utf-8") as f:
        for i, label in enumerate(labels):
            record = {text: TEXTS[i % len(TEXTS)]}
            if label is not ABSENT:
                record["label"] = label
            f.write(json.dumps(record) + "\n")
    return path


def custom(train, dev, *more):
    return ["task=custom", f"task.train={train}", f"task.validation={dev}", *SMALL_RECIPE, *more]


def strict_json(path):
    """The file parsed as JSON that has no NaN or infinities."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


# ---- labels -------------------------------------------------------------------------------------------------------
def test_labels_minus_one_and_one_are_classes_in_sorted_order_and_a_rerun_is_matched_by_settings(encoder, tmp_path):
    """Integer labels -1/1 train as ids 0/1 and the results list the original values in sorted order. A re-run with
    the same settings is skipped; with a changed setting (weight decay, ZeRO stage, dropout, a data file) it is
    refused naming the key and both values, and nothing changes (seeds and a grid's values identify runs: see
    test_finetune_grid.py)."""
    from deberta_pretrain.finetune.data import load_task

    train = write_jsonl(tmp_path / "train.jsonl", [1, -1, -1, 1, 1, -1, 1, -1])
    dev = write_jsonl(tmp_path / "dev.jsonl", [-1, 1, 1, -1])
    out = tmp_path / "out"
    results = run(encoder, out, *custom(train, dev))
    record = strict_json(out / "custom.json")
    assert record["labels"] == [-1, 1] and record["problem"] == "classification"
    assert record["settings"]["optim"]["weight_decay"] == 0.01 and set(record["summary"]) == {"accuracy", "f1"}
    strict_json(out / "results.json")
    assert load_task(compose(*custom(train, dev)).task).train.targets == [1, 0, 0, 1, 1, 0, 1, 0]

    before = snapshot(tmp_path, encoder)
    again = run(encoder, out, *custom(train, dev))
    assert again["tasks"]["custom"] == results["tasks"]["custom"] and snapshot(tmp_path, encoder) == before

    task_file = str(out / "custom.json")
    message = refused(encoder, tmp_path, [*custom(train, dev), "optim.weight_decay=0.1"],
                      "optim.weight_decay 0.01 -> 0.1", task_file, "output=<another folder>", f"delete {task_file}")
    assert message.startswith("task custom: ") and "other settings" in message
    refused(encoder, tmp_path, [*custom(train, dev), "deepspeed.zero_stage=1", "task.recipe.cls_dropout=0.2"],
            "deepspeed.zero_stage 0 -> 1", "task.recipe.cls_dropout 0.1 -> 0.2")
    write_jsonl(dev, [-1, 1, -1, -1])  # the data changed: the scores would too
    refused(encoder, tmp_path, custom(train, dev), f"data_files.{dev}")


def test_results_go_only_to_a_new_empty_or_results_folder(encoder, tmp_path):
    """output= a folder of the user's files, or a run directory, is refused before anything trains."""
    train = write_jsonl(tmp_path / "train.jsonl", [0, 1, 1, 0])
    dev = write_jsonl(tmp_path / "dev.jsonl", [1, 0])
    os.makedirs(tmp_path / "out" / "checkpoints")
    (tmp_path / "out" / "metrics.jsonl").write_text("{}\n")
    before = snapshot(tmp_path, encoder)
    with pytest.raises(FileExistsError, match=r"not an earlier fine-tuning results folder .*checkpoints/, metrics"):
        run(encoder, tmp_path / "out", *custom(train, dev))
    with pytest.raises(FileExistsError, match=r"inside .*checkpoints, which belongs to another output"):
        (tmp_path / "out" / "checkpoints" / "latest").write_text("step_00000002")
        before = snapshot(tmp_path, encoder)
        run(encoder, tmp_path / "out" / "checkpoints" / "scores", *custom(train, dev))
    assert snapshot(tmp_path, encoder) == before
    os.makedirs(tmp_path / "empty")
    results = run(encoder, tmp_path / "empty", *custom(train, dev))  # an empty folder the user made is fine
    assert set(results["tasks"]) == {"custom"} and (tmp_path / "empty" / "results.json").is_file()


def test_results_without_recorded_settings_are_not_reused(encoder, tmp_path):
    """A task file written by an earlier version (a settings hash only, maybe NaN scores) is neither skipped as
    finished nor replaced."""
    train = write_jsonl(tmp_path / "train.jsonl", ["no", "yes"] * 4)
    dev = write_jsonl(tmp_path / "dev.jsonl", ["yes", "no"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "custom.json").write_text('{"settings_hash": "0123abcd", "summary": {"pearson": NaN}}')
    refused(encoder, tmp_path, custom(train, dev), "predate recorded settings", "output=<another folder>")
    (tmp_path / "out" / "custom.json").write_text('{"settings": {"seeds": [1]')
    refused(encoder, tmp_path, custom(train, dev), "not a readable results file")


LABEL_CASES = {  # name: (training labels, dev labels, overrides, parts of the message)
    "one class": (["yes"] * 6, ["yes", "no"], [], ["train.jsonl: every training label ('label') is 'yes'",
                                                  "two classes or more"]),
    "NaN in a regression": ([0.5, 1.5, float("nan"), 2.0], [1.0, 2.0], ["task.problem=regression"],
                            ["train.jsonl, line 3: label nan is not a finite number"]),
    "text in a regression": ([0.5, "high", 2.5, 1.0], [1.0, 2.0], ["task.problem=regression"],
                             ["train.jsonl, line 2: label 'high' is not a number"]),
    "fraction in a classification": ([0, 1, 0.5, 1], [0, 1], ["task.problem=classification"],
                                     ["train.jsonl, line 3: label 0.5 is not a class"]),
    "boolean": ([0, 1, True, 0], [0, 1], [], ["train.jsonl, line 3: label True is neither text nor a number"]),
    "null": (["a", None, "b", "a"], ["a", "b"], [], ["train.jsonl, line 2: the label 'label' is empty"]),
    "missing in one row": (["a", "b", "a", ABSENT, "b"], ["a", "b"], [],
                           ["train.jsonl, line 4: no label field 'label'"]),
    "a list": ([0, 1, [1], 0], [0, 1], [], ["train.jsonl, line 3: label [1] is neither text nor a number"]),
    "text among numbers": ([0, 1, 0, 1, "1", 0], [0, 1], [],
                           ["train.jsonl, line 5: label '1' is text, unlike most labels (e.g. 0 at "]),
    "all equal in a regression": ([2.5, 2.5, 2.5], [1.0, 2.0], ["task.problem=regression"],
                                  ["every training label ('label') is 2.5: a regression needs labels that differ"]),
    "beyond num_labels": ([0, 1, 0, 1, 2], [0, 1], ["task.num_labels=2"],
                          ["train.jsonl, line 5: label 2 is not one of the classes 0..1 (task.num_labels=2)"]),
    "dev class unseen in training": (["no", "yes", "no", "yes"], ["yes", "maybe"], [],
                                     ["dev.jsonl, line 2: label 'maybe' is not among the training labels "
                                      "['no', 'yes']"]),
    "dev 2 with training 0 and 1": ([0, 1, 1, 0], [0, 1, 2], [],
                                    ["dev.jsonl, line 3: label 2 is not among the training labels [0, 1]"]),
    "dev infinity in a regression": ([0.5, 1.5, 2.5], [1.0, float("inf")], [],
                                     ["dev.jsonl, line 2: label inf is not a finite number"]),
}


@pytest.mark.parametrize("case", LABEL_CASES)
def test_labels_that_cannot_be_used_are_refused_by_file_row_and_value(encoder, tmp_path, case):
    train_labels, dev_labels, overrides, parts = LABEL_CASES[case]
    train = write_jsonl(tmp_path / "train.jsonl", train_labels)
    dev = write_jsonl(tmp_path / "dev.jsonl", dev_labels)
    refused(encoder, tmp_path, custom(train, dev, *overrides), *[p.replace("train.jsonl", str(train)).replace(
        "dev.jsonl", str(dev)) for p in parts])


def test_csv_labels_are_read_as_numbers_and_checked_by_data_row(encoder, tmp_path):
    """A CSV label cell holds text: "inf" in a regression is refused at its data row, as is an empty cell."""
    dev = tmp_path / "dev.csv"
    dev.write_text("text,score\na b c,1.5\nd e f,2.5\n")
    train = tmp_path / "train.csv"
    train.write_text("text,score\nthe cat,0.5\nsat on,1.25\nthe mat,inf\n")
    overrides = custom(train, dev, "task.label_field=score")
    refused(encoder, tmp_path, overrides, f"{train}, row 3: label inf is not a finite number")
    train.write_text("text,score\nthe cat,0.5\nsat on,\nthe mat,2\n")
    refused(encoder, tmp_path, overrides, f"{train}, row 2: the label 'score' is empty")


def test_an_unlabelled_glue_dev_example_is_refused(encoder, tmp_path):
    """A local GLUE folder whose validation split holds GLUE's "unlabelled" -1: named, with what -1 means."""
    folder = tmp_path / "glue" / "sst2"
    folder.mkdir(parents=True)
    write_jsonl(folder / "train.jsonl", [0, 1, 1, 0], text="sentence")
    (folder / "validation.jsonl").write_text('{"sentence": "a fine film", "label": -1}\n')
    refused(encoder, tmp_path, ["task=sst2", f"task.data_dir={tmp_path / 'glue'}", *SMALL_RECIPE],
            f"{folder / 'validation.jsonl'}, line 1: label -1 is not one of the classes 0..1", "unlabelled")


# ---- files ----------------------------------------------------------------------------------------------------------
FILE_CASES = {  # name: (file name, content, parts of the message after the path)
    "bad JSON": ("train.jsonl", b'{"text": "a b", "label": 0}\n{"text": "c d", "label": 1\n',
                 ", line 2: not valid JSON"),
    "a JSON array per line": ("train.jsonl", b'["a b", 0]\n', ", line 1: a JSON object {...} per record"),
    "CSV row with a field too many": ("train.csv", b"text,label\na b,0\nc, d,1\n",
                                      ", line 3: 3 values, the header names 2 columns"),
    "TSV row with a field too few": ("train.tsv", b"text\tlabel\na b\t0\nc d 1\ne f\t1\n",
                                     ", line 3: 1 values, the header names 2 columns"),
    "empty": ("train.csv", b"", ": empty file"),
    "only blank lines": ("train.jsonl", b"\n  \n", ": empty file"),
    "header only": ("train.csv", b"text,label\n", ": a header and no data rows"),
    "Latin-1": ("train.csv", b"text,label\na b,0\ncaf\xe9 au lait,1\n", ", line 3: not UTF-8 text (byte 0xe9)"),
    "UTF-16": ("train.csv", "text,label\na b,0\n".encode("utf-16"), ", line 1: not UTF-8 text (byte 0xff)"),
    "UTF-16 without a byte order mark": ("train.tsv", "text\tlabel\na b\t0\n".encode("utf-16-le"),
                                         ", line 1: a NUL character"),
    "a column named twice": ("train.csv", b"text,label,text\na,0,b\n", ", line 1: the header names ['text'] twice"),
    "not parquet": ("train.parquet", b"text,label\na b,0\n", ": not a readable parquet file"),
    "a text that is not text": ("train.jsonl", b'{"text": "a b", "label": 0}\n{"text": null, "label": 1}\n',
                                ", line 2: field 'text' is None, not text"),
}


@pytest.mark.parametrize("case", FILE_CASES)
def test_files_that_cannot_be_read_are_named_by_file_and_line(encoder, tmp_path, case):
    name, content, message = FILE_CASES[case]
    (tmp_path / name).write_bytes(content)
    dev = write_jsonl(tmp_path / "dev.jsonl", [0, 1])
    refused(encoder, tmp_path, custom(tmp_path / name, dev), f"{tmp_path / name}{message}")


def test_an_empty_dev_file_is_named(encoder, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [0, 1, 0, 1])
    (tmp_path / "dev.csv").write_text("")
    refused(encoder, tmp_path, custom(train, tmp_path / "dev.csv"), f"{tmp_path / 'dev.csv'}: empty file")


# ---- the config -----------------------------------------------------------------------------------------------------
CONFIG_CASES = {  # name: (overrides, parts of the message)
    "an unknown metric": (["task=sst2", "task.metrics=[accuracy,acc]"],
                          ["task sst2: task.metrics: unknown metric(s) ['acc']"]),
    "a selection not computed": (["task=sst2", "task.selection=mcc"],
                                 ["task.selection: 'mcc' is not one of the dev scores ['accuracy']"]),
    "a plain selection with two dev splits": (["task=mnli", "task.selection=accuracy"],
                                              ["'accuracy' is not one of the dev scores ['accuracy_validation_"
                                               "matched', 'accuracy_validation_mismatched']"]),
    "a regression metric for a classification": (["task=sst2", "task.metrics=[pearson]"],
                                                 ["['pearson'] do not apply to classification"]),
    "a suite task whose metrics do not fit": (["suite=glue-small", "+suite.overrides.metrics=[accuracy]"],
                                              ["task stsb: task.metrics: ['accuracy'] do not apply to regression"]),
    "a misspelt problem": (["task=custom", "task.train=t.csv", "task.validation=d.csv", "task.problem=regresion"],
                           ["task.problem: 'regresion' is not one of ['classification', 'regression'] or null"]),
    "metrics of both problems": (["task=custom", "task.train=t.csv", "task.validation=d.csv",
                                  "task.metrics=[accuracy,pearson]"], ["do not apply to classification",
                                                                       "do not apply to regression"]),
    "one label for a classification": (["task=sst2", "task.num_labels=1"], ["task sst2: task.num_labels: 1 for a"]),
    "three text fields": (["task=mrpc", "task.text_fields=[a,b,c]"], ["one or two fields"]),
    "a seed twice": (["task=sst2", "seeds=[1,1]"], ["seeds: distinct integers"]),
    "a task named results": (["task=sst2", "task.name=results"], ["task.name: 'results'"]),
    "a learning rate of 0": (["task=sst2", "task.recipe.lr=0"], ["task sst2: task.recipe.lr: a number > 0"]),
    "an unknown suite task": (["suite=glue", "suite.tasks=[sst2,sts]"], ["suite.tasks: there is no task 'sts'"]),
    # the engine's options, for every batch size of a grid, before anything is written (not when a run starts)
    "a micro-batch that does not divide the batch": (["task=sst2", "train.micro_batch_size=5"], [
        "task sst2: task.recipe.batch_size (32) must be a multiple of train.micro_batch_size x world size (5 x 1)"]),
    "a grid batch size that does not divide": (["task=sst2", "task.recipe.batch_size=[64,48]",
                                                "train.micro_batch_size=32"], ["task.recipe.batch_size (48)"]),
    "offload without ZeRO": (["task=sst2", "deepspeed.offload=true"],
                             ["deepspeed.offload needs deepspeed.zero_stage >= 1"]),
    "a misspelt DeepSpeed key": (["task=sst2", "+deepspeed.extra.zero_optimization.reduce_bucket_sze=5"], [
        "deepspeed.extra.zero_optimization.reduce_bucket_sze: extra inputs are not permitted"]),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_config_mistakes_are_refused_before_the_checkpoint_is_loaded(encoder, tmp_path, case):
    """The checkpoint does not exist: the config's error comes first."""
    overrides, parts = CONFIG_CASES[case]
    refused(encoder, tmp_path, overrides, *parts, checkpoint=tmp_path / "no-such-checkpoint")


def test_the_shipped_task_and_suite_configs_pass_the_checks(tmp_path):
    from deberta_pretrain.finetune.config import check_finetune_keys, validate_finetune

    for suite in ("glue", "glue-small"):
        check_finetune_keys(compose("checkpoint=x", f"suite={suite}"))
        validate_finetune(compose("checkpoint=x", f"suite={suite}"))
    # a suite's own train.* values win over finetune.yaml's defaults, and the command line over both
    assert compose("checkpoint=x", "suite=glue-small").train.max_train_samples == 2000
    assert compose("checkpoint=x", "suite=glue-small", "train.max_eval_samples=7").train.max_eval_samples == 7
    for name in sorted(p.stem for p in Path(ROOT, "conf", "task").glob("*.yaml")):
        cfg = (compose("checkpoint=x", f"task={name}", "task.train=t.csv", "task.validation=d.csv")
               if name == "custom" else compose("checkpoint=x", f"task={name}"))
        check_finetune_keys(cfg)  # mnli's extra eval splits included
        validate_finetune(cfg)


# ---- results --------------------------------------------------------------------------------------------------------
def test_results_hold_no_nan(tmp_path):
    """JSON files refuse NaN and infinities; a metric undefined on the predictions is None, and the summary, the
    selection and the table say so."""
    from deberta_pretrain.fileio import write_json_atomic
    from deberta_pretrain.finetune.metrics import better, compute, selection_score
    from deberta_pretrain.finetune.results import markdown, summarize

    path = tmp_path / "results.json"
    with pytest.raises(ValueError, match=f"{path}: not written"):
        write_json_atomic(path, {"pearson": float("nan")})
    assert not path.exists()
    write_json_atomic(path, {"pearson": 0.5})
    with pytest.raises(ValueError, match="not written"):
        write_json_atomic(path, {"loss": [1.0, float("-inf")]})
    assert strict_json(path) == {"pearson": 0.5}

    scores = compute(["pearson", "spearman"], [2.0, 2.0, 2.0], [1.0, 2.0, 3.5])
    assert scores == {"pearson": None, "spearman": None}
    assert compute(["mcc", "accuracy"], [1, 1, 1], [0, 1, 1]) == pytest.approx({"mcc": 0.0, "accuracy": 2 / 3})
    assert selection_score({"pearson": None, "spearman": 0.5}, ["pearson", "spearman"], None) is None
    assert better(0.1, None) and not better(None, 0.1) and not better(None, None)

    runs = [{"best": {"step": 2, "pearson": value, "selection_score": value, "train_loss": 1.0}}
            for value in (None, 0.25, 0.75)]
    summary = summarize(runs)
    assert summary == {"pearson": {"median": 0.5, "min": 0.25, "max": 0.75, "undefined_seeds": 1}}
    assert summarize(runs[:1]) == {"pearson": {"median": None, "min": None, "max": None, "undefined_seeds": 1}}
    table = markdown({"suite": "s", "checkpoint": "c", "from_scratch": False, "pretraining_step": 1, "seeds": [1],
                      "tasks": {"stsb": {"summary": summarize(runs[:1]), "chosen": {"lr": 2e-5, "described": ""},
                                         "grid": [{"recipe": {"lr": 2e-5}, "median_selection_score": None}]}}})
    assert "| stsb | lr 2e-05 | pearson | n/a | n/a | n/a |" in table


def test_a_training_loss_that_is_not_finite_stops_naming_task_seed_and_step(encoder, tmp_path):
    """A learning rate far too high: the built-in task stops at the first non-finite loss, nothing is written."""
    out = tmp_path / "out"
    before = snapshot(encoder)
    with pytest.raises(ValueError, match=r"task python-help seed 3: the training loss is nan at step 2; this run "
                                         r"stopped"):
        run(encoder, out, "task=python-help", *SMALL_RECIPE, "task.recipe.lr=1e30", "seeds=[3]", "train.max_steps=3",
            "train.max_train_samples=32", "train.max_eval_samples=8")
    assert os.listdir(out) == ["finetune.json"] and snapshot(encoder) == before  # the folder's marker, no results
    # the corrected command runs in that folder (with wandb writing offline into it, as by default)
    results = run(encoder, out, "task=python-help", *SMALL_RECIPE, "seeds=[3]", "train.max_steps=3",
                  "train.max_train_samples=32", "train.max_eval_samples=8", "logging.wandb.mode=offline")
    assert results["tasks"]["python-help"]["runs"][0]["steps"] == 3 and (out / "wandb").is_dir()


# ---- the command line -----------------------------------------------------------------------------------------------
def test_the_command_line_prints_one_line_and_exits_1(encoder, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\nthe cat sat,0\non the, mat,1\n")
    dev = write_jsonl(tmp_path / "dev.jsonl", [0, 1])
    before = snapshot(encoder, tmp_path)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "finetune.py"), f"checkpoint={encoder}",
                             *custom(train, dev), f"output={tmp_path / 'out'}", *QUICK], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1"))
    assert result.returncode == 1, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {train}, line 3: 3 values, the header names 2 "
                                                     f"columns"), result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout
    assert snapshot(encoder, tmp_path) == before and not (tmp_path / "out").exists()



def test_a_number_of_seeds_is_told_to_be_a_list():
    """seeds=3 is a user meaning three seeds (or seed 3): the message shows both list forms."""
    from deberta_pretrain.finetune.config import validate_finetune

    with pytest.raises(ValueError) as error:
        validate_finetune(compose("checkpoint=x", "task=sst2", "seeds=3"))
    assert str(error.value) == ("seeds=3 is not a list of seeds: write seeds='[3]' for the one seed 3, or "
                                "seeds='[1,2,3]' for three seeds")

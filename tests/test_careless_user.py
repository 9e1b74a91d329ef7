"""What a careless user types never destroys data or yields a silently wrong result (issue #19): a tool replaces
only its own kind of output; a resumed run runs with the config it records; a misspelt key fails by name, with
``+`` too; errors say what is true; Ctrl-C checkpoints like SIGTERM; settings that run but rarely as meant warn.
Each refusal is checked for its exit code or exception, its message, and that no file that existed changed."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from deberta_pretrain.data.prepare import prepare
from deberta_pretrain.data.vocab_training import train_vocabulary
from deberta_pretrain.export import export
from deberta_pretrain.training.metrics import read_metrics
from pretrain_helpers import ROOT, checkpoint_dir, fault_env, module_state, run_pretrain, tiny_overrides


def snapshot(*folders) -> dict:
    """Every file below ``folders`` with its sha256."""
    out = {}
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


def fake_run(path):
    """A run directory as launch/pretrain.py leaves it (the files matter, not their content)."""
    os.makedirs(path / ".hydra")
    (path / ".hydra" / "config.yaml").write_text("name: run\n")
    (path / "metrics.jsonl").write_text('{"split": "train", "step": 1, "loss": 9.0}\n')
    os.makedirs(path / "checkpoints" / "step_00000002")
    (path / "checkpoints" / "latest").write_text("step_00000002")
    (path / "checkpoints" / "step_00000002" / "mp_rank_00_model_states.pt").write_bytes(b"weights")
    return path


def prepare_config(output, source=None, **overrides):
    cfg = {"output": str(output), "input": source or {"type": "python-help"}, "vocab": None, "engine": "auto",
           "max_seq_length": 64, "packing": "continuous", "validation_fraction": 0.1, "segment_mb": 0.1,
           "num_proc": 1, "overwrite": False}
    cfg.update(overrides)
    return cfg


def text_corpus(folder, lines_per_file=(("one two three four", "five six seven"), ("eight nine", "ten eleven")),
                bad_line: bytes | None = None):
    os.makedirs(folder, exist_ok=True)
    for i, lines in enumerate(lines_per_file):
        data = "\n".join(lines).encode() + b"\n"
        if bad_line is not None and i == len(lines_per_file) - 1:
            data += bad_line
        (folder / f"part{i}.txt").write_bytes(data)
    return {"type": "text", "paths": [str(folder / "*.txt")], "doc_separator": "line"}


# ---- 1. a tool deletes only what it wrote ------------------------------------------------------------------------
def test_export_never_replaces_a_run_directory_or_other_files(tmp_path):
    run = fake_run(tmp_path / "run")
    users = tmp_path / "mine"
    os.makedirs(users)
    (users / "notes.txt").write_text("my notes")
    dataset = tmp_path / "data"
    os.makedirs(dataset)
    (dataset / "manifest.json").write_text('{"format": "deberta_pretrain.shards/1"}')
    os.makedirs(tmp_path / "project")
    (tmp_path / "project" / "manifest.json").write_text('{"name": "a web app"}')  # only the name in common
    before = snapshot(tmp_path)
    with pytest.raises(FileExistsError, match=r"run is not empty and is not an earlier export .*checkpoints/"):
        export(run, run, overwrite=True)  # the case: the run itself as the output
    with pytest.raises(FileExistsError, match=r"holds notes\.txt\); nothing was changed"):
        export(run, users, overwrite=True)
    with pytest.raises(FileExistsError, match=r"inside .*checkpoints"):
        export(run, run / "checkpoints" / "step_00000002" / "release", overwrite=True)
    with pytest.raises(FileExistsError, match=r"inside .*data, which belongs to another output"):
        export(run, dataset / "release")
    assert snapshot(tmp_path) == before
    with pytest.raises(FileNotFoundError, match="neither a run directory"):  # past the output check: a folder
        export(tmp_path / "project", tmp_path / "project" / "release")  # with a manifest.json of its own is fine


def test_train_tokenizer_and_prepare_refuse_folders_that_are_not_theirs(tmp_path):
    folder = tmp_path / "vocab"
    os.makedirs(folder)
    (folder / "spm.model").write_bytes(b"a vocabulary the user made elsewhere")
    (folder / "README").write_text("keep me")
    before = snapshot(tmp_path)
    settings = {"output": str(folder), "kind": "spm", "vocab_size": 400, "sample_mb": 1, "held_out_fraction": 0.1,
                "character_coverage": 1.0, "num_threads": 1, "seed": 0, "overwrite": True,
                "input": {"type": "python-help"}}
    with pytest.raises(FileExistsError, match=r"not an earlier vocabulary .*README, spm\.model"):
        train_vocabulary(settings, progress=False)
    with pytest.raises(FileExistsError, match=r"not an earlier prepared dataset .*README"):
        prepare(prepare_config(folder, overwrite=True), progress=False)
    assert snapshot(tmp_path) == before


def test_a_replacement_that_fails_half_way_leaves_the_old_data_intact(tmp_path):
    """prepare overwrite=true with other settings writes beside the old dataset; the second file of the new source is
    not UTF-8, so the new preparation fails after its first segment: the old dataset is untouched and trusted."""
    out = tmp_path / "data"
    prepare(prepare_config(out, text_corpus(tmp_path / "good")), progress=False)
    before = snapshot(out)
    bad = text_corpus(tmp_path / "bad", bad_line=b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"part1\.txt: line 3 is not UTF-8 text"):
        prepare(prepare_config(out, bad, max_seq_length=32, overwrite=True, segment_mb=1e-6), progress=False)
    assert snapshot(out) == before
    assert sorted(os.listdir(tmp_path)) == ["bad", "data", "good"]  # no half-made replacement left beside it


def test_plots_go_only_to_a_plots_folder(tmp_path):
    from deberta_pretrain.training.plots import plot_run

    run = fake_run(tmp_path / "run")
    figures = tmp_path / "figures"
    os.makedirs(figures)
    (figures / "loss.png").write_bytes(b"the user's own figure")
    before = snapshot(tmp_path)
    with pytest.raises(FileExistsError, match=r"not an earlier plots folder .*loss\.png"):
        plot_run(run, figures)
    with pytest.raises(FileExistsError, match=r"not an earlier plots folder .*checkpoints/"):
        plot_run(run, run)
    assert snapshot(tmp_path) == before
    written = plot_run(run, tmp_path / "new")
    assert sorted(os.listdir(tmp_path / "new")) == ["loss.png", "plots.json"] and len(written) == 1
    plot_run(run, tmp_path / "new")  # an earlier plots folder is drawn again


def test_a_metrics_line_cut_short_by_a_kill_is_dropped_and_a_bad_one_named(tmp_path):
    from deberta_pretrain.training.metrics import MetricsLogger
    from deberta_pretrain.training.plots import plot_run

    run = fake_run(tmp_path / "run")
    path = run / "metrics.jsonl"
    path.write_text('{"split": "train", "step": 1, "loss": 9.0}\n{"split": "train", "step": 2, "loss": 8.0}\n'
                    '{"split": "train", "st')  # killed while writing step 3
    assert [r["step"] for r in read_metrics(run)] == [1, 2]
    MetricsLogger(str(run), OmegaConf.create({"wandb": {"mode": "disabled"}}), "run", None, start_step=2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]  # resumed from step 2
    path.write_text(path.read_text() + '{"split": "validation/sst2", "st')  # fine-tuning keeps every record
    log = MetricsLogger(str(run), OmegaConf.create({"wandb": {"mode": "disabled"}}), "ft", None, start_step=None)
    log.log({"split": "validation/sst2", "step": 4, "accuracy": 0.5})
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 4]  # the new record is not glued to the cut one
    path.write_text('{"split": "train", "step": 1, "loss": 9.0}\nloss 8.0\n{"split": "train", "step": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a metrics record: 'loss 8.0'"):
        read_metrics(run)
    path.write_text("")
    with pytest.raises(ValueError, match="holds no records yet"):
        plot_run(run)
    assert not (run / "plots").exists()


# ---- 3. strict keys, with + too ------------------------------------------------------------------------------------
def compose(config_dir: str, name: str, overrides):
    from hydra import compose as hydra_compose  # noqa: PLC0415
    from hydra import initialize_config_dir  # noqa: PLC0415

    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf", config_dir), version_base=None):
        return hydra_compose(name, overrides=list(overrides))


@pytest.mark.parametrize("entry, overrides, message", [
    ("pretrain", ["+train.max_step=2"], "unknown key train.max_step (did you mean train.max_steps?)"),
    ("pretrain", ["+optim.learning_rate=1e-4"], "unknown key optim.learning_rate (valid keys: lr, "),
    ("pretrain", ["objective=rtd", "+rtd.generator.hiden_size=64"],
     "unknown key rtd.generator.hiden_size (did you mean rtd.generator.hidden_size?)"),
    ("prepare", ["+input.doc_seperator=blank_line", "input=text"],
     "unknown key input.doc_seperator (did you mean input.doc_separator?)"),
    ("train_tokenizer", ["+vocab_sise=300"], "unknown key vocab_sise (did you mean vocab_size?)"),
    ("finetune", ["task=custom", "+task.recipe.learning_rate=1e-4"],
     "unknown key task.recipe.learning_rate (valid keys: lr, "),
    ("finetune", ["suite=glue-small", "+suite.overides.recipe.lr=1"],
     "unknown key suite.overides (did you mean suite.overrides?)"),
])
def test_an_added_key_that_the_schema_lacks_fails_by_name(entry, overrides, message):
    from deberta_pretrain import config
    from deberta_pretrain.finetune import config as finetune_config

    config.register_configs()
    config.register_data_prep_configs()
    finetune_config.register_finetune_configs()
    if entry == "pretrain":
        cfg = compose("", "pretrain", ["name=x", "data.path=y", *overrides])
        check = config.validate
    elif entry == "finetune":
        cfg = compose("", "finetune", ["checkpoint=x", *overrides])
        check = finetune_config.check_finetune_keys
    else:
        cfg = compose("data_prep", entry, ["output=x", *overrides])
        schema = config.PrepareSchema if entry == "prepare" else config.TrainTokenizerSchema
        check = (lambda c: config.check_data_prep_keys(c, schema))  # noqa: E731
    with pytest.raises(ValueError) as error:
        check(cfg)
    assert message in str(error.value)


def test_every_shipped_config_passes_the_key_check():
    """No false alarm: every experiment preset (with each objective and ZeRO config) and every data-prep source."""
    from deberta_pretrain import config

    config.register_configs()
    config.register_data_prep_configs()
    presets = [["experiment=" + p.stem] for p in sorted((Path(ROOT) / "conf" / "experiment").glob("*.yaml"))]
    presets += [["objective=rtd", f"deepspeed={p.stem}"] for p in sorted((Path(ROOT) / "conf" / "deepspeed").glob("*"))]
    for overrides in presets:
        config.check_pretrain_keys(compose("", "pretrain", ["name=x", "data.path=y", *overrides]))
    for source in sorted(p.stem for p in (Path(ROOT) / "conf" / "data_prep" / "input").glob("*.yaml")):
        for name, schema in (("prepare", config.PrepareSchema), ("train_tokenizer", config.TrainTokenizerSchema)):
            config.check_data_prep_keys(compose("data_prep", name, ["output=x", f"input={source}"]), schema)


@pytest.mark.parametrize("folder, tool, overrides, message", [
    ("", "export", ["checkpoint=a", "output=b", "+overwite=true"], "unknown key overwite (did you mean overwrite?)"),
    ("", "plot", ["run=a", "+outt=figs"], "unknown key outt (did you mean out?)"),
    ("data_prep", "build_vocab", ["output=v.bin", "+dict=d.txt"], "unknown key dict (did you mean dict_txt?)"),
    ("", "export", ["checkpoint=a"], "no value for output"),
])
def test_the_tools_name_a_misspelt_or_missing_key_too(folder, tool, overrides, message):
    """export, plot and build_vocab are Hydra apps with schemas like the others (Hydra names a misspelt key without
    +; the schema check names one added with +, and a key without a value); their shipped configs pass."""
    from deberta_pretrain import config

    config.register_tool_configs()
    with pytest.raises(ValueError) as error:
        config.check_tool_config(compose(folder, tool, overrides), tool)
    assert message in str(error.value)
    config.check_tool_config(compose(folder, tool, [o for o in overrides if not o.startswith("+")] + (
        ["output=b"] if tool == "export" else [])), tool)


# ---- 5. errors say what is true -------------------------------------------------------------------------------------
def test_fine_tuning_results_are_not_taken_for_a_run(tmp_path):
    """A fine-tuning results folder holds a metrics.jsonl like a run: export, fine-tuning, plots and a pretraining
    run's name= must still not take it for one (a run would have rewritten its metrics)."""
    from deberta_pretrain.finetune.pretrained import load_pretrained
    from deberta_pretrain.layout import is_run_directory
    from deberta_pretrain.training.plots import plot_run

    results = tmp_path / "finetune" / "glue-small" / "step_00000006"
    os.makedirs(results)
    (results / "finetune.json").write_text(json.dumps({"suite": "glue-small", "checkpoint": str(tmp_path)}))
    (results / "metrics.jsonl").write_text('{"split": "validation/sst2", "step": 2, "accuracy": 0.5}\n')
    before = snapshot(tmp_path)
    assert not is_run_directory(results) and is_run_directory(fake_run(tmp_path / "run"))
    for load in (lambda: export(results, tmp_path / "out"), lambda: load_pretrained(str(results))):
        with pytest.raises(ValueError, match=r"step_00000006 holds fine-tuning results, not a checkpoint"):
            load()
    with pytest.raises(ValueError, match=r"holds fine-tuning results \(their table is results.md\)"):
        plot_run(results)
    assert {k: v for k, v in snapshot(tmp_path).items() if "/run/" not in k} == before


@pytest.mark.parametrize("case", ["missing dict", "empty dict", "output a folder", "output remote", "bad json"])
def test_build_vocab_names_a_bad_input_in_one_line_and_writes_nothing(tmp_path, case):
    (tmp_path / "encoder.json").write_text('{"a": 0, "b": 1, "ab": 2}' if case != "bad json" else '{"a": 0,')
    (tmp_path / "vocab.bpe").write_text("#version: 0.2\na b\n")
    (tmp_path / "dict.txt").write_text("" if case == "empty dict" else "0 10\n1 5\n")
    os.makedirs(tmp_path / "folder")
    output, dict_txt, message = tmp_path / "v.bin", tmp_path / "dict.txt", None
    if case == "missing dict":
        dict_txt, message = tmp_path / "dcit.txt", f"No such file or directory: '{tmp_path / 'dcit.txt'}'"
    message = message or {"empty dict": f"{dict_txt}: an empty dict.txt",
                          "output a folder": "is a folder; name the file to write",
                          "output remote": "build_vocab writes a local file",
                          "bad json": f"{tmp_path / 'encoder.json'}: not a JSON encoder file"}.get(case)
    output = {"output a folder": tmp_path / "folder", "output remote": "s3://bucket/v.bin"}.get(case, output)
    before = snapshot(tmp_path)
    result = subprocess.run([sys.executable, "data_prep/build_vocab.py", f"output={output}", f"dict_txt={dict_txt}",
                             f"encoder_json={tmp_path / 'encoder.json'}", f"vocab_bpe={tmp_path / 'vocab.bpe'}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().startswith("error: ") and message in result.stderr, result.stderr
    assert snapshot(tmp_path) == before and not os.path.exists("s3:")


def test_a_run_without_a_checkpoint_yet_is_called_that(tmp_path):
    from deberta_pretrain.finetune.pretrained import load_pretrained

    run = tmp_path / "run"
    os.makedirs(run / ".hydra")
    (run / ".hydra" / "config.yaml").write_text("name: run\n")
    (run / "train.log").write_text("started\n")  # killed before its first checkpoint
    before = snapshot(tmp_path)
    for load in (lambda: export(run, tmp_path / "out"), lambda: load_pretrained(str(run))):
        with pytest.raises(ValueError, match=r"run is a run directory with no checkpoint yet"):
            load()
    os.makedirs(run / "checkpoints")  # killed before its first save: the folder exists, empty
    with pytest.raises(ValueError, match=r"no checkpoint yet"):
        export(run, tmp_path / "out")
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_a_failed_prepare_leaves_the_folder_as_it_was_so_the_corrected_command_runs(tmp_path):
    empty_source = text_corpus(tmp_path / "blank", lines_per_file=(("", "   "),))
    with pytest.raises(ValueError, match="the input gave no training text"):
        prepare(prepare_config(tmp_path / "new", empty_source), progress=False)
    assert not (tmp_path / "new").exists()
    os.makedirs(tmp_path / "empty")  # an empty folder the user made stays, empty
    with pytest.raises(ValueError, match=r"part0\.txt: line 2 is not UTF-8 text \(invalid start byte: b'\\xff'\)"):
        prepare(prepare_config(tmp_path / "empty", text_corpus(tmp_path / "latin", (("ok",),), b"\xff\n")),
                progress=False)
    assert os.listdir(tmp_path / "empty") == []
    manifest = prepare(prepare_config(tmp_path / "new", text_corpus(tmp_path / "text")), progress=False)
    assert manifest["splits"]["train"]["num_documents"] + manifest["splits"]["validation"]["num_documents"] == 4


# ---- 8. warnings where a user would want one ------------------------------------------------------------------------
def test_settings_that_run_but_rarely_as_meant_are_warned_about():
    from conftest import compose_pretrain, small_config

    from deberta_pretrain.data.corpus import Corpus
    from deberta_pretrain.deberta import ModelConfig
    from deberta_pretrain.training.run import settings_warnings

    def corpus(cfg, *sizes):
        """The run's data as the warnings see it: (training, validation) blocks per source."""
        out = Corpus(cfg.data)
        for source, (train, validation) in zip(out.sources, sizes):
            source.train, source.validation = range(train), range(validation)
        return out

    cfg = compose_pretrain("name=x", "data.path=data/x", "train.global_batch_size=64")
    model = ModelConfig.from_dict(small_config("v3", vocab_size=128100, num_hidden_layers=2))
    generator = ModelConfig.from_dict(small_config("v3", num_hidden_layers=3))
    warnings = settings_warnings(cfg, corpus(cfg, (40, 0)), 3001, {"model": model, "generator": generator})
    assert len(warnings) == 4
    assert "train.global_batch_size (64) is larger than the training split of data/x (40 blocks)" in warnings[0]
    assert "data/x has no validation blocks: evaluation is skipped" in warnings[1]
    assert "125099 embedding rows are never trained; set model.vocab_size=3001" in warnings[2]
    assert "the generator (3 layers) is as deep as the discriminator (2)" in warnings[3]
    released = ModelConfig.from_dict(small_config("v3", vocab_size=128100))
    assert settings_warnings(cfg, corpus(cfg, (64, 10)), 128001, {"model": released}) == []  # rounded-up table
    mixture = compose_pretrain("name=x", "data.sources={web: {path: data/web, weight: 2}, wiki: {path: data/wiki, "
                               "weight: 1}}", "train.global_batch_size=4")
    assert settings_warnings(mixture, corpus(mixture, (64, 0), (64, 10)), 128001, {"model": released}) == [
        "web (data/web) has no validation blocks: the validation loss is that of wiki (weighted by their shares) and "
        "the per-source records skip web"]


def test_a_bpe_vocabulary_larger_than_the_corpus_supports_says_how_many_ids_it_made(tmp_path, caplog):
    source = text_corpus(tmp_path / "small", (("aaa bbb aaa bbb ccc",),))
    settings = {"output": str(tmp_path / "vocab"), "kind": "gpt2-bpe", "vocab_size": 2000, "sample_mb": 1,
                "held_out_fraction": 0.0, "character_coverage": 1.0, "num_threads": 1, "seed": 0,
                "overwrite": False, "input": source}
    report = train_vocabulary(settings, progress=False)
    assert report["vocab_size"] < 300
    assert f"the vocabulary has {report['vocab_size']} ids instead of vocab_size=2000" in caplog.text


# ---- 2. a run's recorded config is what it runs with (pretraining runs: slow) -------------------------------------
@pytest.mark.slow
def test_the_fault_tables_lower_lr_advice_takes_effect_and_fixed_keys_are_refused(python_help_64, tmp_path):
    """The loss turns NaN at step 3: the run stops naming the step, step 2's checkpoint intact and finite. Resumed
    with optim.lr ten times lower and a longer run, the logged learning rate from step 3 on is the new peak on the
    same schedule; the change is logged, recorded in config_changes.jsonl and in .hydra/config.yaml. A change of a
    key that cannot change is refused naming both values, and changes nothing."""
    run = tmp_path / "run"
    common = {"train.max_steps": 4, "optim.warmup_steps": 0, "train.eval_every": 100}
    first = run_pretrain(tiny_overrides(python_help_64, tmp_path, "run", **common), env=fault_env("nan-loss@3"),
                         check=False)
    assert first.returncode == 1 and "the training loss is not finite at step 3" in first.stdout + first.stderr
    assert "Resume from it with a lower optim.lr" in first.stdout + first.stderr
    assert open(run / "checkpoints" / "latest").read().strip() == "step_00000002"
    assert not os.path.exists(checkpoint_dir(run, 4))
    assert all(torch.isfinite(t).all() for t in module_state(run, 2).values())
    resumed = run_pretrain(tiny_overrides(python_help_64, tmp_path, "run", **{
        **common, "optim.lr": 1e-4, "train.max_steps": 5, "train.eval_every": 5}))
    out = resumed.stdout + resumed.stderr
    assert "resuming at step 2 with optim.lr=0.0001 (the checkpoint was trained with 0.001)" in out
    lr = {r["step"]: r["lr"] for r in read_metrics(run) if r["split"] == "train"}
    # linear decay without warm-up; the logged rate is the next update's: (1 - (step + 1) / max_steps) x the peak.
    # Step 2 was logged by the first run (peak 1e-3 over 4 steps); from step 3 on, the new peak over 5 steps (the
    # old code kept 1e-3: 2e-4 at step 3)
    assert lr[2] == pytest.approx(1e-3 * 0.25) and lr[3] == pytest.approx(1e-4 * 0.2) and lr[4] == 0.0
    assert json.loads((run / "config_changes.jsonl").read_text()) == {
        "step": 2, "changes": {"optim.lr": [1e-3, 1e-4], "train.eval_every": [100, 5], "train.max_steps": [4, 5]}}
    assert OmegaConf.load(run / ".hydra" / "config.yaml").optim.lr == 1e-4
    before = snapshot(tmp_path)
    refused = run_pretrain(tiny_overrides(python_help_64, tmp_path, "run", **{  # a deeper model would not even load:
        **common, "train.max_steps": 6, "data.masking": "span", "train.global_batch_size": 8,  # refused before that
        "model.num_hidden_layers": 3}), check=False)
    assert refused.returncode == 1
    out = refused.stdout + refused.stderr
    assert "data.masking: 'token' in the checkpoint, 'span' now" in out
    assert "train.global_batch_size: 4 in the checkpoint, 8 now" in out
    assert "model.num_hidden_layers: 2 in the checkpoint, 3 now" in out and "none can be resumed" not in out
    assert snapshot(tmp_path) == before


# ---- 6. Ctrl-C is handled like SIGTERM (slow; once, with an exact resume: test_pretrain.py) ---------------------
@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once_and_leaves_the_last_checkpoint(python_help_64, tmp_path):
    overrides = tiny_overrides(python_help_64, tmp_path, "run", **{"data.num_workers": 1})
    twice = run_pretrain(overrides, env=fault_env("ctrl-c-twice@2"), check=False)  # Ctrl-C twice before step 3
    out = twice.stdout + twice.stderr
    assert twice.returncode == -signal.SIGINT and "Traceback" not in out, out[-3000:]
    assert "Ctrl-C: will checkpoint and stop after this step (Ctrl-C again to exit at once)" in out
    assert open(tmp_path / "run" / "checkpoints" / "latest").read().strip() == "step_00000002"
    assert not os.path.exists(checkpoint_dir(tmp_path / "run", 3))

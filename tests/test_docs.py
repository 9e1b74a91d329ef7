"""The commands of docs/ and the README: every pretraining, data-prep, export, plot and fine-tuning command composes
into a valid config (its keys exist, its values pass the checks), and the quick paths that run on a CPU run as
written (scaled down by appended overrides). The documented defaults of the pretraining keys equal those of conf/."""

import glob
import math
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import compose_pretrain

from deberta_pretrain.training.metrics import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def bash_blocks(path: str) -> list[list[str]]:
    """The ```bash blocks of a Markdown file, as lists of commands (continued lines joined)."""
    text = open(path, encoding="utf-8").read()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    return [[c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip() and not c.startswith("#")]
            for block in blocks]


def pretrain_overrides(command: str) -> list[str]:
    words = shlex.split(command)
    script = next(i for i, w in enumerate(words) if w.endswith("launch/pretrain.py"))
    return [w for w in words[script + 1:] if "=" in w and not w.startswith("[")]  # [optional] parts are prose


def test_docs_exist_and_are_linked_from_the_readme():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert DOCS
    for path in DOCS:
        assert f"docs/{os.path.basename(path)}" in readme, path


@pytest.mark.parametrize("doc", [os.path.basename(p) for p in DOCS])
def test_every_pretraining_command_of_the_docs_composes(doc):
    from deberta_pretrain.config import validate

    commands = [c for block in bash_blocks(os.path.join(ROOT, "docs", doc)) for c in block
                if "launch/pretrain.py" in c]
    for command in commands:
        validate(compose_pretrain(*pretrain_overrides(command)))  # unknown keys, types, values: named


def tool_checks() -> dict:
    """script -> (config folder under conf/, config name, the check its entry point runs on the composed config)."""
    from deberta_pretrain import config
    from deberta_pretrain.finetune.config import check_finetune_keys, register_finetune_configs, validate_finetune

    config.register_data_prep_configs()
    config.register_tool_configs()
    register_finetune_configs()
    return {
        "data_prep/prepare.py": ("data_prep", "prepare",
                                 lambda c: config.check_data_prep_keys(c, config.PrepareSchema)),
        "data_prep/train_tokenizer.py": ("data_prep", "train_tokenizer",
                                         lambda c: config.check_data_prep_keys(c, config.TrainTokenizerSchema)),
        "data_prep/build_vocab.py": ("data_prep", "build_vocab", lambda c: config.check_tool_config(c, "build_vocab")),
        "launch/export.py": ("", "export", lambda c: config.check_tool_config(c, "export")),
        "launch/plot.py": ("", "plot", lambda c: config.check_tool_config(c, "plot")),
        "launch/finetune.py": ("", "finetune", lambda c: (check_finetune_keys(c), validate_finetune(c))),
    }


def test_every_other_command_of_the_docs_composes_and_passes_its_checks():
    from hydra import compose, initialize_config_dir

    checks, seen = tool_checks(), set()
    for path in [*DOCS, os.path.join(ROOT, "README.md")]:
        for command in (c for block in bash_blocks(path) for c in block):
            words = shlex.split(command, comments=True)
            script = next((w for w in words if w in checks), None)
            if script is None:
                continue
            folder, name, check = checks[script]
            overrides = [w for w in words[words.index(script) + 1:] if "=" in w]
            with initialize_config_dir(os.path.join(ROOT, "conf", folder), version_base=None):
                check(compose(name, overrides=overrides))  # unknown keys, types, values: named
            seen.add(script)
    assert seen == set(checks) - {"data_prep/build_vocab.py"}  # build_vocab: inline in data-prep.md, no block


# The key tables of the pretraining configuration: | `key` | default | meaning |
CONFIG_TABLES = ("configuration.md", "rtd.md")
KEY_ROW = re.compile(r"^\|\s*`([a-z_]+(?:\.[a-z_]+)*)`\s*\|([^|]*)\|")
NOT_DOCUMENTED = object()


def documented_defaults(path: str) -> list[tuple[str, object]]:
    """(key, default) for every row of the Markdown tables in ``path`` whose key is a config key (``model.*`` and
    the like are not) and whose default is a literal; "(required)", "from `model=`" and prose are left out."""
    rows = []
    for line in open(path, encoding="utf-8"):
        match = KEY_ROW.match(line.strip())
        if match:
            cell = match.group(2).strip().replace("`", "").strip()
            value = literal(cell)
            if value is not NOT_DOCUMENTED:
                rows.append((match.group(1), value))
    return rows


def literal(cell: str):
    """A table cell's value as YAML would read it: null, true/false, a number, {} or [], a bare word."""
    if cell == "null":
        return None
    if cell in ("true", "false"):
        return cell == "true"
    if cell in ("{}", "[]"):
        return {} if cell == "{}" else []
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        return float(cell)
    except ValueError:
        pass
    return cell if re.fullmatch(r"[A-Za-z0-9_./-]+", cell) else NOT_DOCUMENTED


def same_value(documented, configured) -> bool:
    from omegaconf import OmegaConf  # noqa: PLC0415

    if OmegaConf.is_config(configured):
        configured = OmegaConf.to_container(configured)
    if documented is None or isinstance(documented, (bool, str, dict, list)):
        return type(documented) is type(configured) and documented == configured
    return (isinstance(configured, (int, float)) and not isinstance(configured, bool)
            and math.isclose(documented, configured, rel_tol=1e-12, abs_tol=0.0))


@pytest.mark.parametrize("doc", CONFIG_TABLES)
def test_documented_defaults_equal_the_yaml(doc):
    from omegaconf import OmegaConf

    rows = documented_defaults(os.path.join(ROOT, "docs", doc))
    assert len(rows) >= (30 if doc == "configuration.md" else 5), rows  # the table was found and read
    completing = ("name=x", "data.path=d")  # the keys without a default; their own rows are not compared
    configs = {"": compose_pretrain(*completing),
               "rtd.": compose_pretrain(*completing, "objective=rtd")}  # rtd.* exist only under objective=rtd
    wrong = []
    for key, documented in rows:
        if any(override.startswith(f"{key}=") for override in completing):
            continue
        cfg = configs["rtd." if key.startswith("rtd.") else ""]
        configured = OmegaConf.select(cfg, key, default=NOT_DOCUMENTED)
        if configured is NOT_DOCUMENTED:
            wrong.append(f"{key}: documented, but no such key in conf/")
        elif not same_value(documented, configured):
            wrong.append(f"{key}: {documented!r} in docs/{doc}, {configured!r} in conf/")
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
def test_the_two_source_recipe_runs_as_written(tmp_path):
    block = bash_blocks(os.path.join(ROOT, "docs", "mixtures-and-phases.md"))[0]
    notes = tmp_path / "corpus" / "notes"
    notes.mkdir(parents=True)
    (notes / "sums.txt").write_text("".join(f"{a} plus {b} makes {a + b}.\n" for a in range(40) for b in range(40)))
    scaled = ["train.max_steps=4", "train.eval_every=2", "train.checkpoint_every=4", "train.log_every=2",
              "train.global_batch_size=8", "train.micro_batch_size=8", "train.eval_samples=8",
              "logging.wandb.mode=disabled", "logging.progress_bar=false"]
    for command in block:
        words = [sys.executable if w == "python" else w for w in shlex.split(command)]
        words = [re.sub(r"(^|=|\[|: )(data|corpus|outputs)/", lambda m: f"{m.group(1)}{tmp_path}/{m.group(2)}/", w)
                 for w in words]
        if words[1].endswith("launch/pretrain.py"):
            words += [f"output_root={tmp_path / 'outputs'}", *scaled]
        result = subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    records = read_metrics(tmp_path / "outputs" / "mixture")
    assert {r["split"] for r in records} == {"train", "validation", "validation/help", "validation/notes"}
    train = [r for r in records if r["split"] == "train"]
    assert [(r["samples/help"], r["samples/notes"]) for r in train] == [(11, 5), (22, 10)]  # 0.7 / 0.3 of 16, 32
    for name in ("loss", "accuracy"):
        assert os.path.isfile(tmp_path / "outputs" / "mixture" / "plots" / f"{name}.png")


@pytest.mark.slow
def test_the_decay_branch_recipe_runs_as_written(tmp_path):
    """The small warmup-stable-decay recipe of docs/mixtures-and-phases.md, with its step counts and forks as
    written (smaller batches): each branch forks at the stable peak and its first loss is the stable run's at that
    step, its rate has decayed to 0 by its end, and compare.png draws them."""
    block = next(b for b in bash_blocks(os.path.join(ROOT, "docs", "mixtures-and-phases.md"))
                 if any("name=decay-20" in command for command in b))
    smaller = ["train.global_batch_size=8", "train.micro_batch_size=8", "train.eval_samples=8", "train.log_every=1",
               "logging.wandb.mode=disabled", "logging.progress_bar=false"]
    for command in block:
        words = [sys.executable if w == "python" else w for w in shlex.split(command)]
        words = [re.sub(r"(^|=|\[|,)(data|outputs)/", lambda m: f"{m.group(1)}{tmp_path}/{m.group(2)}/", w)
                 for w in words]
        if words[1].endswith("launch/pretrain.py"):
            words += [f"output_root={tmp_path / 'outputs'}", *smaller, f"data.path={tmp_path}/data/python-help"]
        result = subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=300,
                                env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    runs = {name: {r["step"]: r for r in read_metrics(tmp_path / "outputs" / name) if r["split"] == "train"}
            for name in ("stable", "decay-20", "decay-40")}
    for branch, at in (("decay-20", 20), ("decay-40", 40)):
        first = min(runs[branch])
        assert first == at + 1 and runs[branch][first]["loss"] == runs["stable"][first]["loss"]
        assert runs["stable"][at]["lr"] == 1e-3 and runs[branch][max(runs[branch])]["lr"] == 0.0  # peak; decayed
    assert os.path.isfile(tmp_path / "outputs" / "stable" / "plots" / "compare.png")

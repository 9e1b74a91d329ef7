"""The import direction between the project's packages (docs/development.md has the diagram): a package imports only
packages below it, so none can import itself back and the model can be used without the trainer."""

import ast
import os

import deberta_pretrain

PACKAGE = os.path.dirname(deberta_pretrain.__file__)
# unit -> layer: a unit imports only units of a lower layer (and itself)
LAYERS = {"layout": 0,  # where every file of a run, results, an export or a dataset lives
          "__init__": 1, "cli": 1, "fileio": 1, "config_keys": 1, "remote": 1, "choices": 1,
          "deberta": 2,  # the model, tokenizers, release files
          "data": 3,  # prepared data: prep, shards, mixtures, sampler, masking
          "objectives": 4,  # what is trained
          "config": 5,  # the config schema (it checks objective= against the objectives)
          "training": 6,  # the pretraining loop and its components
          "model_card": 7,  # an export's README.md, from what the run recorded
          "export": 8,
          "finetune": 9}


def unit_of(path: str) -> str:
    first = os.path.relpath(path, PACKAGE).split(os.sep)[0]
    return first[:-3] if first.endswith(".py") else first


def imported_units(path: str) -> set[tuple[str, int]]:
    """(unit, line) of every import of the project in the module at ``path`` (relative imports resolved)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = os.path.relpath(os.path.dirname(path), os.path.dirname(PACKAGE)).split(os.sep)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            else:
                base = node.module.split(".")
            if base[0] != "deberta_pretrain":
                continue
            if len(base) == 1:  # from deberta_pretrain import x / from .. import x: x is the unit
                found.update((alias.name if alias.name in LAYERS else "__init__", node.lineno) for alias in node.names)
            else:
                found.add((base[1], node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "deberta_pretrain":
                    found.add((parts[1] if len(parts) > 1 else "__init__", node.lineno))
    return found


def test_every_unit_has_a_layer():
    units = {unit_of(os.path.join(PACKAGE, name)) for name in os.listdir(PACKAGE)
             if name.endswith(".py") or os.path.isdir(os.path.join(PACKAGE, name, ""))}
    assert units - {"__pycache__"} <= set(LAYERS)


def test_packages_import_only_the_layers_below_them():
    upward = []
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            mine = unit_of(path)
            for unit, line in imported_units(path):
                if unit != mine and LAYERS[unit] >= LAYERS[mine]:
                    upward.append(f"{os.path.relpath(path, PACKAGE)}:{line} imports {unit}")
    assert not upward, "\n".join(sorted(upward))


def test_the_fault_hook_patches_names_that_exist_and_are_called():
    """tests/faults/sitecustomize.py injects faults by patching these names as the trainer is imported; renaming one
    must fail here, not silently disarm the kill tests (a run that crashes at import also exits non-zero)."""
    import inspect

    from deberta_pretrain import remote
    from deberta_pretrain.deberta.mlm import MaskedLanguageModel
    from deberta_pretrain.training import checkpoint, mirror, trainer

    hooks = open(os.path.join(os.path.dirname(PACKAGE), "tests", "faults", "sitecustomize.py")).read()
    seams = {"trainer.step_seed": "step_seed(" in inspect.getsource(trainer.train),
             "checkpointer.save": trainer.Checkpointer is checkpoint.Checkpointer,
             "checkpointer._mark_complete": "self._mark_complete(" in inspect.getsource(checkpoint.Checkpointer.save),
             "remote.upload": "remote.upload(" in inspect.getsource(mirror.RunMirror._upload_checkpoint),
             "model.forward": callable(MaskedLanguageModel.forward)}
    for name, used in seams.items():
        assert name in hooks, f"the fault hook no longer patches {name}"
        assert used, f"{name} is patched by the fault hook but no longer on the path it watches"
    assert callable(trainer.step_seed) and callable(remote.upload)


def string_constants(path: str):
    """(line, value) of every string literal in the module at ``path`` that is not a docstring."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_file_names_of_runs_results_and_exports_are_spelled_only_in_the_layout():
    """``layout.py`` owns the names of a run directory, its checkpoints, fine-tuning results, exports and datasets:
    a module (or entry point) that spells one instead of asking the layout fails here."""
    from deberta_pretrain import layout

    names = {value for key, value in vars(layout).items() if key.lstrip("_").isupper() and isinstance(value, str)}
    names |= {name.split("/")[0] for name in names}  # .hydra of .hydra/config.yaml
    assert {"train.log", "metrics.jsonl", "complete.json", "results.json", "export.json", "step_"} <= names
    allowed = {("deberta/release.py", "latest"),  # a release's version folder, not a checkpoint's pointer
               ("../launch/finetune.py", "finetune")}  # Hydra's config name
    names.discard("from_scratch")  # also the config key and the results' field of that name
    spelled = []
    root = os.path.dirname(PACKAGE)
    for folder in (PACKAGE, os.path.join(root, "launch"), os.path.join(root, "data_prep")):
        for directory, _, files in os.walk(folder):
            for file in files:
                path = os.path.join(directory, file)
                mine = os.path.relpath(path, PACKAGE)
                if not file.endswith(".py") or path == layout.__file__:
                    continue
                for line, value in string_constants(path):
                    if (value in names or any(value.startswith(name + "/") for name in names)) and \
                            (mine, value) not in allowed:
                        spelled.append(f"{os.path.relpath(path, root)}:{line} spells {value!r}")
    assert not spelled, "\n".join(sorted(spelled))

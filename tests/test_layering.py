"""The import direction between the project's packages (docs/development.md has the diagram): a package imports only
packages below it, so none can import itself back and the model can be used without the trainer."""

import ast
import os

import deberta_pretrain

PACKAGE = os.path.dirname(deberta_pretrain.__file__)
# unit -> layer: a unit imports only units of a lower layer (and itself)
LAYERS = {"__init__": 0, "fileio": 0, "config_keys": 0, "remote": 0, "choices": 0,
          "deberta": 1,  # the model, tokenizers, release files
          "data": 2,  # prepared data: prep, shards, mixtures, sampler, masking
          "objectives": 3, "config": 3,  # what is trained; the config schema
          "training": 4,  # the pretraining loop and its components
          "model_card": 5,  # an export's README.md, from what the run recorded
          "export": 6,
          "finetune": 7}


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

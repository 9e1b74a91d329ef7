"""Fault injection for the tests, from outside the product: Python imports this file at start-up when
``tests/faults`` is on ``PYTHONPATH`` (see ``pretrain_helpers.fault_env``), in every process a launcher starts, and
it patches the training modules as they are imported. Nothing in ``deberta_pretrain`` knows about it.

``DEBERTA_PRETRAIN_FAULT`` holds one or more comma-separated ``KIND@STEP`` or ``KIND@STEP:RANK``:

  sigterm@N, sigkill@N      the process signals itself after N finished steps, before the next one starts
  ctrl-c@N, ctrl-c-twice@N  SIGINT (once or twice) to the process group, as Ctrl-C in a terminal (start the run in a
                            session of its own)
  kill-before-save@N        the checkpoint of step N: the process is killed before it writes anything
  kill-before-complete@N    the checkpoint of step N: every rank wrote its files; killed before complete.json
  enospc@N                  the checkpoint of step N: every write fails with ENOSPC (a full disk)
  nan-loss@N                the training loss of step N (1-based, as logged) is NaN
  kill-before-upload-complete@N  the upload of checkpoint N to train.remote_dir: its files are in the mirror; the
                            process is killed before its complete.json is uploaded

Without ``:RANK`` a fault fires on every rank.
"""

import errno
import importlib.abc
import importlib.util
import os
import signal
import sys

FAULTS = []
for _item in filter(None, os.environ.get("DEBERTA_PRETRAIN_FAULT", "").split(",")):
    _kind, _, _where = _item.partition("@")
    _step, _, _rank = _where.partition(":")
    FAULTS.append((_kind, int(_step), int(_rank) if _rank else None))
STATE = {"finished_steps": None}


def fires(kind: str, step) -> bool:
    rank = int(os.environ.get("RANK", "0"))
    return any(k == kind and n == step and (r is None or r == rank) for k, n, r in FAULTS)


def patch_trainer(trainer) -> None:
    step_seed = trainer.step_seed

    def watched_step_seed(seed, rank, step):  # called once at the top of every training step
        STATE["finished_steps"] = step
        if fires("sigterm", step):
            os.kill(os.getpid(), signal.SIGTERM)
        if fires("ctrl-c", step):  # as a terminal does: to the whole process group (data-loader workers too)
            os.killpg(os.getpgrp(), signal.SIGINT)
        if fires("ctrl-c-twice", step):
            os.killpg(os.getpgrp(), signal.SIGINT)
            os.killpg(os.getpgrp(), signal.SIGINT)
        if fires("sigkill", step):
            os.kill(os.getpid(), signal.SIGKILL)
        return step_seed(seed, rank, step)

    trainer.step_seed = watched_step_seed
    checkpointer = trainer.Checkpointer
    save, mark_complete = checkpointer.save, checkpointer._mark_complete

    def faulty_save(self, engine, step, client_state):
        if fires("kill-before-save", step):
            os.kill(os.getpid(), signal.SIGKILL)
        if not fires("enospc", step):
            return save(self, engine, step, client_state)
        import torch  # noqa: PLC0415

        real = torch.save

        def disk_full(obj, f, *args, **kwargs):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

        torch.save = disk_full
        try:
            return save(self, engine, step, client_state)
        finally:
            torch.save = real

    def faulty_mark_complete(self, tag, step, *args):
        if fires("kill-before-complete", step):
            os.kill(os.getpid(), signal.SIGKILL)
        return mark_complete(self, tag, step, *args)

    checkpointer.save, checkpointer._mark_complete = faulty_save, faulty_mark_complete
    from deberta_pretrain.deberta.mlm import MaskedLanguageModel as model  # noqa: PLC0415  (rtd: the generator)

    forward = model.forward

    def nan_forward(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        finished = STATE["finished_steps"]
        if self.training and "loss" in out and finished is not None and fires("nan-loss", finished + 1):
            out["loss"] = out["loss"] * float("nan")
        return out

    model.forward = nan_forward
    from deberta_pretrain import remote  # noqa: PLC0415

    upload = remote.upload

    def faulty_upload(local, url):
        for kind, step, _ in FAULTS:
            if kind == "kill-before-upload-complete" and url.endswith(f"/step_{step:08d}/complete.json"):
                os.kill(os.getpid(), signal.SIGKILL)
        return upload(local, url)

    remote.upload = faulty_upload


class PatchOnImport(importlib.abc.MetaPathFinder):
    """Runs ``patch_trainer`` right after ``deberta_pretrain.training.trainer`` has been executed."""

    target = "deberta_pretrain.training.trainer"

    def find_spec(self, name, path, target=None):
        if name != self.target:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                execute = spec.loader.exec_module

                def exec_and_patch(module):
                    execute(module)
                    patch_trainer(module)

                spec.loader.exec_module = exec_and_patch
                return spec
        return None


if FAULTS:
    sys.meta_path.insert(0, PatchOnImport())

"""``train.log``, the run's record: every line rank 0 logs at INFO and above, with time stamps, from the first check
of the config to the end. Lines said before the run directory exists are held and written once it does, so that a
start refused on bad input writes nothing, and a healthy run's log tells its whole story (start or resume, data,
checkpoints and uploads, evaluations, warnings, stops, the end)."""

from __future__ import annotations

import hashlib
import logging
import logging.handlers
import os

from ..layout import LOG

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RunLog:
    """Collects rank 0's log records (``enabled``) until :meth:`open` names the run directory; then appends them,
    and every later one, to its ``train.log``. A context manager: leaving it detaches the handlers."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.held = logging.handlers.MemoryHandler(capacity=10**6, flushLevel=logging.CRITICAL + 1)
        self.file: logging.Handler | None = None

    def __enter__(self):
        if self.enabled:
            logging.getLogger().addHandler(self.held)
        return self

    def __exit__(self, *exc):
        root = logging.getLogger()
        root.removeHandler(self.held)
        if self.file is not None:
            root.removeHandler(self.file)
            self.file.close()
        self.held.buffer.clear()

    def open(self, run_dir: str) -> None:
        """Start writing ``run_dir/train.log``: the lines held so far first."""
        if not self.enabled or self.file is not None:
            return
        self.file = logging.FileHandler(os.path.join(run_dir, LOG), encoding="utf-8")
        self.file.setFormatter(logging.Formatter(FORMAT))
        self.held.setTarget(self.file)
        self.held.flush()
        root = logging.getLogger()
        root.removeHandler(self.held)
        root.addHandler(self.file)


def settings_digest(config_yaml: str) -> str:
    """A short fingerprint of a resolved config (the text of ``.hydra/config.yaml``): equal digests, equal settings."""
    return hashlib.sha256(config_yaml.encode("utf-8")).hexdigest()[:12]

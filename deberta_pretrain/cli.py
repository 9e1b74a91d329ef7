"""How every command ends when it cannot finish: bad input is one line ``error: <what and where>`` and exit status 1,
Ctrl-C is one line saying what was kept and status 130 (docs/resume-and-faults.md lists the statuses)."""

from __future__ import annotations

import contextlib
import sys

EXIT_BAD_INPUT = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


@contextlib.contextmanager
def command_errors(interrupted: str, bad_input: tuple = (OSError, ValueError), distributed: bool = False):
    """Run the body of an entry point's ``main``. An exception of a ``bad_input`` type (its message names the file,
    key or value) prints ``error: <message>`` and exits 1; Ctrl-C prints ``interrupted`` (what was kept) and exits
    130. ``distributed``: the process group is closed at the end whatever happened, so that its threads do not
    outlive the interpreter."""
    try:
        yield
    except bad_input as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        if distributed:
            import torch.distributed as dist  # noqa: PLC0415

            if dist.is_initialized():
                dist.destroy_process_group()

"""Process set-up under any launcher: ``deepspeed``, ``torchrun``, SLURM ``srun`` or plain ``python``."""

from __future__ import annotations

import importlib
import os
import socket
import sys


def strip_local_rank(argv: list[str]) -> list[str]:
    """Remove the ``--local_rank`` argument the deepspeed launcher appends (Hydra would reject it) and export it
    as ``LOCAL_RANK``. Accepts ``--local_rank=N``, ``--local-rank=N`` and ``--local_rank N``."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        for flag in ("--local_rank", "--local-rank"):
            if arg == flag and i + 1 < len(argv):
                os.environ.setdefault("LOCAL_RANK", argv[i + 1])
                i += 2
                break
            if arg.startswith(flag + "="):
                os.environ.setdefault("LOCAL_RANK", arg.split("=", 1)[1])
                i += 1
                break
        else:
            out.append(arg)
            i += 1
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_process_env() -> None:
    """Environment for a process that may have been started without a launcher, before deepspeed is imported:
    a single-process world on 127.0.0.1, and the CPU accelerator when there is no GPU."""
    import torch  # noqa: PLC0415

    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "WORLD_SIZE" in os.environ:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]  # srun started one process per rank
        os.environ.setdefault("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0"))
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("LOCAL_RANK", "0")


def on_cpu() -> bool:
    return os.environ.get("DS_ACCELERATOR") == "cpu"


def init_distributed() -> tuple[int, int, int]:
    """Initialise torch.distributed through DeepSpeed; returns (rank, world size, local rank)."""
    set_process_env()
    import deepspeed  # noqa: PLC0415
    import torch  # noqa: PLC0415

    if on_cpu():
        # DeepSpeed JIT-compiles a shared-memory all-reduce op (~40-80 s) on every CPU start; training collectives
        # go through gloo and never use it. (``import deepspeed.comm.torch`` would bind torch itself.)
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend="gloo" if on_cpu() else None)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if not on_cpu() and torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return rank, world, local_rank


def prepare_argv() -> None:
    """Call in an entry point before Hydra parses ``sys.argv``."""
    sys.argv = strip_local_rank(sys.argv)


def first_error(error: str | None) -> str | None:
    """Every rank's error (or None) gathered; the first one, the same on every rank."""
    import torch.distributed as dist  # noqa: PLC0415

    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, error)
    return next((e for e in gathered if e), None)


def all_ranks_agree(error: str | None) -> None:
    """Raise the first rank's error on every rank (so no rank is left waiting in a collective)."""
    error = first_error(error)
    if error:
        raise SystemExit(f"error: {error}")


def padded_batches(n: int, batch_size: int, rank: int, world_size: int):
    """(indices, real) of this rank's forward passes over ``n`` examples for evaluation: batch ``j`` of rank ``r``
    holds examples ``[(j * world + r) * batch_size, ...)``, and every rank makes the same number of passes (ZeRO-3
    gathers parameters collectively), a rank with no examples left reading example 0 with ``real`` False (its
    result is to be ignored)."""
    for j in range(-(-n // (batch_size * world_size))):
        start = (j * world_size + rank) * batch_size
        indices = list(range(start, min(start + batch_size, n)))
        yield (indices or [0]), bool(indices)

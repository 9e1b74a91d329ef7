"""Everything only a GPU can show, in one command that leaves every figure in a folder.

    bash benchmarks/gpu_check.sh                    # on the GPU machine (installs what the image lacks, then this)
    bash benchmarks/gpu_check.sh --dry-run          # the same steps with tiny sizes on the CPU, before a GPU window

Steps (each timed; a failing step is recorded and the next one still runs), in the order they run:
  1. environment nvidia-smi and the library versions
  2. gpu_tests   the ``gpu``-marked tests: the fused ``flash`` kernel against ``eager`` in bf16
  3. throughput  benchmarks/throughput.py: deberta-v3-base, bf16, L = 128/512/2048/8192, ours with each attention
                 backend vs HF's DebertaV2ForMaskedLM with the same weights (tokens/s, MFU, peak memory), and
                 objective=rtd (generator + discriminator) with the flash backend
  4. pretrain    real runs through ``deepspeed --num_gpus 1 launch/pretrain.py`` (deberta-v3-base, bf16, ZeRO-2,
                 L=512, built-in corpus) with ``flash`` and with ``sdpa``, a resume of the first, fp16 steps with
                 dynamic loss scaling, and a mixture of two sources (per-source records); losses, tokens/s and MFU
                 read back from each run's metrics.jsonl
  5. speed_recipe
                 benchmarks/throughput.py at L=512 with the speed switches: each backend (flash, sdpa) and
                 objective=rtd compiled (impl.compile) against not compiled, and packed documents (document
                 attention: the fused kernel's document ids against sdpa's L x L mask) against full blocks

Output (``--out``, default benchmarks/results/<date>-<gpu>/): environment.json, gpu_tests.json, throughput.json,
pretrain.json, speed_recipe.json, summary.md and log.txt (every command's full output). The exit code is 0 only if
every step passed.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from common import machine

LIBRARIES = ("torch", "triton", "transformers", "deepspeed", "hydra-core", "omegaconf", "numpy", "tiktoken")
# Targets of the GPU work (benchmark goals, reported, not asserted): deberta-v3-base, bf16, L=512.
TARGET_SPEEDUP_VS_HF, TARGET_MFU, TARGET_MEMORY_RATIO = 2.5, 0.45, 1.3


class Log:
    """log.txt: the full output of every command, in order."""

    def __init__(self, path: str):
        self.path = path
        open(path, "w").close()

    def write(self, text: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)


class Budget:
    """The whole check's time limit: every command gets at most its own cap and what is left of the total."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def run_command(cmd: list[str], log: Log, cap: float, budget: Budget, env: dict | None = None) -> dict:
    """Run ``cmd`` from the repository root in its own process group (a launcher's ranks are killed with it on a
    timeout, so no orphan keeps the GPU); its output goes to the log, its outcome is returned."""
    timeout = min(cap, budget.left())
    if timeout < 5:
        return {"command": " ".join(cmd), "returncode": None, "timed_out": True, "seconds": 0.0,
                "output_tail": "not run: the check's time budget is spent"}
    log.write(f"\n$ {' '.join(cmd)}\n")
    print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as output:
        process = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=output,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            code, timed_out = process.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            code, timed_out = process.wait(), True
        output.seek(0)
        text = output.read()
    seconds = round(time.perf_counter() - start, 1)
    log.write(text + f"\n[exit {code}{f' (killed after the {timeout:.0f} s limit)' if timed_out else ''} "
                     f"after {seconds} s]\n")
    return {"command": " ".join(cmd), "returncode": None if timed_out else code, "timed_out": timed_out,
            "seconds": seconds, "output_tail": text[-3000:]}


def cuda_available() -> bool:
    import torch  # noqa: PLC0415

    return torch.cuda.is_available()


# ---- 1. environment --------------------------------------------------------------------------------------------
def environment(args, log: Log) -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    import torch  # noqa: PLC0415

    out = {"status": "ok", "machine": machine(), "versions": versions, "cuda": torch.version.cuda,
           "dry_run": args.dry_run}
    if shutil.which("nvidia-smi"):
        smi = run_command(["nvidia-smi"], log, 60, args.budget)
        out["nvidia_smi"] = smi["output_tail"]
    else:
        out["nvidia_smi"] = "skipped: nvidia-smi is not on PATH (no NVIDIA driver on this machine)"
    if cuda_available():
        props = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                      "multiprocessors": props.multi_processor_count, "capability": f"{props.major}.{props.minor}"}
    return out


# ---- 2. gpu tests ----------------------------------------------------------------------------------------------
def gpu_tests(args, log: Log) -> dict:
    """On the CPU the command still runs (collection and imports are checked) and the tests report as skipped."""
    result = run_command([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                          "tests/test_flash_attention.py"], log, args.caps["gpu_tests"], args.budget)
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error|errors)",
                                                    result["output_tail"])}
    result["counts"] = counts
    if result["returncode"] == 0 and counts.get("passed", 0) > 0 and not counts.get("failed"):
        result["status"] = "ok"
    elif result["returncode"] == 0 and not cuda_available() and counts.get("skipped", 0) > 0:
        result["status"] = "skipped: no CUDA device (the tests were collected and skipped)"
    else:
        result["status"] = "failed"
    return result


# ---- 3. throughput ---------------------------------------------------------------------------------------------
def throughput(args, log: Log) -> dict:
    if args.dry_run:
        options = ["--device", "cpu", "--model", "tiny", "--lengths", "32", "64", "--tokens-per-step", "128",
                   "--steps", "1", "--warmup", "0", "--backends", "flash", "sdpa", "eager"]
    else:
        options = ["--model", "deberta-v3-base", "--dtype", "bf16", "--lengths", "128", "512", "2048", "8192",
                   "--tokens-per-step", "16384", "--backends", "flash", "sdpa", "eager"]
    return throughput_report(args, log, "throughput", ["--rtd", *options])


def throughput_report(args, log: Log, step: str, options: list[str]) -> dict:
    """Run benchmarks/throughput.py with ``options``; its report, and ``failed`` for a contender that erred or (on a
    GPU, where it must not) a flash row whose fused kernel never ran."""
    json_path = os.path.join(args.work, f"{step}.json")
    cmd = [sys.executable, "benchmarks/throughput.py", "--out", json_path, *options]
    result = run_command(cmd, log, args.caps[step], args.budget)
    result["status"] = "ok" if result["returncode"] == 0 and os.path.exists(json_path) else "failed"
    if os.path.exists(json_path):
        with open(json_path, encoding="utf-8") as f:
            result["report"] = json.load(f)
        errors = [f"L={row['length']} {r['model']}: {r['error']}" for row in result["report"]["rows"]
                  for r in row["results"] if "error" in r]
        if not args.dry_run:  # on the CPU flash falls back to sdpa by design; on a GPU it must not
            errors += [f"L={row['length']} {r['model']}: the fused kernel never ran (fell back to sdpa)"
                       for row in result["report"]["rows"] for r in row["results"]
                       if r["model"].startswith("ours-flash") and r.get("fused_kernel_used") is False]
        if errors:
            result["status"], result["errors"] = "failed", errors
    return result


# ---- 5. speed recipe --------------------------------------------------------------------------------------------
def speed_recipe(args, log: Log) -> dict:
    """Compiled vs not, packed documents vs full blocks, in one throughput run (last: it may use what is left)."""
    if args.dry_run:  # one compile of the tiny model proves the commands; the RTD compile is tests/test_compile.py's
        options = ["--device", "cpu", "--model", "tiny", "--lengths", "32", "--tokens-per-step", "64", "--steps", "1",
                   "--warmup", "1", "--backends", "sdpa", "--hf-max-length", "0"]
    else:
        options = ["--rtd", "--model", "deberta-v3-base", "--dtype", "bf16", "--lengths", "512", "--tokens-per-step",
                   "16384", "--steps", "5", "--warmup", "2", "--backends", "flash", "sdpa", "--hf-max-length", "0"]
    return throughput_report(args, log, "speed_recipe", ["--compile", "--documents", *options])


# ---- 4. pretraining runs ---------------------------------------------------------------------------------------
def pretrain_overrides(args, data: str, outputs: str, name: str, **extra) -> list[str]:
    if args.dry_run:
        values = {"model": "tiny", "train.max_steps": 6, "train.global_batch_size": 4, "train.micro_batch_size": 2,
                  "train.checkpoint_every": 6, "train.eval_every": 6, "train.eval_samples": 4, "train.log_every": 2,
                  "optim.warmup_steps": 2, "optim.lr": 1e-3}
    else:
        values = {"model": "deberta-v3-base", "model.vocab_size": 50265, "train.max_steps": 60,
                  "train.global_batch_size": 32, "train.micro_batch_size": 32, "train.checkpoint_every": 60,
                  "train.eval_every": 60, "train.eval_samples": 64, "train.log_every": 10, "optim.warmup_steps": 10,
                  "optim.lr": 2e-4}
    values.update({"name": name, "output_root": outputs, "data.path": data, "precision": "bf16",
                   "deepspeed": "zero2", "seed": 1, "logging.wandb.mode": "disabled",
                   "logging.progress_bar": "false"})
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def read_metrics(run_dir: str, after_step: int = 0) -> dict:
    """What a run's metrics.jsonl says after ``after_step``: losses, speed, and whether every step was recorded
    once (over the whole file)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return {"error": f"{path} was not written"}
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    train = [r for r in records if r.get("split") == "train"]
    valid = [r for r in records if r.get("split") == "validation"]
    if not train:
        return {"error": f"{path} has no training records"}
    steps = [r["step"] for r in train]
    unique = len(steps) == len(set(steps))
    train = [r for r in train if r["step"] > after_step]
    if not train:
        return {"error": f"{path} has no training records after step {after_step}"}
    steps = [r["step"] for r in train]
    speeds = sorted(r["tokens_per_s"] for r in train[1:] or train)  # the first window includes compilation
    mfus = sorted(r["mfu"] for r in train[1:] or train if r.get("mfu") is not None)
    return {"train_steps_logged": steps, "steps_unique": unique,
            "first_loss": train[0]["loss"], "last_loss": train[-1]["loss"],
            "losses_finite": all(math.isfinite(r["loss"]) for r in train),
            "tokens_per_s_median": speeds[len(speeds) // 2], "mfu_median": mfus[len(mfus) // 2] if mfus else None,
            "step_time_s_last": train[-1]["step_time_s"], "skipped_steps": train[-1].get("skipped_steps"),
            "validation": [{"step": r["step"], "loss": r["loss"], "accuracy": r["accuracy"]} for r in valid]}


def judge_run(info: dict, expect_resume_from: int | None) -> str:
    if info.get("returncode") != 0:
        return "failed: exit code " + ("timeout" if info.get("timed_out") else str(info.get("returncode")))
    metrics = info.get("metrics", {})
    if "error" in metrics:
        return "failed: " + metrics["error"]
    if not metrics["losses_finite"]:
        return "failed: a training loss is not finite"
    if not metrics["steps_unique"]:
        return "failed: a step was logged twice in metrics.jsonl"
    if expect_resume_from is None and not metrics["last_loss"] < metrics["first_loss"]:
        return "failed: the training loss did not fall"
    if expect_resume_from is not None and f"from step {expect_resume_from}" not in info["output_tail"] + info.get(
            "resume_line", ""):
        return f"failed: the run did not report resuming from step {expect_resume_from}"
    steps = metrics["train_steps_logged"][-1]
    if metrics.get("skipped_steps") is not None and metrics["skipped_steps"] > steps // 2:
        # a few skipped updates while the loss scale settles are normal; half of all is a storm
        return f"failed: {metrics['skipped_steps']} of {steps} updates skipped by loss scaling"
    return "ok"


def judge_mixture(run_dir: str) -> str:
    """A two-source run (sources a and b) logged samples per source and one validation record per source."""
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    splits = {r.get("split") for r in records}
    if not {"validation/a", "validation/b"} <= splits:
        return f"failed: no per-source validation records (splits: {sorted(map(str, splits))})"
    last = [r for r in records if r.get("split") == "train"][-1]
    if "samples/a" not in last or "samples/b" not in last:
        return "failed: the training records lack samples/a and samples/b"
    return "ok"


def pretrain(args, log: Log) -> dict:
    data = os.path.join(args.work, "data")
    outputs = os.path.join(args.work, "outputs")
    length = 64 if args.dry_run else 512
    prep = run_command([sys.executable, "data_prep/prepare.py", f"output={data}", f"max_seq_length={length}",
                        "validation_fraction=0.05"], log, args.caps["prepare"], args.budget)
    result = {"prepare": {k: prep[k] for k in ("command", "returncode", "seconds")}, "runs": {}}
    if prep["returncode"] != 0:
        result["status"] = "failed: data preparation"
        return result
    shutil.copytree(data, f"{data}-copy", dirs_exist_ok=True)  # the mixture's second source
    deepspeed = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "1", "--master_port",
                 str(args.master_port), "launch/pretrain.py"]
    total = 6 if args.dry_run else 60
    plans = [("flash", dict(name="flash", **{"impl.attention_backend": "flash"}), None),
             ("sdpa", dict(name="sdpa", **{"impl.attention_backend": "sdpa"}), None),
             ("flash-resume", dict(name="flash", **{"impl.attention_backend": "flash",
                                                    "train.max_steps": total + total // 3}), total),
             ("fp16", dict(name="fp16", precision="fp16", **{"impl.attention_backend": "auto",
                                                             "train.max_steps": 4 if args.dry_run else 30}), None),
             # a mixture of two sources (the prepared data and a copy, 0.7 / 0.3): per-source metrics and records
             ("mixture", dict(name="mixture", **{"data.path": "null", "impl.attention_backend": "auto",
                                                 "data.sources": f"{{a: {{path: {data}, weight: 0.7}}, "
                                                                 f"b: {{path: {data}-copy, weight: 0.3}}}}"}), None)]
    env = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1" if args.dry_run else os.environ.get("OMP_NUM_THREADS",
                                                                                               "8")}
    for label, overrides, resume_from in plans:
        if overrides.get("precision") == "fp16" and not cuda_available():
            result["runs"][label] = {"status": "skipped: fp16 needs a CUDA device (no fp16 kernels on this CPU)"}
            continue
        if label == "sdpa" and not cuda_available():  # on the CPU the flash run already falls back to sdpa
            result["runs"][label] = {"status": "skipped: on the CPU the flash run goes through sdpa already"}
            continue
        info = run_command(deepspeed + pretrain_overrides(args, data, outputs, **overrides), log,
                           args.caps["run"], args.budget, env=env)
        run_dir = os.path.join(outputs, overrides["name"])
        info["metrics"] = read_metrics(run_dir, after_step=resume_from or 0)
        train_log = os.path.join(run_dir, "train.log")
        if os.path.exists(train_log):
            with open(train_log, encoding="utf-8") as f:
                info["resume_line"] = "".join(line for line in f if "resuming" in line)
        info["status"] = judge_run(info, resume_from)
        if label == "mixture" and info["status"] == "ok":
            info["status"] = judge_mixture(run_dir)
        result["runs"][label] = info
    statuses = [r["status"] for r in result["runs"].values()]
    result["status"] = "ok" if all(s == "ok" or s.startswith("skipped") for s in statuses) else "failed"
    return result


# ---- summary ---------------------------------------------------------------------------------------------------
def fmt(value, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def targets(throughput_result: dict) -> dict:
    """The issue's goals for L=512 (speed-up over HF, MFU) and memory per token at 8192 vs 512, from the report."""
    rows = {row["length"]: {r["model"]: r for r in row["results"]} for row in
            throughput_result.get("report", {}).get("rows", [])}
    out = {}
    at512 = rows.get(512, {})
    best = max((r for k, r in at512.items() if k != "hf" and "-rtd-" not in k and "tokens_per_s" in r),
               key=lambda r: r["tokens_per_s"], default=None)
    if best:
        out["best_at_512"] = best["model"]
        out["speedup_vs_hf_at_512"] = best.get("speedup_vs_hf")
        out["mfu_at_512"] = best.get("mfu")
    for backend in ("ours-flash", "ours-sdpa"):
        a, b = rows.get(512, {}).get(backend, {}), rows.get(8192, {}).get(backend, {})
        if a.get("peak_memory_per_token_kib") and b.get("peak_memory_per_token_kib"):
            out[f"memory_per_token_8192_over_512_{backend}"] = round(
                b["peak_memory_per_token_kib"] / a["peak_memory_per_token_kib"], 3)
    faster = {}
    for length, contenders in rows.items():
        flash, sdpa = contenders.get("ours-flash", {}), contenders.get("ours-sdpa", {})
        if "tokens_per_s" in flash and "tokens_per_s" in sdpa:
            faster[length] = round(flash["tokens_per_s"] / sdpa["tokens_per_s"], 3)
    out["flash_over_sdpa"] = faster
    rtd = rows.get(512, {}).get("ours-rtd-flash", {})
    if "tokens_per_s" in rtd:  # objective=rtd: discriminator tokens/s and MFU (generator + discriminator FLOPs)
        out["rtd_tokens_per_s_at_512"], out["rtd_mfu_at_512"] = rtd["tokens_per_s"], rtd.get("mfu")
    return out


def summary(results: dict, args) -> str:
    env = results["environment"]
    device = env.get("gpu", {}).get("name", "CPU (dry run)" if args.dry_run else "no GPU")
    lines = [f"# GPU check {datetime.date.today().isoformat()} — {device}", "",
             f"torch {env['versions'].get('torch')}, CUDA {env.get('cuda')}, triton {env['versions'].get('triton')}, "
             f"transformers {env['versions'].get('transformers')}, deepspeed {env['versions'].get('deepspeed')}"
             + (" — **dry run**: tiny sizes on the CPU, figures mean nothing" if args.dry_run else ""), "",
             "| step | status | seconds |", "|---|---|---|"]
    for step in ("gpu_tests", "throughput", "pretrain", "speed_recipe"):
        lines.append(f"| {step} | {results[step]['status']} | {results[step].get('seconds', '-')} |")
    report = results["throughput"].get("report")
    if report:
        lines += ["", f"## Training throughput ({report['settings']['model']}, {report['settings']['dtype']}, "
                  f"{report['settings']['tokens_per_step']} tokens per step)", "",
                  "| L | batch | contender | tokens/s | MFU | peak GiB | KiB/token | vs HF |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in report["rows"]:
            for r in row["results"]:
                if "error" in r:
                    lines.append(f"| {row['length']} | {row['batch']} | {r['model']} | error: {r['error'][:80]} "
                                 "| | | | |")
                    continue
                name = r["model"] + (" (fell back to sdpa)" if r.get("fused_kernel_used") is False
                                     and r["model"] == "ours-flash" else "")
                lines.append(f"| {row['length']} | {row['batch']} | {name} | {fmt(r['tokens_per_s'])} | "
                             f"{fmt(r.get('mfu'), '.1%')} | {fmt(r.get('peak_memory_gib'), '.2f')} | "
                             f"{fmt(r.get('peak_memory_per_token_kib'), '.1f')} | "
                             f"{fmt(r.get('speedup_vs_hf'), '.2f')} |")
        goal = results["throughput"]["targets"]
        lines += ["", f"Targets (L=512): speed-up over HF {fmt(goal.get('speedup_vs_hf_at_512'), '.2f')}x "
                  f"(goal {TARGET_SPEEDUP_VS_HF}x), MFU {fmt(goal.get('mfu_at_512'), '.1%')} (goal {TARGET_MFU:.0%}) "
                  f"with {goal.get('best_at_512', '-')}; memory per token 8192 / 512: "
                  + ", ".join(f"{k.rsplit('_', 1)[-1]} {v}" for k, v in goal.items() if k.startswith("memory"))
                  + f" (goal ≤ {TARGET_MEMORY_RATIO}); flash / sdpa tokens/s by L: {goal['flash_over_sdpa']}"]
    runs = results["pretrain"].get("runs", {})
    if runs:
        lines += ["", "## Runs through the launcher", "",
                  "| run | status | first loss | last loss | tokens/s | MFU | skipped (fp16) |",
                  "|---|---|---|---|---|---|---|"]
        for label, info in runs.items():
            m = info.get("metrics", {})
            lines.append(f"| {label} | {info['status']} | {fmt(m.get('first_loss'), '.3f')} | "
                         f"{fmt(m.get('last_loss'), '.3f')} | {fmt(m.get('tokens_per_s_median'))} | "
                         f"{fmt(m.get('mfu_median'), '.1%')} | {fmt(m.get('skipped_steps'), 'd')} |")
    recipe = results["speed_recipe"].get("report")
    if recipe:
        lines += ["", "## Speed recipe (compiled vs not; packed documents vs full blocks)", "",
                  "| L | contender | tokens/s | MFU | peak GiB | compiled / not | full block / documents (cost) |",
                  "|---|---|---|---|---|---|---|"]
        for row in recipe["rows"]:
            for r in row["results"]:
                if "error" in r:
                    lines.append(f"| {row['length']} | {r['model']} | error: {r['error'][:80]} | | | | |")
                    continue
                lines.append(f"| {row['length']} | {r['model']} | {fmt(r['tokens_per_s'])} | "
                             f"{fmt(r.get('mfu'), '.1%')} | {fmt(r.get('peak_memory_gib'), '.2f')} | "
                             f"{fmt(r.get('speedup_vs_not_compiled'), '.2f')} | "
                             f"{fmt(r.get('cost_vs_full_block'), '.2f')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: check every command runs")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results/<date>-<gpu>)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole check (default 650 on a GPU, 1800 in a dry run); a command that "
                             "would run past it is cut short and recorded")
    parser.add_argument("--master-port", type=int, default=29533)
    args = parser.parse_args()
    if not args.dry_run and not cuda_available():
        print("error: no CUDA device; use --dry-run to check the steps on the CPU", file=sys.stderr)
        return 2
    args.budget = Budget(args.budget or (1800 if args.dry_run else 650))
    # Each command's own limit, so that one hung step cannot take the others' time.
    args.caps = ({"gpu_tests": 300, "throughput": 300, "prepare": 120, "run": 300, "speed_recipe": 300}
                 if args.dry_run else
                 {"gpu_tests": 120, "throughput": 150, "prepare": 45, "run": 75, "speed_recipe": 200})
    if args.out is None:
        import torch  # noqa: PLC0415

        device = "cpu-dry-run" if args.dry_run else torch.cuda.get_device_name(0).replace(" ", "-")
        args.out = os.path.join(ROOT, "benchmarks", "results", f"{datetime.date.today().isoformat()}-{device}")
    os.makedirs(args.out, exist_ok=True)
    log = Log(os.path.join(args.out, "log.txt"))
    results = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        args.work = work
        for name, step in (("environment", environment), ("gpu_tests", gpu_tests), ("throughput", throughput),
                           ("pretrain", pretrain), ("speed_recipe", speed_recipe)):
            start = time.perf_counter()
            try:
                results[name] = step(args, log)
            except Exception as e:  # noqa: BLE001 - a broken step is recorded; the others still run
                results[name] = {"status": f"failed: {type(e).__name__}: {e}"}
            results[name]["seconds"] = round(time.perf_counter() - start, 1)
            print(f"{name}: {results[name]['status']} ({results[name]['seconds']} s)", file=sys.stderr, flush=True)
        results["throughput"]["targets"] = targets(results["throughput"])
    for name, result in results.items():
        with open(os.path.join(args.out, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    text = summary(results, args)
    with open(os.path.join(args.out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    ok = all(r["status"] == "ok" or r["status"].startswith("skipped") for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

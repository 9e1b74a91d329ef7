"""The GPU check (benchmarks/gpu_check.sh) must run start to finish wherever it is started: its dry run executes every
step's command with tiny sizes on the CPU, so that nothing fails on a GPU for a reason a CPU could have shown."""

import json
import os
import subprocess
import sys

import pytest

from pretrain_helpers import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_check  # noqa: E402

STEPS = ("environment", "gpu_tests", "throughput", "pretrain", "speed_recipe")


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_the_results_folder(tmp_path):
    out = tmp_path / "results"
    result = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--dry-run", "--out", str(out),
                             "--master-port", "29541"], cwd=ROOT, env=dict(os.environ, PYTHON=sys.executable),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert sorted(os.listdir(out)) == sorted([f"{s}.json" for s in STEPS] + ["summary.md", "log.txt"])
    steps = {s: json.loads((out / f"{s}.json").read_text()) for s in STEPS}
    assert steps["gpu_tests"]["status"].startswith("skipped: no CUDA")  # collected, then skipped
    assert steps["gpu_tests"]["counts"]["skipped"] >= 1
    rows = steps["throughput"]["report"]["rows"]
    assert [row["length"] for row in rows] == [32, 64]
    assert {r["model"] for r in rows[0]["results"]} == {"ours-flash", "ours-sdpa", "ours-eager", "ours-rtd-flash", "hf"}
    runs = steps["pretrain"]["runs"]
    assert runs["flash"]["status"] == "ok"
    assert runs["flash"]["metrics"]["last_loss"] < runs["flash"]["metrics"]["first_loss"]
    assert runs["sdpa"]["status"].startswith("skipped")
    resume = runs["flash-resume"]
    assert resume["status"] == "ok" and "from step 6" in resume["resume_line"]
    assert resume["metrics"]["train_steps_logged"] == [8] and resume["metrics"]["steps_unique"]
    assert runs["fp16"]["status"].startswith("skipped")
    assert runs["mixture"]["status"] == "ok"  # two sources: per-source samples and validation records
    recipe = {r["model"]: r for r in steps["speed_recipe"]["report"]["rows"][0]["results"]}
    assert set(recipe) == {"ours-sdpa", "ours-sdpa-compiled", "ours-sdpa-documents"}
    assert recipe["ours-sdpa-compiled"]["speedup_vs_not_compiled"] > 0
    assert recipe["ours-sdpa-documents"]["cost_vs_full_block"] > 0
    summary = (out / "summary.md").read_text()
    assert "## Speed recipe" in summary and "| speed_recipe | ok |" in summary
    assert "dry run" in summary and "| flash-resume | ok |" in summary and "| mixture | ok |" in summary


def test_targets_are_read_from_the_throughput_report():
    report = {"rows": [
        {"length": 512, "results": [{"model": "ours-flash", "tokens_per_s": 300.0, "speedup_vs_hf": 3.0, "mfu": 0.5,
                                     "peak_memory_per_token_kib": 10.0},
                                    {"model": "ours-sdpa", "tokens_per_s": 200.0, "speedup_vs_hf": 2.0, "mfu": 0.33,
                                     "peak_memory_per_token_kib": 20.0},
                                    {"model": "ours-rtd-flash", "tokens_per_s": 900.0, "mfu": 0.4},
                                    {"model": "hf", "tokens_per_s": 100.0}]},
        {"length": 8192, "results": [{"model": "ours-flash", "tokens_per_s": 150.0, "peak_memory_per_token_kib": 12.0},
                                     {"model": "ours-sdpa", "error": "out of memory"}]}]}
    goals = gpu_check.targets({"report": report})
    assert goals["best_at_512"] == "ours-flash" and goals["speedup_vs_hf_at_512"] == 3.0
    assert goals["memory_per_token_8192_over_512_ours-flash"] == 1.2
    assert "memory_per_token_8192_over_512_ours-sdpa" not in goals
    assert goals["flash_over_sdpa"] == {512: 1.5}
    assert goals["rtd_tokens_per_s_at_512"] == 900.0 and goals["rtd_mfu_at_512"] == 0.4  # not "best": another task


def test_a_run_is_judged_by_its_metrics():
    def run(losses, skipped=None, steps=None):
        steps = steps or [10 * (i + 1) for i in range(len(losses))]
        return {"returncode": 0, "output_tail": "", "metrics": {
            "losses_finite": all(x == x and abs(x) != float("inf") for x in losses), "steps_unique": True,
            "first_loss": losses[0], "last_loss": losses[-1], "train_steps_logged": steps, "skipped_steps": skipped}}

    assert gpu_check.judge_run(run([10.0, 8.0]), None) == "ok"
    assert "did not fall" in gpu_check.judge_run(run([8.0, 8.5]), None)
    assert "not finite" in gpu_check.judge_run(run([10.0, float("nan")]), None)
    assert gpu_check.judge_run(run([10.0, 9.0, 8.0], skipped=4), None) == "ok"  # the loss scale settling
    assert "16 of 30 updates skipped" in gpu_check.judge_run(run([10.0, 9.0, 8.0], skipped=16), None)
    assert "resuming from step 60" in gpu_check.judge_run(run([7.0]), 60)

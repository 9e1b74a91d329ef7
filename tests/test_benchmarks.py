"""The benchmark scripts run and report what they promise (their numbers are not asserted: speed is measured by the
benchmarks themselves, not by tests)."""

import json
import os
import subprocess
import sys

import pytest

from pretrain_helpers import ROOT

pytestmark = pytest.mark.slow


def run_benchmark(script, *args) -> dict:
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout)


def test_throughput_benchmark_compares_with_hf_on_cpu(tmp_path):
    out = tmp_path / "t.json"
    report = run_benchmark("throughput.py", "--device", "cpu", "--lengths", "32", "--tokens-per-step", "64",
                           "--steps", "1", "--warmup", "0", "--out", str(out))
    assert json.loads(out.read_text()) == report
    rows = report["rows"][0]["results"]
    assert [r["model"] for r in rows] == ["ours-sdpa", "ours-eager", "hf"]
    assert all(r["tokens_per_s"] > 0 for r in rows) and all("speedup_vs_hf" in r for r in rows[:2])


def test_tokenizer_benchmark_ids_are_identical():
    report = run_benchmark("tokenizer.py", "--repeat", "1", "--spm-pieces", "2000")
    assert report["ids_identical"] == {"fast_vs_tiktoken": True, "reference_vs_fast_first_40_docs": True}
    assert set(report["tokens_per_s"]) == {"tiktoken_gpt2", "tiktoken_gpt2_per_document", "fast_engine",
                                           "reference_engine", "gpt2_tokenize", "spm_tokenize"}
    assert report["gpt2_tokenize_vs_tiktoken"] > 0 and report["spm_tokenize_vs_tiktoken"] > 0


def test_data_prep_benchmark_reports_prepare_and_reader():
    report = run_benchmark("data_prep.py", "--repeat", "1", "--num-proc", "1", "--spm-pieces", "2000")
    assert report["prepare"]["num_proc=1"]["mb_per_s"] > 0 and report["reader"]["samples_per_s"] > 0
    assert report["prepare_spm"]["num_proc=1"]["mb_per_s"] > 0 and report["spm_vs_gpt2"]["num_proc=1"] > 0


def test_streaming_benchmark_reports_the_order_and_the_reading():
    report = run_benchmark("streaming.py", "--shards", "8", "--blocks-per-shard", "32", "--steps", "8",
                           "--batch", "16", "--windows", "1,4")
    order = {row["window"]: row for row in report["order"]}
    assert set(order) == {1, 4, "whole dataset"} and order[1]["shards_per_step"] == 1.0  # a window of one shard
    assert order[1]["mean_distance_share"] < order[4]["mean_distance_share"] < 0.5
    reading = report["reading"]
    assert reading["local_blocks_per_s"] > 0 and reading["streamed_blocks_per_s"] > 0
    assert reading["streamed_vs_local"] > 0

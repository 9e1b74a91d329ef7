"""The README's end-to-end command: data prep of the built-in python-help text, the quickstart preset, plots, export
and fine-tuning (which beats the same model fine-tuned from scratch)."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from deberta_pretrain.finetune.tasks import python_help_order_task
from deberta_pretrain.training.metrics import read_metrics
from pretrain_helpers import ROOT

pytestmark = pytest.mark.slow


def test_quickstart_script_learns(tmp_path):
    env = dict(os.environ, DATA=str(tmp_path / "python-help"), OUTPUTS=str(tmp_path / "outputs"),
               DS_ACCELERATOR="cpu", WANDB_MODE="offline")
    result = subprocess.run(["bash", "launch/quickstart.sh", "logging.progress_bar=false"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    run_dir = tmp_path / "outputs" / "quickstart"
    validation = [r for r in read_metrics(run_dir) if r["split"] == "validation"]
    config = json.load(open(run_dir / "model_config.json"))
    uniform = math.log(config["vocab_size"])  # an untrained model predicts about uniformly
    assert validation[0]["step"] == 0 and validation[0]["loss"] == pytest.approx(uniform, abs=0.5)
    assert validation[-1]["step"] == 300
    assert validation[-1]["loss"] < uniform - 4.0, validation
    assert validation[-1]["accuracy"] > 0.1
    for name in ("loss", "accuracy", "lr", "throughput"):
        png = run_dir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(n.startswith("offline-run-") for n in os.listdir(run_dir / "wandb"))
    exported = set(os.listdir(run_dir / "export"))
    assert {"pytorch_model.bin", "model_config.json", "bpe_encoder.bin", "config.json", "model.safetensors",
            "vocab.json", "merges.txt", "README.md"} <= exported
    assert_publishable_card(run_dir / "export" / "README.md", validation[-1])
    # fine-tuned on the built-in word-order task: well above the majority class of its dev split, and well above
    # the same model fine-tuned from scratch (which only the pretraining separates from it)
    accuracy = finetune_accuracy(run_dir / "finetune" / "python-help-order" / "step_00000300")
    assert "| python-help-order | lr 0.0003 | accuracy |" in result.stdout
    scratch = subprocess.run([sys.executable, "launch/finetune.py", f"checkpoint={run_dir}", "task=python-help-order",
                              "from_scratch=true", "logging.progress_bar=false"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=600)
    assert scratch.returncode == 0, scratch.stdout[-3000:] + scratch.stderr[-5000:]
    from_scratch = finetune_accuracy(run_dir / "finetune" / "python-help-order" / "from_scratch")
    dev = [r["label"] for r in python_help_order_task("validation")]
    majority = max(dev.count(label) for label in set(dev)) / len(dev)
    assert accuracy > majority + 0.2, (accuracy, majority)  # measured 0.854 vs 0.513
    assert from_scratch < accuracy - 0.2, (from_scratch, accuracy)  # measured 0.499


def finetune_accuracy(folder) -> float:
    results = json.load(open(folder / "results.json"))
    return results["tasks"]["python-help-order"]["summary"]["accuracy"]["median"]


def assert_publishable_card(path, last_validation: dict) -> None:
    """The export's model card parses as the Hub reads it, states what the run knows (its final validation loss,
    the fine-tuning table of that checkpoint) and holds no placeholder."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(path)
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "fill-mask"
    assert {"deberta", "deberta_pretrain", "masked-lm"} <= set(card.data.tags)
    text = card.text
    assert f"| validation | 300 | {last_validation['loss']:.4f} |" in text
    assert "## Fine-tuning (python-help-order)" in text and "| python-help-order | lr 0.0003 | accuracy |" in text
    assert "AutoModelForMaskedLM.from_pretrained" in text and "MaskedLanguageModel.load_model" in text
    for placeholder in ("TODO", "More Information Needed", "{{", "None", "<your", "<fill", "<name"):
        assert placeholder not in text, placeholder
    assert not re.search(r"\bnan\b", text)

"""Export of training checkpoints: release format through our loader, HF format through transformers (model and
tokenizer), identical weights from every ZeRO stage, safe loading, no overwriting."""

import json
import os
import subprocess
import sys

import pytest
import torch

from deberta_pretrain.deberta import GPT2Tokenizer, MaskedLanguageModel
from deberta_pretrain.deberta.loading import load_state_file
from deberta_pretrain.training.metrics import read_metrics
from pretrain_helpers import ROOT, module_state, run_pretrain, tiny_overrides

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow
EXPORT = os.path.join(ROOT, "launch", "export.py")


@pytest.fixture(scope="module")
def runs(python_help_64, tmp_path_factory):
    """The same 2-step fp32 tiny run under ZeRO 0, 2 and 3."""
    root = tmp_path_factory.mktemp("runs")
    for stage in (0, 2, 3):
        run_pretrain(tiny_overrides(python_help_64, root, f"zero{stage}", **{
            "deepspeed.zero_stage": stage, "train.max_steps": 2, "model.hidden_dropout_prob": 0.0,
            "model.attention_probs_dropout_prob": 0.0}))
    return root


def export(checkpoint, output, *options, check=True):
    result = subprocess.run([sys.executable, EXPORT, f"checkpoint={checkpoint}", f"output={output}", *options],
                            cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, DS_ACCELERATOR="cpu"))
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_every_zero_stage_exports_the_same_weights(runs, tmp_path):
    from deberta_pretrain.export import export as export_checkpoint

    states = {}
    for stage in (0, 2, 3):  # through the command once (the other tests use it too), the others in this process
        if stage == 0:
            export(runs / f"zero{stage}", tmp_path / f"z{stage}", "format=release")
        else:
            export_checkpoint(runs / f"zero{stage}", tmp_path / f"z{stage}", "release")
        states[stage] = load_state_file(str(tmp_path / f"z{stage}" / "pytorch_model.bin"))
    # Stage 0 keeps the module whole: the exported weights are exactly what the checkpoint holds.
    for key, value in module_state(runs / "zero0", 2).items():
        assert torch.equal(states[0][key], value), key
    for stage in (2, 3):
        assert states[stage].keys() == states[0].keys()
        for key in states[0]:
            torch.testing.assert_close(states[stage][key], states[0][key], rtol=0, atol=1e-6, msg=key)


def test_release_export_loads_through_load_model_with_identical_outputs(runs, tmp_path):
    out = tmp_path / "release"
    export(runs / "zero2" / "checkpoints" / "step_00000002", out, "format=release")
    assert sorted(os.listdir(out)) == ["README.md", "bpe_encoder.bin", "export.json", "model_config.json",
                                       "pytorch_model.bin"]
    assert json.load(open(out / "model_config.json"))["pos_att_type"] == "p2c|c2p"
    loaded = MaskedLanguageModel.load_model(str(out), strict=True).eval()
    # Reference: DeepSpeed's own consolidation of the same checkpoint, loaded by hand.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    reference = MaskedLanguageModel(loaded.config).eval()
    reference.load_state_dict(get_fp32_state_dict_from_zero_checkpoint(str(runs / "zero2" / "checkpoints")))
    tokenizer = GPT2Tokenizer(str(out / "bpe_encoder.bin"))
    ids = torch.tensor([[1] + tokenizer.encode("The len() of a list is its size.") + [2]])
    labels = torch.full_like(ids, -100)
    labels[0, 2:5] = ids[0, 2:5]
    with torch.no_grad():
        a, b = loaded(ids, torch.ones_like(ids), labels), reference(ids, torch.ones_like(ids), labels)
    assert torch.equal(a["logits"], b["logits"]) and a["loss"] == b["loss"]


def test_hf_export_loads_into_transformers_with_the_same_logits_and_ids(runs, tmp_path):
    out = tmp_path / "hf"
    export(runs / "zero3", out, "format=hf")
    model, info = transformers.AutoModelForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    assert type(model).__name__ == "DebertaV2ForMaskedLM"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    export(runs / "zero3", tmp_path / "release", "format=release")
    # HF's MLM head reads the last layer directly (no Enhanced Mask Decoder): compare with ours without EMD.
    ours = MaskedLanguageModel.load_model(str(tmp_path / "release"), use_emd=False).eval()
    tokenizer = GPT2Tokenizer(str(tmp_path / "release" / "bpe_encoder.bin"))
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(out))
    from deberta_pretrain.data.inputs import python_help_topics

    texts = [t[:2000] for t in python_help_topics()[:20]] + ["naïve café 😀  tabs\tand  spaces", "x = [1, 2]"]
    for text in texts:
        assert hf_tokenizer(text)["input_ids"] == [1] + tokenizer.encode(text) + [2]
    ids = torch.tensor([hf_tokenizer(texts[-2])["input_ids"]])
    ids[0, 3] = tokenizer.mask_token_id
    with torch.no_grad():
        theirs = model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        mine = ours(ids, torch.ones_like(ids))["logits"]
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_bf16_export_and_refusals(runs, tmp_path):
    out = tmp_path / "bf16"
    export(runs / "zero0", out, "format=all", "dtype=bf16")
    state = load_state_file(str(out / "pytorch_model.bin"))
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    assert json.load(open(out / "config.json"))["torch_dtype"] == "bfloat16"
    before = {n: os.path.getmtime(out / n) for n in os.listdir(out)}
    again = export(runs / "zero0", out, check=False)
    assert again.returncode != 0 and "overwrite=true" in again.stderr
    assert {n: os.path.getmtime(out / n) for n in os.listdir(out)} == before
    export(runs / "zero0", out, "overwrite=true")
    assert load_state_file(str(out / "pytorch_model.bin"))["deberta.embeddings.LayerNorm.weight"].dtype == \
        torch.float32
    missing = export(tmp_path / "nothing", tmp_path / "x", check=False)
    assert missing.returncode != 0 and "nothing" in missing.stderr and not (tmp_path / "x").exists()
    usage = export(runs / "zero0", tmp_path / "y", "fromat=hf", check=False)  # a Hydra app: misspelt keys named
    assert usage.returncode == 1 and "fromat" in usage.stderr and not (tmp_path / "y").exists()
    added = export(runs / "zero0", tmp_path / "y", "+fromat=hf", check=False)
    assert added.returncode == 1 and "unknown key fromat (did you mean format?)" in added.stderr


def test_incomplete_checkpoint_is_refused(runs, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(runs / "zero0", copy)
    os.remove(copy / "checkpoints" / "step_00000002" / "complete.json")
    result = export(copy, tmp_path / "out", check=False)
    assert result.returncode != 0 and "incomplete" in result.stderr


class Payload:
    """Any class instance needs pickle's arbitrary-object loading."""


def test_weights_with_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "pytorch_model.bin"
    torch.save({"deberta.x": torch.zeros(1), "evil": Payload()}, path)
    with pytest.raises(ValueError, match="pickled Python objects"):
        load_state_file(str(path))


def test_continued_pretraining_starts_from_the_exported_weights(runs, python_help_64, tmp_path):
    """...and the export of the continued run says in its card which Hub model it descends from."""
    export(runs / "zero0", tmp_path / "release", "format=release")
    card = (tmp_path / "release" / "README.md").read_text()
    assert "base_model" not in card  # the source run started from scratch
    # as if the source had been continued from a release itself: its card names the Hub model
    with_base = card.replace("---\n", "---\nbase_model: microsoft/deberta-v3-xsmall\n", 1)
    (tmp_path / "release" / "README.md").write_text(with_base)
    run_pretrain(tiny_overrides(python_help_64, tmp_path, "continued", **{
        "model.init_from": str(tmp_path / "release"), "train.max_steps": 1, "model.hidden_dropout_prob": 0.0,
        "model.attention_probs_dropout_prob": 0.0}))
    # Same seed, data and evaluation settings: the new run's step-0 evaluation sees the source run's final weights.
    source = [r for r in read_metrics(runs / "zero0") if r["split"] == "validation"][-1]
    start = [r for r in read_metrics(tmp_path / "continued") if r["split"] == "validation"][0]
    assert start["step"] == 0 and source["step"] == 2
    assert start["loss"] == pytest.approx(source["loss"], abs=1e-6)
    export(tmp_path / "continued", tmp_path / "continued-release", "format=hf")
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "continued-release" / "README.md")
    assert card.data.base_model == "microsoft/deberta-v3-xsmall"
    assert "continued from microsoft/deberta-v3-xsmall" in card.text
    assert "AutoModelForMaskedLM" in card.text and "load_model" not in card.text  # format=hf: no release files


def test_the_model_card_states_what_the_run_knows(runs, python_help_64, tmp_path):
    """The card of a ZeRO-3 run's export: the Hub parses its metadata (license as given), and its figures are the
    run's own: parameters of the exported weights, steps and tokens, the last validation loss, digests of the
    config and of the data's manifest."""
    import hashlib

    from huggingface_hub import ModelCard

    export(runs / "zero3", tmp_path / "out", "license=apache-2.0")
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "fill-mask"
    assert card.data.library_name == "transformers" and "datasets" not in card.data.to_dict()
    weights = torch.load(tmp_path / "out" / "pytorch_model.bin", weights_only=True)
    assert f"- {sum(t.numel() for t in weights.values()):,} parameters: 2 layers, hidden size 128" in card.text
    assert "- 2 steps of 4 blocks of 64 tokens: 512 tokens" in card.text
    last = [r for r in read_metrics(runs / "zero3") if r["split"] == "validation"][-1]
    assert f"| validation | 2 | {last['loss']:.4f} | {last['accuracy']:.4f} |" in card.text
    digest = hashlib.sha256((runs / "zero3" / ".hydra" / "config.yaml").read_bytes()).hexdigest()
    manifest = hashlib.sha256((python_help_64 / "manifest.json").read_bytes()).hexdigest()
    assert f"sha256 `{digest}`" in card.text and f"manifest.json sha256 `{manifest}`" in card.text


def test_continued_pretraining_refuses_data_with_another_vocabulary(runs, tmp_path):
    from deberta_pretrain.data.prepare import prepare
    from deberta_pretrain.deberta.gpt2_vocab import build_bpe_encoder, save_bpe_encoder

    export(runs / "zero0", tmp_path / "release", "format=release")
    (tmp_path / "dict.txt").write_text("".join(f"{i} {1000 - i}\n" for i in range(1000)))
    save_bpe_encoder(build_bpe_encoder(dict_txt=str(tmp_path / "dict.txt")), tmp_path / "other.bin")
    (tmp_path / "corpus.txt").write_text("".join(f"line {i} of a small corpus\n" for i in range(200)))
    prepare({"output": str(tmp_path / "data"), "input": {"type": "text", "paths": [str(tmp_path / "corpus.txt")]},
             "vocab": str(tmp_path / "other.bin"), "engine": "auto", "max_seq_length": 64, "packing": "continuous",
             "validation_fraction": 0.1, "segment_mb": 1, "num_proc": 1, "overwrite": False}, progress=False)
    result = run_pretrain(tiny_overrides(tmp_path / "data", tmp_path, "wrong", **{
        "model.init_from": str(tmp_path / "release")}), check=False)
    assert result.returncode != 0 and "prepared with another one" in result.stdout + result.stderr
    assert not (tmp_path / "wrong").exists()

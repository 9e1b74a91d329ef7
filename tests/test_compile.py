"""``impl.compile=true``: torch.compile (inductor's C++ backend on CPU) changes speed, not results. The training step
has no graph break; a compiled run's losses equal the eager run's within 1e-4 (relative) over 10 fp32 steps, for
MLM (ZeRO 0, and 2 with offload) and RTD (ZeRO 3); its checkpoints are the eager run's (same keys, no
``_orig_mod.``) and resume either way; evaluations and short last batches compile nothing more; a machine that
cannot compile is told so in one line."""

import os
import shutil

import pytest
import torch

from conftest import small_config
from deberta_pretrain.deberta import MaskedLanguageModel, ModelConfig, set_attention_backend
from deberta_pretrain.deberta.rtd import ReplacedTokenDetectionModel, RTDModel
from deberta_pretrain.training.metrics import read_metrics
from pretrain_helpers import checkpoint_dir, module_state, run_pretrain, tiny_overrides

NO_DROPOUT = {"model.hidden_dropout_prob": 0.0, "model.attention_probs_dropout_prob": 0.0}  # inductor draws its own
TEN_STEPS = {"train.max_steps": 10, "train.checkpoint_every": 5, "train.eval_every": 5,
             "train.eval_samples": 5}  # 5 validation blocks in micro-batches of 2: a short last batch each time
RTD = {"objective": "rtd", "model.num_hidden_layers": 2, "rtd.generator.num_hidden_layers": 2}


def model_and_inputs(kind: str, documents: bool):
    torch.manual_seed(0)
    config = ModelConfig.from_dict(small_config("v3", position_biased_input=False))
    ids = torch.randint(5, 97, (2, 30))
    labels = torch.full_like(ids, -100)
    labels[:, 3:8] = ids[:, 3:8]
    inputs = {"input_ids": ids, "input_mask": torch.ones_like(ids), "labels": labels, "max_predictions": 8}
    if documents:
        inputs.update(document_ids=(torch.arange(30) // 10).expand(2, -1), position_ids=(torch.arange(30) % 10)
                      .expand(2, -1))
    if kind == "mlm":
        return MaskedLanguageModel(config), inputs
    model = RTDModel(MaskedLanguageModel(config), ReplacedTokenDetectionModel(config), "gdes", 10.0)
    return model, {**inputs, "sample_uniforms": torch.rand(2, 8)}


@pytest.mark.parametrize("documents", [False, True])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("kind", ["mlm", "rtd"])
def test_the_training_forward_has_no_graph_break(kind, backend, documents):
    """The graph breaks torch.compile meets in the models' forward (their backward is traced from it): none with the
    eager and sdpa backends. (The fused kernel's path is left out of the graph on purpose: see
    ``DisentangledSelfAttention._fused``.)"""
    import torch._dynamo

    model, inputs = model_and_inputs(kind, documents)
    set_attention_backend(model.train(), backend)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(**inputs)
    reasons = [f"{b.reason.splitlines()[0]} at {b.user_stack[-1] if b.user_stack else '?'}"
               for b in explanation.break_reasons]
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, reasons


def losses(run_dir, split="train"):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["split"] == split}


def assert_close_losses(reference, other, since=0):
    expected = {step: loss for step, loss in reference.items() if step > since}
    got = {step: loss for step, loss in other.items() if step > since}
    assert expected.keys() == got.keys() and expected
    for step, loss in expected.items():
        assert abs(got[step] - loss) <= 1e-4 * abs(loss), (step, loss, got[step])


def recompiles(output: str) -> int:
    return output.count("Recompiling function")


@pytest.mark.slow
def test_compiled_mlm_equals_eager_and_checkpoints_are_interchangeable(python_help_64, tmp_path):
    common = {**NO_DROPOUT, **TEN_STEPS}
    env = {"TORCH_LOGS": "recompiles"}
    run_pretrain(tiny_overrides(python_help_64, tmp_path, "eager", **common))
    compiled = run_pretrain(tiny_overrides(python_help_64, tmp_path, "compiled", **common, **{"impl.compile": True}),
                            env=env, timeout=600)
    assert_close_losses(losses(tmp_path / "eager"), losses(tmp_path / "compiled"))
    assert_close_losses(losses(tmp_path / "eager", "validation"), losses(tmp_path / "compiled", "validation"), -1)
    # evaluation mode compiles once (the grad-mode guard), then three evaluations with short last batches: nothing
    assert recompiles(compiled.stdout + compiled.stderr) == 1, (compiled.stdout + compiled.stderr)[-3000:]
    log = open(tmp_path / "compiled" / "train.log").read()
    assert "impl.compile: compiling the model and the first step of this start took" in log
    eager_state, compiled_state = module_state(tmp_path / "eager", 10), module_state(tmp_path / "compiled", 10)
    assert eager_state.keys() == compiled_state.keys()
    assert not [key for key in compiled_state if "_orig_mod" in key]

    # resume crosswise from step 5: a compiled run eagerly, an eager run compiled
    for source, name, switch in (("compiled", "compiled-then-eager", False), ("eager", "eager-then-compiled", True)):
        shutil.copytree(tmp_path / source, tmp_path / name)
        shutil.rmtree(checkpoint_dir(tmp_path / name, 10))
        with open(tmp_path / name / "checkpoints" / "latest", "w") as f:
            f.write("step_00000005")
        run_pretrain(tiny_overrides(python_help_64, tmp_path, name, **common, **{"impl.compile": switch}),
                     timeout=600)
        assert_close_losses(losses(tmp_path / "eager"), losses(tmp_path / name), since=5)
        assert "impl.compile" in open(tmp_path / name / "config_changes.jsonl").read()


@pytest.mark.slow
def test_compiled_rtd_equals_eager_under_zero3(python_help_64, tmp_path):
    """RTD at ZeRO-3: its shared tables (the generator's embeddings the discriminator reads, the tied decoder, the
    relative-position table) are partitioned, and the compiled step still equals the eager one."""
    common = {**NO_DROPOUT, **TEN_STEPS, **RTD, "deepspeed": "zero3"}
    run_pretrain(tiny_overrides(python_help_64, tmp_path, "eager", **common))
    run_pretrain(tiny_overrides(python_help_64, tmp_path, "compiled", **common, **{"impl.compile": True}),
                 timeout=600)
    assert_close_losses(losses(tmp_path / "eager"), losses(tmp_path / "compiled"))
    assert_close_losses(losses(tmp_path / "eager", "validation"), losses(tmp_path / "compiled", "validation"), -1)


@pytest.mark.slow
def test_compiled_mlm_with_the_optimizer_offloaded(python_help_64, tmp_path):
    """ZeRO-2 with DeepSpeed's CPU-Adam: the compiled module inside that engine, 4 steps equal to eager's."""
    common = {**NO_DROPOUT, "deepspeed": "zero2-offload"}
    run_pretrain(tiny_overrides(python_help_64, tmp_path, "eager", **common))
    run_pretrain(tiny_overrides(python_help_64, tmp_path, "compiled", **common, **{"impl.compile": True}),
                 timeout=600)
    assert_close_losses(losses(tmp_path / "eager"), losses(tmp_path / "compiled"))
    keys = set(module_state(tmp_path / "compiled", 4))
    assert not [k for k in keys if "_orig_mod" in k]


def test_a_machine_without_a_compiler_is_told_in_one_line(python_help_64, tmp_path):
    result = run_pretrain(tiny_overrides(python_help_64, tmp_path, "run", **{"impl.compile": True}),
                          env={"CXX": "/no/such/g++", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")},
                          check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "Traceback" not in out, out[-3000:]
    assert "impl.compile=true: torch.compile cannot build code on this machine" in out
    assert "it needs a C++ compiler" in out and "impl.compile=false" in out
    assert not os.path.exists(tmp_path / "run")

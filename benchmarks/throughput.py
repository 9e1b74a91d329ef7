"""Training throughput of our MLM model against Hugging Face's, in one process, with identical weights.

Full training steps (forward, backward, AdamW step) after warm-up, timed with CUDA events on a GPU (wall clock on
the CPU): tokens/s, MFU (model FLOPs of deberta_pretrain.deberta.flops.flops_per_token, PaLM-style, over the
spec peak of the detected GPU), peak memory, and the ratio of each of our attention backends to HF's
``DebertaV2ForMaskedLM`` (``DebertaForMaskedLM`` for v1 configs; built with ``legacy=False`` so the release head
loads). HF's head has no Enhanced Mask Decoder, so ours runs without it too (``--emd`` to include it).

    python benchmarks/throughput.py                          # GPU: deberta-v3-base, bf16, L = 128, 512, 2048, 8192
    python benchmarks/throughput.py --device cpu             # CPU: the tiny model, fp32, L = 128
    python benchmarks/throughput.py --model deberta-base --lengths 512 --tokens-per-step 16384
    python benchmarks/throughput.py --rtd                    # adds objective=rtd (generator of half depth + GDES)
    python benchmarks/throughput.py --compile                # adds each backend under torch.compile (impl.compile)
    python benchmarks/throughput.py --documents              # adds packed documents (data.document_attention)

With ``--rtd`` each length also times a replaced-token-detection step (``RTDModel``: generator MLM with EMD,
sampling, discriminator, GDES) with the first backend; its tokens/s count the discriminator's tokens and its MFU
uses the generator's plus the discriminator's FLOPs.

With ``--compile`` every contender of ours is also timed compiled (inductor; its warm-up steps compile), with
``speedup_vs_not_compiled`` against the same backend in eager mode. With ``--documents`` every backend is also timed
on the same blocks cut into documents of about L/4 tokens (``document_ids``: the fused kernel masks by document
ids, sdpa and eager by a block-diagonal L x L mask), with ``cost_vs_full_block``.

On a GPU the JSON also goes to benchmarks/results/<date>-<gpu>.json (``--out`` to choose).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time

import torch

from common import machine

from deberta_pretrain.data.masking import default_max_predictions
from deberta_pretrain.deberta import MaskedLanguageModel, ModelConfig, set_attention_backend
from deberta_pretrain.deberta import flops as model_flops
from deberta_pretrain.export import hf_config_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IGNORE = -100


def model_config(name: str) -> ModelConfig:
    # The model files are plain YAML (no interpolation), so PyYAML reads them without Hydra being installed.
    import yaml  # noqa: PLC0415

    with open(os.path.join(ROOT, "conf", "model", f"{name}.yaml"), encoding="utf-8") as f:
        return ModelConfig.from_dict(yaml.safe_load(f)).validate()


def hf_model(config: ModelConfig, state: dict):
    import transformers  # noqa: PLC0415

    hf = hf_config_dict(config, "fp32")
    config_cls, model_cls = ((transformers.DebertaV2Config, transformers.DebertaV2ForMaskedLM) if config.is_v2
                             else (transformers.DebertaConfig, transformers.DebertaForMaskedLM))
    model = model_cls(config_cls(**{k: v for k, v in hf.items() if k not in ("architectures", "torch_dtype")}))
    result = model.load_state_dict(state, strict=False)
    ignored = getattr(model, "_keys_to_ignore_on_load_unexpected", None) or []
    unexpected = [k for k in result.unexpected_keys if not any(p in k for p in ignored)]
    if result.missing_keys or unexpected:
        raise RuntimeError(f"HF model does not take our weights: missing {result.missing_keys}, "
                           f"unexpected {unexpected}")
    return model


def make_batch(config: ModelConfig, batch: int, length: int, device, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, min(config.vocab_size, 50000), (batch, length), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2
    predict = torch.rand(batch, length, generator=g) < 0.15
    predict[:, 0] = predict[:, -1] = False
    labels = torch.where(predict, ids, torch.full_like(ids, IGNORE))
    inputs = torch.where(predict, torch.full_like(ids, config.vocab_size - 1), ids)
    return {k: v.to(device) for k, v in {"input_ids": inputs, "mask": torch.ones_like(ids), "labels": labels}.items()}


def time_training(step, steps: int, warmup: int, device) -> float:
    """Seconds per step (median of ``steps`` after ``warmup``)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def measure(name, model, forward, batch, args, device, dtype, flops_per_token, peak_tflops) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = forward(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        seconds = time_training(step, args.steps, args.warmup, device)
    except torch.cuda.OutOfMemoryError:
        return {"model": name, "error": "out of memory"}
    except Exception as error:  # noqa: BLE001 - one failing contender (e.g. a kernel that does not compile) must
        # not cost the measurements of the others
        first_line = (str(error).strip().splitlines() or [""])[0]
        return {"model": name, "error": f"{type(error).__name__}: {first_line[:300]}"}
    finally:
        optimizer.zero_grad(set_to_none=True)
    tokens = batch["input_ids"].numel()
    out = {"model": name, "step_s": round(seconds, 5), "tokens_per_s": round(tokens / seconds, 1)}
    if peak_tflops:
        out["mfu"] = round(tokens / seconds * flops_per_token / (peak_tflops * 1e12), 4)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        out["peak_memory_gib"] = round(peak / 2**30, 3)
        out["peak_memory_per_token_kib"] = round(peak / tokens / 1024, 2)
    return out


@contextlib.contextmanager
def counting_fused_kernel_calls():
    """Counts calls of the fused flash kernel, so that a silent fallback to ``sdpa`` cannot pose as ``flash``."""
    from deberta_pretrain.deberta import flash_attention  # noqa: PLC0415

    kernel, calls = flash_attention.flash_disentangled_attention, [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        return kernel(*args, **kwargs)

    flash_attention.flash_disentangled_attention = counted
    try:
        yield calls
    finally:
        flash_attention.flash_disentangled_attention = kernel


def rtd_contender(config: ModelConfig, device):
    """The objective=rtd model of ``config`` (the discriminator) with a generator of half its depth, GDES."""
    from deberta_pretrain.deberta.rtd import ReplacedTokenDetectionModel, RTDModel  # noqa: PLC0415

    generator = ModelConfig.from_dict({**config.to_dict(), "num_hidden_layers": max(2, config.num_hidden_layers // 2)})
    return RTDModel(MaskedLanguageModel(generator), ReplacedTokenDetectionModel(config), "gdes").to(device).train()


def rtd_forward(model, batch):
    return model(batch["input_ids"], batch["mask"], batch["labels"], batch["sample_uniforms"],
                 max_predictions=batch["sample_uniforms"].size(1))["loss"]


def ours_forward(model, batch):
    """As in training: static prediction slots (``max_predictions``), so that no step reads a count back."""
    return model(batch["input_ids"], batch["mask"], batch["labels"], position_ids=batch.get("position_ids"),
                 document_ids=batch.get("document_ids"), max_predictions=batch["slots"])["loss"]


def with_documents(batch: dict, length: int) -> dict:
    """``batch`` with its rows cut into documents of about ``length / 4`` tokens (random lengths, fixed seed)."""
    g = torch.Generator().manual_seed(1)
    rows, positions = [], []
    for _ in range(batch["input_ids"].size(0)):
        cuts = torch.randint(max(1, length // 8), max(2, length // 2), (length,), generator=g).cumsum(0)
        documents = torch.bucketize(torch.arange(length), cuts, right=True)
        starts = torch.searchsorted(documents, documents)  # first position of each token's document
        rows.append(documents)
        positions.append(torch.arange(length) - starts)
    device = batch["input_ids"].device
    return dict(batch, document_ids=torch.stack(rows).to(device), position_ids=torch.stack(positions).to(device))


def hf_forward(model, batch):
    return model(input_ids=batch["input_ids"], attention_mask=batch["mask"], labels=batch["labels"]).loss


def parse_args() -> argparse.Namespace:
    """The command line, with the device-dependent defaults filled in."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default=None, help="a conf/model name (default: deberta-v3-base; tiny on CPU)")
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--tokens-per-step", type=int, default=None, help="batch = tokens-per-step / length")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None, help="default bf16 on GPU, fp32 on CPU")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="default: flash sdpa eager on GPU, sdpa eager on CPU")
    parser.add_argument("--hf-max-length", type=int, default=2048, help="longest L at which HF is run")
    parser.add_argument("--eager-max-length", type=int, default=2048,
                        help="longest L at which our eager backend (which materialises the L x L scores) is run")
    parser.add_argument("--emd", action="store_true", help="our model with its Enhanced Mask Decoder")
    parser.add_argument("--rtd", action="store_true", help="also time objective=rtd (generator + discriminator)")
    parser.add_argument("--compile", action="store_true", help="also time each of ours under torch.compile")
    parser.add_argument("--documents", action="store_true", help="also time packed documents (document attention)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON file (default on GPU: benchmarks/results/<date>-<gpu>)")
    args = parser.parse_args()
    on_gpu = torch.device(args.device).type == "cuda"
    args.model = args.model or ("deberta-v3-base" if on_gpu else "tiny")
    args.lengths = args.lengths or ([128, 512, 2048, 8192] if on_gpu else [128])
    args.tokens_per_step = args.tokens_per_step or (16384 if on_gpu else 1024)
    args.steps = args.steps or (10 if on_gpu else 5)
    args.backends = args.backends or (["flash", "sdpa", "eager"] if on_gpu else ["sdpa", "eager"])
    args.dtype = args.dtype or ("bf16" if on_gpu else "fp32")
    return args


def measure_rtd(config, batch, length, args, device, dtype, peak, compiled: bool = False) -> dict:
    """One objective=rtd step with the first backend (``compiled``: under torch.compile)."""
    backend, batch_size = args.backends[0], batch["input_ids"].size(0)
    torch.manual_seed(0)
    rtd = rtd_contender(config, device)
    set_attention_backend(rtd, backend)
    rtd_batch = dict(batch, sample_uniforms=torch.rand(batch_size, batch["slots"], device=device))
    rtd_flops = model_flops.rtd_flops_per_token(rtd.generator.config, config, length, 0.15, True, batch_size * length)
    name = f"ours-rtd-{backend}" + ("-compiled" if compiled else "")
    return measure(name, compiled_model(rtd) if compiled else rtd, rtd_forward, rtd_batch, args, device, dtype,
                   rtd_flops, peak)


def compiled_model(model):
    """``model`` compiled in place as ``impl.compile`` does (DeepSpeed's engine.compile: nn.Module.compile), after
    forgetting what earlier contenders compiled."""
    import torch._dynamo  # noqa: PLC0415

    torch._dynamo.reset()
    model.compile(backend="inductor")
    return model


def measure_length(config, length: int, args, device, dtype, peak) -> dict:
    """Every contender at one sequence length, from the same weights and batch; ratios against HF."""
    batch_size = max(1, args.tokens_per_step // length)
    batch = make_batch(config, batch_size, length, device)
    batch["slots"] = max(default_max_predictions(length), int((batch["labels"] > 0).sum(1).max()))
    torch.manual_seed(0)
    state = {k: v.detach().cpu().clone() for k, v in MaskedLanguageModel(config, use_emd=args.emd).state_dict().items()}
    flops = model_flops.flops_per_token(config, length, 0.15, args.emd, batch_size * length)
    results = {}
    variants = [("", False, batch)]
    if args.compile:
        variants.append(("-compiled", True, batch))
    if args.documents:
        variants.append(("-documents", False, with_documents(batch, length)))
    for backend in args.backends:
        if backend == "eager" and length > args.eager_max_length:
            continue
        for suffix, compiled, inputs in variants:
            torch.manual_seed(0)
            ours = MaskedLanguageModel(config, use_emd=args.emd).to(device).train()
            ours.load_state_dict(state)  # every contender starts from the same weights
            set_attention_backend(ours, backend)
            with counting_fused_kernel_calls() as calls:
                row = measure(f"ours-{backend}{suffix}", compiled_model(ours) if compiled else ours, ours_forward,
                              inputs, args, device, dtype, flops, peak)
            row["fused_kernel_used"] = calls[0] > 0
            results[row["model"]] = row
            del ours
        base = results[f"ours-{backend}"].get("tokens_per_s")
        for suffix, key in (("-compiled", "speedup_vs_not_compiled"), ("-documents", "cost_vs_full_block")):
            row = results.get(f"ours-{backend}{suffix}", {})
            if base and "tokens_per_s" in row:
                row[key] = round(row["tokens_per_s"] / base, 3) if suffix == "-compiled" else \
                    round(base / row["tokens_per_s"], 3)
    if args.rtd:
        results[f"ours-rtd-{args.backends[0]}"] = measure_rtd(config, batch, length, args, device, dtype, peak)
        if args.compile:
            row = measure_rtd(config, batch, length, args, device, dtype, peak, compiled=True)
            plain = results[f"ours-rtd-{args.backends[0]}"].get("tokens_per_s")
            if plain and "tokens_per_s" in row:
                row["speedup_vs_not_compiled"] = round(row["tokens_per_s"] / plain, 3)
            results[row["model"]] = row
    if length <= args.hf_max_length:
        hf = hf_model(config, state).to(device).train()
        results["hf"] = measure("hf", hf, hf_forward, batch, args, device, dtype, flops, peak)
        del hf
    hf_tps = results.get("hf", {}).get("tokens_per_s")
    for key, row in results.items():
        if key != "hf" and "-rtd-" not in key and "-documents" not in key and hf_tps and "tokens_per_s" in row:
            row["speedup_vs_hf"] = round(row["tokens_per_s"] / hf_tps, 3)
    return {"length": length, "batch": batch_size, "model_tflop_per_token": flops / 1e12,
            "results": list(results.values())}


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    peak = model_flops.detect_peak_tflops(torch.cuda.get_device_name(device)) if on_gpu else None
    config = model_config(args.model)
    rows = []
    for length in args.lengths:
        if length > config.max_position_embeddings and config.position_biased_input:
            continue
        rows.append(measure_length(config, length, args, device, dtype, peak))
        print(json.dumps(rows[-1]), file=sys.stderr)
    report = {"benchmark": "throughput", "date": datetime.date.today().isoformat(), "machine": machine(),
              "settings": {"model": args.model, "dtype": str(dtype).replace("torch.", ""), "device": str(device),
                           "tokens_per_step": args.tokens_per_step, "steps": args.steps, "warmup": args.warmup,
                           "emd": args.emd, "peak_tflops": peak, "optimizer": "torch AdamW",
                           "compile": args.compile, "documents": args.documents},
              "rows": rows}
    text = json.dumps(report, indent=2)
    print(text)
    out = args.out
    if out is None and on_gpu:
        gpu = torch.cuda.get_device_name(device).replace(" ", "-")
        out = os.path.join(ROOT, "benchmarks", "results", f"{report['date']}-{gpu}.json")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

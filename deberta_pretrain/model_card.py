"""The model card (``README.md``) written with every export: the Hugging Face Hub's YAML metadata and a body made of
what the run knows (the model, the recipe, the steps and tokens per source, the schedule, the final validation
figures, the fine-tuning results of that checkpoint, how to load it, and digests for provenance). Nothing in it is
left for the user to fill in: a fact the run does not know is left out, not stubbed."""

from __future__ import annotations

import glob
import json
import os

import yaml

from .deberta import ModelConfig
from .deberta.release import hub_name
from .deberta.vocabulary import tokenizer_kind
from .fileio import sha256_file
from .layout import MANIFEST, MODEL_CARD, RESULTS_TABLE, finetune_results_files, recorded_config
from .training.checkpoint import read_marker
from .training.metrics import read_metrics

OBJECTIVES = {"mlm": "masked language modelling (DeBERTa v1's recipe)",
              "rtd": "replaced-token detection with a generator (DeBERTa v3's recipe)"}


def run_config(run_dir: str, checkpoint: str) -> dict:
    """The config the checkpoint was trained with (its ``complete.json``; older ones: the run's ``.hydra``)."""
    recorded = (read_marker(checkpoint) or {}).get("config")
    if recorded is None and os.path.isfile(recorded_config(run_dir)):
        with open(recorded_config(run_dir), encoding="utf-8") as f:
            recorded = yaml.safe_load(f)
    return recorded or {}


def data_sources(cfg: dict) -> dict[str, str]:
    """{name: path} of the run's prepared data (one unnamed source: the key ``""``)."""
    data = cfg.get("data") or {}
    if data.get("sources"):
        return {name: str(entry.get("path")) for name, entry in data["sources"].items()}
    return {"": str(data.get("path"))} if data.get("path") else {}


def base_model(init_from: str | None) -> str | None:
    """The Hub id the run continued from: a release name, or the ``base_model`` of an export's own card."""
    if not init_from:
        return None
    if hub_name(init_from):
        return f"microsoft/{hub_name(init_from)}"
    card = os.path.join(init_from, MODEL_CARD)
    if os.path.isfile(card):
        return front_matter(card).get("base_model")
    return None


def front_matter(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.startswith("---\n"):
        return {}
    return yaml.safe_load(text[4:text.index("\n---", 4)]) or {}


def metrics_at(run_dir: str, step: int) -> tuple[dict, dict]:
    """(the last training record at or before ``step``, {split: the last validation record at or before it})."""
    try:
        records = read_metrics(run_dir)
    except (OSError, ValueError):
        return {}, {}
    train = [r for r in records if r["split"] == "train" and r["step"] <= step]
    validation = {}
    for record in records:
        if record["split"].startswith("validation") and record["step"] <= step:
            validation[record["split"]] = record
    return (train[-1] if train else {}), validation


def describe_model(config: ModelConfig, tokenizer, parameters: int) -> list[str]:
    kind = "SentencePiece" if tokenizer_kind(tokenizer) == "spm" else "GPT-2 byte-level BPE"
    positions = (f"log-bucketed relative positions ({config.position_buckets} buckets)" if config.is_v2
                 and config.position_buckets > 0 else "relative positions")
    terms = "|".join(config.pos_att_type) if not isinstance(config.pos_att_type, str) else config.pos_att_type
    return [f"- {parameters:,} parameters: {config.num_hidden_layers} layers, hidden size {config.hidden_size}, "
            f"{config.num_attention_heads} attention heads, feed-forward {config.intermediate_size}",
            f"- disentangled attention ({terms}) with {positions}; absolute positions in the input: "
            f"{'yes' if config.position_biased_input else 'no (enhanced mask decoder)'}; up to "
            f"{config.max_position_embeddings} tokens",
            f"- vocabulary: {kind}, {config.vocab_size:,} ids ({tokenizer.vocab_size:,} used by the tokenizer)"]


def describe_training(cfg: dict, step: int, block: int | None, train_record: dict, sources: dict) -> list[str]:
    train, optim, data = cfg.get("train") or {}, cfg.get("optim") or {}, cfg.get("data") or {}
    objective = cfg.get("objective", "mlm")
    lines = [f"- objective: {OBJECTIVES.get(objective, objective)}; masking: {data.get('masking')} at "
             f"{data.get('mask_prob')}" + (f"; generator loss + {cfg['rtd']['lambda']} x discriminator loss, "
                                           f"embedding sharing {cfg['rtd']['embedding_sharing']}"
                                           if objective == "rtd" and cfg.get("rtd") else "")]
    batch = train.get("global_batch_size")
    seen = f"{step * batch * block:,} tokens" if batch and block else "tokens unknown"
    lines.append(f"- {step:,} steps of {batch} blocks" + (f" of {block} tokens" if block else "") + f": {seen}"
                 + ("; packed documents attend only to themselves" if data.get("document_attention") else ""))
    named = [name for name in sources if name]
    if named and block:
        per_source = ", ".join(f"{name} {int(train_record.get(f'samples/{name}', 0)) * block:,}" for name in named
                               if f"samples/{name}" in train_record)
        if per_source:
            lines.append(f"- tokens per source (at step {train_record['step']}): {per_source}")
    if optim:
        lines.append(f"- AdamW, peak learning rate {optim.get('lr')}, warm-up over {optim.get('warmup_steps')} steps, "
                     f"{optim.get('schedule')} schedule to {optim.get('end_lr_ratio')} x peak over "
                     f"{train.get('max_steps')} steps, weight decay {optim.get('weight_decay')}")
    lines.append(f"- precision {cfg.get('precision')}, seed {cfg.get('seed')}")
    return lines


def describe_validation(validation: dict) -> list[str]:
    if not validation:
        return []
    keys = ("loss", "accuracy", "perplexity", "generator_loss", "discriminator_accuracy", "auc")
    shown = [k for k in keys if any(k in r for r in validation.values())]
    rows = ["| split | step | " + " | ".join(shown) + " |", "|---|---|" + "---|" * len(shown)]
    for split, record in sorted(validation.items()):
        values = " | ".join(f"{record[k]:.4f}" if isinstance(record.get(k), (int, float)) else "-" for k in shown)
        rows.append(f"| {split} | {record['step']} | {values} |")
    return rows


def provenance(run_dir: str, checkpoint: str, sources: dict) -> list[str]:
    lines = [f"- checkpoint: `{checkpoint}`"]
    config = recorded_config(run_dir)
    if os.path.isfile(config):
        lines.append(f"- settings (`.hydra/config.yaml`): sha256 `{sha256_file(config)}`")
    for name, path in sources.items():
        manifest = os.path.join(path, MANIFEST)
        label = f"data {name} (`{path}`)" if name else f"data (`{path}`)"
        if os.path.isfile(manifest):
            lines.append(f"- {label}: manifest.json sha256 `{sha256_file(manifest)}`")
    return lines


def block_length(cfg: dict, sources: dict) -> int | None:
    for path in sources.values():
        try:
            with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
                return int(json.load(f)["max_seq_length"])
        except (OSError, ValueError, KeyError):
            continue
    return (cfg.get("data") or {}).get("max_seq_length")


def model_card(run_dir: str, checkpoint: str, step: int, config: ModelConfig, tokenizer, parameters: int,
               head: str, fmt: str = "all", license_name: str | None = None, has_generator: bool = False) -> str:
    """The card of an export of ``checkpoint`` (of ``run_dir``, at ``step``) in format ``fmt`` (release, hf or
    all); ``head``: mlm or rtd."""
    cfg = run_config(run_dir, checkpoint)
    sources = data_sources(cfg)
    block = block_length(cfg, sources)
    train_record, validation = metrics_at(run_dir, step)
    name = cfg.get("name") or os.path.basename(run_dir)
    meta = {"library_name": "transformers", "pipeline_tag": "fill-mask" if head == "mlm" else "feature-extraction",
            "tags": ["deberta", "deberta-v2" if config.is_v2 else "deberta-v1", "deberta_pretrain",
                     "masked-lm" if cfg.get("objective", "mlm") == "mlm" else "replaced-token-detection"]}
    if license_name:
        meta["license"] = license_name
    base = base_model(((cfg.get("model") or {}).get("init_from")))
    if base:
        meta["base_model"] = base
    named = sorted(n for n in sources if n)
    if named:
        meta["datasets"] = named
    what = "discriminator of replaced-token detection" if head == "rtd" else "masked language model"
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "", f"# {name}", "",
             f"A DeBERTa {'v2/v3' if config.is_v2 else 'v1'} encoder ({what}) pretrained with deberta_pretrain"
             + (f", continued from {base}" if base else "") + ".", "", "## Model", "",
             *describe_model(config, tokenizer, parameters), "", "## Training", "",
             *describe_training(cfg, step, block, train_record, sources)]
    table = describe_validation(validation)
    if table:
        lines += ["", f"## Validation (last evaluation at or before step {step})", "", *table]
    for results in sorted(glob.glob(finetune_results_files(run_dir, RESULTS_TABLE, step))):
        with open(results, encoding="utf-8") as f:
            lines += ["", f"## Fine-tuning ({os.path.basename(os.path.dirname(os.path.dirname(results)))})", "",
                      f.read().strip()]
    auto = "AutoModelForMaskedLM" if head == "mlm" else "AutoModel"
    ours = "MaskedLanguageModel" if head == "mlm" else "ReplacedTokenDetectionModel"
    code = []
    if fmt in ("hf", "all"):
        code += [f"from transformers import AutoTokenizer, {auto}",
                 f"model = {auto}.from_pretrained(\".\")  # this folder, or its Hub id once uploaded",
                 "tokenizer = AutoTokenizer.from_pretrained(\".\")"]
    if fmt in ("release", "all"):
        code += [""] * bool(code) + [f"from deberta_pretrain.deberta import {ours}",
                                     f"model = {ours}.load_model(\".\")  # pytorch_model.bin + model_config.json"]
    lines += ["", "## How to load it", "", "```python", *code, "```"]
    if has_generator:
        lines += ["", "The generator it was trained with is in `generator/` (a masked language model)."]
    lines += ["", "## Provenance", "", *provenance(run_dir, checkpoint, sources), ""]
    return "\n".join(lines)


"""Export a training checkpoint as a release-compatible model directory.

The model's ``state_dict()`` already uses the release names (``deberta.*``, ``lm_predictions.lm_head.*``), so export
is consolidation plus serialisation:

* **release** (the original DeBERTa code, our ``NNModule.load_model``): ``pytorch_model.bin``, ``model_config.json``
  (upstream schema, ``pos_att_type`` as a string) and the vocabulary the run was trained with (``bpe_encoder.bin``
  or ``spm.model``);
* **hf** (Hugging Face ``from_pretrained``): ``config.json`` (``model_type`` ``deberta``/``deberta-v2`` with
  ``legacy: false`` so the release MLM head loads), ``model.safetensors``, and tokenizer files: for GPT-2 BPE
  ``vocab.json`` mapping BPE strings to *model* ids, ``merges.txt``, ``tokenizer_config.json``; for SentencePiece
  ``spm.model`` and a ``tokenizer.json`` that reproduces the ids the model was trained on (byte fallback included).

A run of ``objective=rtd`` exports its discriminator (what users fine-tune: ``deberta.*`` with the shared embedding
tables merged, plus ``mask_predictions.*``) and, in ``generator/`` beside it, its generator as an MLM.

``format=all`` writes both into one directory: their file names do not collide, so the same directory loads into
either. Weights are consolidated from a DeepSpeed checkpoint of any ZeRO stage: stage 0 keeps the module's state
whole; stages 1-3 are merged to fp32 master weights by DeepSpeed's ``zero_to_fp32``. The output is written to a
temporary directory and renamed into place when complete; an existing output is replaced (``overwrite=true``) only
when it is an earlier export (it holds ``export.json``), never a run directory or a folder of other files.
"""

from __future__ import annotations

import json
import os
import warnings

import torch

from . import remote
from .deberta import GPT2Tokenizer, ModelConfig
from .deberta.vocabulary import find_vocab, load_tokenizer, tokenizer_kind
from .fileio import claim_output, staged_folder, write_json_atomic
from .model_card import model_card
from .layout import EXPORT_MARKER, MODEL_CARD, MODEL_CONFIG
from .training.checkpoint import trained_models

FORMATS = ("release", "hf", "all")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HF_SPECIAL_TOKENS = {"bos_token": "[CLS]", "eos_token": "[SEP]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                     "unk_token": "[UNK]", "pad_token": "[PAD]", "mask_token": "[MASK]"}


HEAD_CLASSES = {"mlm": "ForMaskedLM", "rtd": "Model", "classification": "ForSequenceClassification"}


def hf_config_dict(config: ModelConfig, dtype: str, head: str = "mlm") -> dict:
    """``config.json`` for Hugging Face; ``head`` mlm names the masked-LM class, rtd (a discriminator, whose head HF
    has no class for) the base model, classification the sequence classifier."""
    out = config.to_dict()
    v2 = config.is_v2
    architecture = ("DebertaV2" if v2 else "Deberta") + HEAD_CLASSES[head]
    out.update(model_type="deberta-v2" if v2 else "deberta", legacy=False, pad_token_id=0,
               architectures=[architecture],
               torch_dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype],
               pos_att_type=out["pos_att_type"].split("|") if out.get("pos_att_type") else [])
    return out


def hf_tokenizer_files(tokenizer, folder: str, max_length: int = 512) -> None:
    """The tokenizer files Hugging Face's ``AutoTokenizer`` reads: for SentencePiece, ``spm.model`` and a
    ``tokenizer.json`` that gives the ids the model was trained on (:mod:`.deberta.hf_spm`); for GPT-2 BPE, see
    :func:`hf_bpe_tokenizer_files`."""
    if tokenizer_kind(tokenizer) == "spm":
        from .deberta.hf_spm import write_tokenizer_json  # noqa: PLC0415

        tokenizer.save_pretrained(folder)  # spm.model, for the slow tokenizer
        with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
            json.dump(HF_SPECIAL_TOKENS, f, indent=2)
        try:
            differing = write_tokenizer_json(tokenizer, folder)
            # Not DebertaV2Tokenizer: transformers 5 rebuilds its pipeline without byte fallback, whatever
            # tokenizer.json says; PreTrainedTokenizerFast (4 and 5) runs tokenizer.json as it is.
            config = {"tokenizer_class": "PreTrainedTokenizerFast",
                      "model_input_names": ["input_ids", "token_type_ids", "attention_mask"]}
        except ValueError as e:
            warnings.warn(f"no tokenizer.json ({e}): Hugging Face's DebertaV2Tokenizer may give other ids than the "
                          f"model was trained on", stacklevel=2)
            differing, config = [], {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": tokenizer.do_lower_case,
                                     "split_by_punct": tokenizer.split_by_punct, "vocab_type": "spm"}
        if differing:
            warnings.warn(f"tokenizer.json gives other ids than the model was trained on for {len(differing)} check "
                          f"text(s), e.g. {differing[0]!r}", stacklevel=2)
        with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({**config, "model_max_length": max_length, **HF_SPECIAL_TOKENS}, f, indent=2)
        return
    hf_bpe_tokenizer_files(tokenizer, folder, max_length)


def hf_bpe_tokenizer_files(tokenizer: GPT2Tokenizer, folder: str, max_length: int = 512) -> None:
    """``vocab.json`` (BPE token string -> model id, special tokens included), ``merges.txt`` and the tokenizer
    config for HF's ``DebertaTokenizer``; GPT-2 ids missing from the dictionary stay out (they are ``[UNK]``)."""
    gpt2_strings = {gpt2_id: token for token, gpt2_id in tokenizer.gpt2_encoder["encoder"].items()}
    vocab = {}
    for model_id, symbol in enumerate(tokenizer.symbols):
        token = gpt2_strings.get(int(symbol)) if symbol.isdigit() else symbol
        vocab.setdefault(token, model_id)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in tokenizer.gpt2_encoder["vocab"]))
    with open(os.path.join(folder, "special_tokens_map.json"), "w", encoding="utf-8") as f:
        json.dump(HF_SPECIAL_TOKENS, f, indent=2)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "DebertaTokenizer", "add_prefix_space": False, "do_lower_case": False,
                   "model_max_length": max_length, **HF_SPECIAL_TOKENS}, f, indent=2)


def write_model(state: dict, config: ModelConfig, tokenizer, folder: str, fmt: str, dtype: str,
                head: str = "mlm", hf_extra: dict | None = None) -> None:
    """Write ``state`` in format ``fmt`` (release, hf or all) with weights cast to ``dtype`` into ``folder``;
    ``hf_extra`` goes into ``config.json`` (e.g. a classifier's labels)."""
    tensors = {k: v.to(DTYPES[dtype]).contiguous().clone() for k, v in state.items()}
    if fmt in ("release", "all"):
        torch.save(tensors, os.path.join(folder, "pytorch_model.bin"))
        with open(os.path.join(folder, MODEL_CONFIG), "w", encoding="utf-8") as f:
            f.write(config.to_json_string())
        tokenizer.save_pretrained(folder)  # bpe_encoder.bin or spm.model
    if fmt in ("hf", "all"):
        from safetensors.torch import save_file  # noqa: PLC0415

        save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
            json.dump({**hf_config_dict(config, dtype, head), **(hf_extra or {})}, f, indent=2, sort_keys=True)
        hf_tokenizer_files(tokenizer, folder, config.max_position_embeddings)  # the longest input it was built for


def export(checkpoint, output, fmt: str = "all", dtype: str = "fp32", overwrite: bool = False,
           license_name: str | None = None) -> str:
    """Export ``checkpoint`` (a run directory or one checkpoint) to ``output``, with its model card (``README.md``,
    ``license_name`` in its metadata when given); returns the output directory."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if remote.is_remote(output):
        return export_to_storage(checkpoint, str(output), fmt, dtype, overwrite, license_name)
    output = os.path.abspath(os.fspath(output))
    claim_output(output, EXPORT_MARKER, "export", overwrite)
    trained = trained_models(checkpoint)
    run_dir, vocab_file = trained.run_dir, find_vocab(trained.run_dir)
    if vocab_file is None or not os.path.isfile(vocab_file):
        raise FileNotFoundError(f"{run_dir}: no vocabulary (spm.model or bpe_encoder.bin) (written by "
                                f"launch/pretrain.py in the run directory)")
    tokenizer = load_tokenizer(vocab_file)
    config = trained.model[1]
    models = [("", *trained.model, "mlm")]
    if trained.generator is not None:  # objective=rtd: the discriminator, generator/ beside it
        models = [("", *trained.model, "rtd"), ("generator", *trained.generator, "mlm")]

    with staged_folder(output) as staging:
        for sub, model_state, model_config, head in models:
            folder = os.path.join(staging, sub)
            os.makedirs(folder, exist_ok=True)
            write_model(model_state, model_config, tokenizer, folder, fmt, dtype, head)
        _, first_state, _, head = models[0]
        parameters = sum(t.numel() for t in first_state.values())
        card = model_card(run_dir, trained.checkpoint, trained.step, config, tokenizer, parameters, head, fmt,
                          license_name, has_generator=len(models) > 1)
        with open(os.path.join(staging, MODEL_CARD), "w", encoding="utf-8") as f:
            f.write(card)
        write_json_atomic(os.path.join(staging, EXPORT_MARKER),
                          {"checkpoint": trained.checkpoint, "format": fmt, "dtype": dtype,
                           "model": "discriminator" if len(models) > 1 else "mlm"})
    return output


def export_to_storage(checkpoint, url: str, fmt: str, dtype: str, overwrite: bool,
                      license_name: str | None = None) -> str:
    """``output=s3://...``: export into the user's cache, then upload with ``export.json`` last. A prefix holding
    other objects is refused; an earlier export there is replaced only with ``overwrite=true``."""
    url = url.rstrip("/")
    remote.check_reachable(url, "output")
    names = remote.listdir(url)
    if names and EXPORT_MARKER not in names:
        raise FileExistsError(f"output={url} holds other objects ({', '.join(names[:5])}) and no export; nothing "
                              f"was changed: choose another prefix")
    if names and not overwrite:
        raise FileExistsError(f"output={url} holds an earlier export; nothing was changed: add overwrite=true to "
                              f"replace it")
    local = export(checkpoint, remote.cache_dir("exports", remote.local_name(url)), fmt, dtype, overwrite=True,
                   license_name=license_name)
    if names:
        remote.remove(remote.join(url, EXPORT_MARKER))  # readers stop trusting the old one first
    remote.upload_folder(local, url, EXPORT_MARKER)
    return url

"""The pretraining run: validate, build, resume, loop, evaluate, checkpoint. Components live in their own modules;
this file only orchestrates them."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import signal
import time

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from .. import config as schema
from ..data import ShardedDataset
from ..data.masking import MLMCollator
from ..data.sampler import StepSampler
from ..data import shards
from ..data.staging import stage_dataset, staged_path
from ..deberta import MaskedLanguageModel, ModelConfig, set_attention_backend
from ..deberta.nnmodule import report_load_result
from ..deberta.vocabulary import load_tokenizer, vocab_identity
from ..fileio import write_json_atomic
from . import distributed, metrics, optim
from .checkpoint import CheckpointError, Checkpointer
from .initial_weights import load_initial_weights

logger = logging.getLogger("deberta_pretrain")
RUNTIME_MODEL_KEYS = ("attention_backend", "use_emd", "gradient_checkpointing", "init_from")
# Changing these between a run and its resumption would silently train something else.
RESUME_KEYS = ("model", "data.path", "data.masking", "data.mask_prob", "data.max_ngram", "data.document_attention",
               "seed", "train.global_batch_size", "precision")


STOP_FILE = "STOP"  # created in the run directory (by a user or launch/slurm/pretrain.sbatch) to stop the run


class StopRequest:
    """SIGTERM/SIGUSR1, or a ``STOP`` file in the run directory: the loop checkpoints at the next step boundary and
    exits. The file works whatever launcher sits between the scheduler and the ranks (and whether it forwards
    signals); only rank 0 looks for it, the decision is all-reduced."""

    def __init__(self, run_dir: str, rank: int):
        self.signalled = False
        self.stop_file = os.path.join(run_dir, STOP_FILE) if rank == 0 else None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signalled = True
        logger.warning("received %s: will checkpoint and stop after this step", signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.signalled or bool(self.stop_file and os.path.exists(self.stop_file))


def all_ranks_agree(error: str | None) -> None:
    """Raise the first rank's error on every rank (so no rank is left waiting in a collective)."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, error)
    errors = [e for e in gathered if e]
    if errors:
        raise SystemExit(f"error: {errors[0]}")


def model_config_from(cfg) -> ModelConfig:
    fields = OmegaConf.to_container(cfg.model, resolve=True)
    for key in RUNTIME_MODEL_KEYS:
        fields.pop(key, None)
    return ModelConfig.from_dict(fields).validate()


def resume_fingerprint(cfg) -> dict:
    out = {}
    for key in RESUME_KEYS:
        value = OmegaConf.select(cfg, key)
        if key == "model":
            value = {k: v for k, v in OmegaConf.to_container(value).items() if k not in RUNTIME_MODEL_KEYS}
        out[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return out


def step_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


class Run:
    """Everything checked and built before the first step."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.rank, self.world, self.local_rank = distributed.init_distributed()
        self.on_gpu = not distributed.on_cpu()
        self.device = torch.device(f"cuda:{self.local_rank}" if self.on_gpu else "cpu")
        self.run_dir = os.path.abspath(os.path.join(cfg.output_root, cfg.name))
        for check in (self._locate_data, self._check_inputs):  # each ends with every rank agreeing
            error = None
            try:
                check()
            except (ValueError, OSError) as e:
                error = f"{e}"
            all_ranks_agree(error)

    def _locate_data(self) -> None:
        """Validate the config; with ``data.stage_dir``, the first rank of every node copies the data there."""
        cfg = self.cfg
        schema.validate(cfg)
        if not os.path.isdir(cfg.data.path):
            raise FileNotFoundError(f"data.path: {cfg.data.path} does not exist; prepare data with "
                                    f"`python data_prep/prepare.py output={cfg.data.path} ...`")
        self.data_path = cfg.data.path
        if cfg.data.stage_dir:
            self.data_path = staged_path(cfg.data.path, cfg.data.stage_dir)
            if self.local_rank == 0:
                stage_dataset(cfg.data.path, cfg.data.stage_dir)

    def _check_inputs(self) -> None:
        cfg = self.cfg
        self.vocab_path = vocab_path = shards.vocab_path(self.data_path)
        self.tokenizer = load_tokenizer(vocab_path)
        vocab = vocab_identity(self.tokenizer)
        # Hashing every shard once is enough: on rank 0, and on each node's first rank for node-local copies.
        full = self.rank == 0 or (cfg.data.stage_dir and self.local_rank == 0)
        verify = cfg.data.verify if full else ("size" if cfg.data.verify != "none" else "none")
        self.train_set = ShardedDataset(self.data_path, "train", verify=verify, expected_vocab=vocab)
        self.valid_set = ShardedDataset(self.data_path, "validation", verify=verify, expected_vocab=vocab)
        self.model_config, self.initial_state = model_config_from(cfg), None
        if cfg.model.init_from:
            self.initial_state, self.model_config = load_initial_weights(cfg.model.init_from, self.model_config,
                                                                         vocab)
        if self.model_config.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"model.vocab_size ({self.model_config.vocab_size}) is smaller than the data's "
                             f"vocabulary ({self.tokenizer.vocab_size} ids in {vocab_path})")
        length = self.train_set.max_seq_length
        if cfg.data.max_seq_length is not None and cfg.data.max_seq_length != length:
            raise ValueError(f"data.max_seq_length={cfg.data.max_seq_length}, but {cfg.data.path} holds blocks of "
                             f"{length} tokens; prepare the data again or drop the override")
        if length > self.model_config.max_position_embeddings:
            raise ValueError(f"blocks of {length} tokens exceed model.max_position_embeddings "
                             f"({self.model_config.max_position_embeddings})")
        optim.deepspeed_config(cfg, self.world, self.on_gpu)  # batch arithmetic and precision checks
        StepSampler(max(len(self.train_set), 1), cfg.seed, cfg.train.global_batch_size, cfg.train.micro_batch_size,
                    self.world, self.rank)
        if len(self.train_set) == 0:
            raise ValueError(f"data.path: {cfg.data.path} has no training samples")

    # ---- building ---------------------------------------------------------------------------------------
    def prepare_run_dir(self) -> None:
        if self.rank == 0:
            os.makedirs(os.path.join(self.run_dir, ".hydra"), exist_ok=True)
            OmegaConf.save(self.cfg, os.path.join(self.run_dir, ".hydra", "config.yaml"), resolve=True)
            write_json_atomic(os.path.join(self.run_dir, "model_config.json"), self.model_config.to_dict())
            if os.path.exists(os.path.join(self.run_dir, STOP_FILE)):  # it stopped the previous start
                os.remove(os.path.join(self.run_dir, STOP_FILE))
            shutil.copyfile(self.vocab_path, os.path.join(self.run_dir, os.path.basename(self.vocab_path)))
            handler = logging.FileHandler(os.path.join(self.run_dir, "train.log"))
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logging.getLogger().addHandler(handler)
        dist.barrier()

    def build_engine(self, load_universal: bool = False):
        """A fresh engine; ``load_universal`` prepares it to load a checkpoint in DeepSpeed's universal form."""
        import deepspeed  # noqa: PLC0415

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        model = MaskedLanguageModel(self.model_config, use_emd=cfg.model.use_emd)
        set_attention_backend(model, cfg.model.attention_backend)
        model.deberta.encoder.gradient_checkpointing = bool(cfg.model.gradient_checkpointing)
        if self.initial_state is not None:
            report_load_result(model.load_state_dict(self.initial_state, strict=False), cfg.model.init_from,
                               strict=False)
            self.initial_state = None
        self.ds_config = optim.deepspeed_config(cfg, self.world, self.on_gpu)
        if load_universal:
            self.ds_config["checkpoint"] = {"load_universal": True}
        groups = optim.param_groups(model, cfg.optim.weight_decay)
        if optim.uses_deepspeed_optimizer(cfg):
            optimizer, scheduler = None, (lambda opt: optim.build_scheduler(opt, cfg))
        else:
            optimizer = optim.build_optimizer(groups, cfg, self.on_gpu)
            scheduler = optim.build_scheduler(optimizer, cfg)
        engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=groups, optimizer=optimizer,
                                               lr_scheduler=scheduler, config=self.ds_config)
        self.engine = engine
        self.accumulation = self.ds_config["gradient_accumulation_steps"]
        return engine

    def collator(self, seed: int) -> MLMCollator:
        cfg, tok = self.cfg, self.tokenizer
        continuation = tok.word_continuation_table() if cfg.data.masking != "token" else None
        return MLMCollator(tok.vocab_size, tok.mask_token_id, tok.pad_token_id,
                           [tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.unk_token_id, tok.mask_token_id],
                           seed, cfg.data.masking, cfg.data.mask_prob, cfg.data.max_predictions,
                           cfg.data.mask_token_prob, cfg.data.random_token_prob, cfg.data.max_ngram, continuation,
                           cfg.data.document_attention, tok.sep_token_id)


class MicroBatches(torch.utils.data.Dataset):
    """Item ``k`` is the ``k``-th micro-batch of this rank (step ``k // accumulation``), masked and collated; a
    DataLoader over it prefetches in worker processes while the order stays fixed."""

    def __init__(self, dataset, sampler: StepSampler, collator: MLMCollator):
        self.dataset, self.sampler, self.collator = dataset, sampler, collator

    def __len__(self):
        return 2**62

    def __getitem__(self, k):
        step, micro = divmod(k, self.sampler.accumulation)
        items = [(index, epoch, self.dataset[index]) for epoch, index in self.sampler.micro_batch(step, micro)]
        return self.collator(items)


def evaluate(run: Run, collator: MLMCollator) -> dict:
    """Validation MLM loss (token-weighted), accuracy and perplexity on fixed masks; every rank runs the same
    number of forward passes (ZeRO-3 gathers parameters collectively)."""
    engine, cfg = run.engine, run.cfg
    n = min(len(run.valid_set), cfg.train.eval_samples)
    if n == 0:
        return {}
    batch_size = cfg.train.micro_batch_size
    num_batches = math.ceil(n / (batch_size * run.world))
    totals = torch.zeros(3, dtype=torch.float64, device=run.device)
    engine.eval()
    with torch.no_grad():
        for j in range(num_batches):
            start = (j * run.world + run.rank) * batch_size
            indices = list(range(start, min(start + batch_size, n)))
            items = [(i, 0, run.valid_set[i]) for i in indices] or [(0, 0, run.valid_set[0])]
            batch = {k: v.to(run.device) for k, v in collator(items).items()}
            if not indices:
                batch["labels"].fill_(-100)
            out = engine(**batch)
            count = out["num_predictions"]
            totals += torch.tensor([out["loss"].item() * count, float(out["num_correct"]), count],
                                   dtype=torch.float64, device=run.device)
    engine.train()
    dist.all_reduce(totals)
    loss = (totals[0] / totals[2].clamp(min=1)).item()
    return {"loss": loss, "accuracy": (totals[1] / totals[2].clamp(min=1)).item(),
            "perplexity": math.exp(min(loss, 50.0)), "predictions": int(totals[2].item())}


def resume_or_start(run: Run, checkpointer: Checkpointer):
    """(engine, step, client_state): the engine at the newest checkpoint that loads, whatever world size or ZeRO
    layout wrote it, or a fresh engine at step 0 when the run has no checkpoint. A run never starts over in a
    directory that holds checkpoints: when none loads, every one is listed with the reason and nothing is changed.
    Each attempt gets a fresh engine, so a failed load never leaves a half-loaded one behind."""
    usable, refused = checkpointer.survey()
    for tag in usable:
        try:
            load_tag, universal = checkpointer.load_plan(tag)
            engine = run.build_engine(load_universal=universal)
            step, client_state = checkpointer.load(engine, load_tag)
            if universal:
                optim.repair_after_universal_load(engine, run.cfg)
        except CheckpointError as e:
            refused.append((tag, str(e)))
            if getattr(run, "engine", None) is not None:
                run.engine.destroy()
                run.engine = None
            continue
        for bad, why in refused:
            if run.rank == 0:
                logger.warning("checkpoint %s is not usable: %s", checkpointer.path(bad), why)
        return engine, step, client_state
    interrupted = all(why.startswith("incomplete") for _, why in refused)
    if refused and not interrupted:
        listing = "\n".join(f"  {checkpointer.path(tag)}: {why}" for tag, why in sorted(refused))
        raise SystemExit(f"error: {run.run_dir} holds checkpoints but none can be resumed:\n{listing}\n"
                         f"Nothing was changed. Repair or remove them, or start a new run (another name=).")
    if refused and run.rank == 0:  # only saves that never finished: there is nothing to resume
        logger.warning("ignoring interrupted saves that never completed: %s",
                       ", ".join(checkpointer.path(tag) for tag, _ in refused))
    return run.build_engine(), 0, {}


def check_resumable(run: Run, client_state: dict, fingerprint: dict) -> None:
    """Refuse to continue a run whose model, data, masking, seed, global batch or precision changed."""
    saved = client_state.get("config_fingerprint")
    if saved is not None and saved != fingerprint:
        changed = sorted(k for k in fingerprint if saved.get(k) != fingerprint[k])
        raise SystemExit(f"error: {run.run_dir} was trained with different values of {', '.join(changed)}; "
                         f"start a new run (another name=) or restore those settings")


def pretrain(cfg) -> dict:
    """Run (or resume) the pretraining described by ``cfg``; returns the last logged training metrics."""
    run = Run(cfg)
    checkpointer = Checkpointer(os.path.join(run.run_dir, "checkpoints"), cfg.train.keep_last, run.rank, run.world,
                                cfg.deepspeed.zero_stage)
    fingerprint = resume_fingerprint(cfg)
    engine, start_step, client_state = resume_or_start(run, checkpointer)
    check_resumable(run, client_state, fingerprint)
    run.prepare_run_dir()  # only now, so that a refused resume leaves every file as it was
    if start_step and run.rank == 0:
        logger.info("resuming %s from step %d", run.run_dir, start_step)
    log = metrics.MetricsLogger(run.run_dir, cfg, client_state.get("wandb_id"), enabled=run.rank == 0,
                                start_step=start_step)

    sampler = StepSampler(len(run.train_set), cfg.seed, cfg.train.global_batch_size, cfg.train.micro_batch_size,
                          run.world, run.rank)
    loader = torch.utils.data.DataLoader(
        MicroBatches(run.train_set, sampler, run.collator(cfg.seed)), batch_size=None,
        sampler=range(start_step * sampler.accumulation, cfg.train.max_steps * sampler.accumulation),
        num_workers=cfg.data.num_workers, pin_memory=run.on_gpu)
    eval_collator = run.collator(cfg.seed + 1)
    length = run.train_set.max_seq_length
    peak = cfg.logging.peak_tflops or (metrics.detect_peak_tflops(torch.cuda.get_device_name(run.device))
                                       if run.on_gpu else None)
    tokens_per_step = cfg.train.global_batch_size * length
    flops_tok = metrics.flops_per_token(run.model_config, length, cfg.data.mask_prob,
                                        engine.module.lm_predictions.use_emd, tokens_per_step)
    stop = StopRequest(run.run_dir, run.rank)
    watch_loss = cfg.precision != "fp16"  # fp16: DeepSpeed's loss scaling owns overflows
    bar = None
    if run.rank == 0 and cfg.logging.progress_bar:
        from tqdm import tqdm  # noqa: PLC0415

        bar = tqdm(total=cfg.train.max_steps, initial=start_step, desc=cfg.name, dynamic_ncols=True)

    if start_step == 0:  # the untrained baseline, so curves and comparisons start from where training started
        result = evaluate(run, eval_collator)
        if result:
            log.log({"step": 0, "split": "validation", **result})
    batches = iter(loader)
    stats = torch.zeros(5, dtype=torch.float64, device=run.device)  # loss sum, micro count, correct, preds, tokens
    window_start, window_steps, last = time.perf_counter(), 0, {}
    skipped_at_start = engine.skipped_steps
    step = start_step
    while step < cfg.train.max_steps:
        torch.manual_seed(step_seed(cfg.seed, run.rank, step))
        nonfinite = torch.zeros((), dtype=torch.bool, device=run.device)
        for _ in range(sampler.accumulation):
            batch = {k: v.to(run.device, non_blocking=True) for k, v in next(batches).items()}
            out = engine(**batch)
            engine.backward(out["loss"])
            engine.step()
            nonfinite |= ~torch.isfinite(out["loss"].detach())
            stats += torch.tensor([out["loss"].item(), 1.0, float(out["num_correct"]), out["num_predictions"],
                                   float(batch["input_mask"].sum())], dtype=torch.float64, device=run.device)
        step += 1
        window_steps += 1
        # one vote per step, read once: a stop request on any rank, a non-finite loss on any rank
        votes = torch.stack([torch.tensor(stop.requested, device=run.device), nonfinite & watch_loss]).float()
        dist.all_reduce(votes, op=dist.ReduceOp.MAX)
        stop_requested, diverged = (bool(v) for v in votes.tolist())
        if diverged and cfg.train.on_nonfinite == "stop":
            raise SystemExit(f"error: the training loss is not finite at step {step} (train.on_nonfinite=stop); "
                             f"{checkpointer.describe_latest()}. Resume from it with a lower optim.lr or "
                             f"train.on_nonfinite=skip")
        if diverged and run.rank == 0:
            logger.warning("non-finite training loss at step %d: its update is dropped (train.on_nonfinite=skip)",
                           step)
        done = step == cfg.train.max_steps
        if step % cfg.train.log_every == 0 or done:
            dist.all_reduce(stats)
            elapsed = time.perf_counter() - window_start
            tokens_per_s = stats[4].item() / max(elapsed, 1e-9)
            last = {"step": step, "split": "train", "loss": stats[0].item() / stats[1].item(),
                    "accuracy": stats[2].item() / max(stats[3].item(), 1.0), "lr": engine.get_lr()[0],
                    "tokens_per_s": tokens_per_s, "epoch": sampler.epoch_of_step(step),
                    "step_time_s": elapsed / window_steps,
                    "mfu": (tokens_per_s * flops_tok / (peak * 1e12 * run.world)) if peak else None}
            if cfg.precision == "fp16" or cfg.train.on_nonfinite == "skip":
                # updates DeepSpeed dropped (fp16: loss-scale overflows; skip: non-finite gradients) in this start
                last["skipped_steps"] = int(engine.skipped_steps - skipped_at_start)
            log.log(last)
            if bar is not None:
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}", tok_s=f"{tokens_per_s:,.0f}",
                                **({"mfu": f"{last['mfu']:.1%}"} if last["mfu"] else {}))
            stats.zero_()
            window_start, window_steps = time.perf_counter(), 0
        if bar is not None:
            bar.update(1)
        if step % cfg.train.eval_every == 0 or done:
            result = evaluate(run, eval_collator)
            if result:
                log.log({"step": step, "split": "validation", **result})
        if step % cfg.train.checkpoint_every == 0 or done or stop_requested:
            client_state = {"step": step, "samples": step * cfg.train.global_batch_size,
                            "wandb_id": log.run_id, "config_fingerprint": fingerprint, "world_size": run.world,
                            "config_hash": hashlib.sha256(json.dumps(fingerprint, sort_keys=True,
                                                                     default=str).encode()).hexdigest()}
            try:
                checkpointer.save(engine, step, client_state)
            except CheckpointError as e:
                raise SystemExit(f"error: {e}") from e
        if stop_requested:
            if run.rank == 0:
                logger.warning("stopped at step %d after a stop request; restart with the same name to resume", step)
            break
    if bar is not None:
        bar.close()
    log.close()
    return last

"""Everything a pretraining run checks and builds before its first step: the config, the data, the objective and
its weights, the run directory, the DeepSpeed engine; and how a run is asked to stop."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from .. import config as schema
from .. import remote
from ..data.corpus import Corpus
from ..deberta import ModelConfig
from ..deberta.vocabulary import load_tokenizer, vocab_identity
from ..fileio import atomic_write, describe_folder, write_json_atomic
from . import distributed, phases
from .distributed import all_ranks_agree
from .engine import EngineSpec, build_engine, check_compiler, check_engine_options
from ..objectives import build_objective
from .initial_weights import objective_with_weights
from ..layout import STOP, checkpoints_dir, is_run_directory, model_config_file, recorded_config
from .checkpoint import usable_checkpoints
from .fork import check_new_run, fetch_source, fork_source, is_restart
from .mirror import fetch_checkpoint
from .run_log import RunLog, settings_digest

logger = logging.getLogger("deberta_pretrain")
RUNTIME_MODEL_KEYS = ("init_from",)  # in the model group, but not part of the release config


class StopRequest:
    """SIGTERM/SIGUSR1, Ctrl-C (SIGINT), or a ``STOP`` file in the run directory: the loop checkpoints at the next
    step boundary and exits. The file works whatever launcher sits between the scheduler and the ranks (and whether
    it forwards signals); only rank 0 looks for it, the decision is all-reduced. A second Ctrl-C exits at once (the
    steps since the last checkpoint are lost; a save it cuts short is never trusted). A context manager: the signal
    handlers it replaces are restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

    def __init__(self, run_dir: str, rank: int):
        self.signalled = False
        self.stop_file = os.path.join(run_dir, STOP) if rank == 0 else None
        self._previous = {}

    def __enter__(self):
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.signalled = True
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # the next Ctrl-C ends the process without delay
            logger.warning("Ctrl-C: will checkpoint and stop after this step (Ctrl-C again to exit at once)")
            return
        logger.warning("received %s: will checkpoint and stop after this step", signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.signalled or bool(self.stop_file and os.path.exists(self.stop_file))


def ignore_interrupts(_worker_id: int = 0) -> None:
    """For data-loader workers. Ctrl-C reaches every process of the terminal's group, and the deepspeed launcher
    answers it with SIGTERM to every process it started, workers included; the main process, not its workers,
    decides how the run stops (it needs their batches until the checkpoint is written; torch ends the workers when
    it exits)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def model_config_from(cfg) -> ModelConfig:
    fields = OmegaConf.to_container(cfg.model, resolve=True)
    for key in RUNTIME_MODEL_KEYS:
        fields.pop(key, None)
    return ModelConfig.from_dict(fields).validate()


def settings_warnings(cfg, corpus: Corpus, data_vocab_size: int, configs: dict) -> list:
    """Settings that run, but rarely as the user meant: one message each."""
    warnings, model, generator = [], configs["model"], configs.get("generator")
    if corpus.train_samples < cfg.train.global_batch_size:
        warnings.append(f"train.global_batch_size ({cfg.train.global_batch_size}) is larger than the training split "
                        f"of {', '.join(s.path for s in corpus.sources)} ({corpus.train_samples} blocks): every step "
                        f"repeats blocks")
    without = [source for source in corpus.sources if len(source.validation) == 0]
    if without and len(without) == len(corpus.sources):
        warnings.append(f"{', '.join(s.path for s in without)} has no validation blocks: evaluation is skipped "
                        f"(prepare it with validation_fraction > 0 to get a validation loss)")
    elif without:
        evaluated = [source.name for source in corpus.sources if len(source.validation)]
        warnings.append(f"{', '.join(s.label for s in without)} has no validation blocks: the validation loss is "
                        f"that of {', '.join(evaluated)} (weighted by their shares) and the per-source records skip "
                        f"{', '.join(s.name for s in without)}")
    for source in corpus.sources:
        if corpus.mixture and source.share == 0:
            warnings.append(f"data.sources.{source.name} has weight 0: it is evaluated, not trained on")
    unused = model.vocab_size - data_vocab_size
    if unused > max(128, model.vocab_size // 100):  # released configs round up by less, on purpose
        warnings.append(f"model.vocab_size ({model.vocab_size}) is larger than the data's vocabulary "
                        f"({data_vocab_size} ids): {unused} embedding rows are never trained; set "
                        f"model.vocab_size={data_vocab_size}")
    if generator is not None and generator.num_hidden_layers >= model.num_hidden_layers:
        warnings.append(f"the generator ({generator.num_hidden_layers} layers) is as deep as the discriminator "
                        f"({model.num_hidden_layers}): DeBERTa v3 gives it half the depth, since a generator as "
                        f"strong as its discriminator makes replacements too hard to detect "
                        f"(rtd.generator.num_hidden_layers)")
    return warnings


def step_seed(seed: int, rank: int, step: int) -> int:
    """The torch seed of ``step`` on ``rank`` (dropout masks). Called once at the top of every training step, which
    makes it the seam tests/faults hooks to inject kills and signals (see docs/development.md)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


class Run:
    """Everything checked and built before the first step."""

    def __init__(self, cfg, run_log: RunLog | None = None):
        self.cfg, self.run_log = cfg, run_log or RunLog(enabled=False)  # without one, train.log is not written
        self.resuming = False  # set once the objective is built: whether the run's own checkpoint is resumed
        self.rank, self.world, self.local_rank = distributed.init_distributed()
        self.on_gpu = not distributed.on_cpu()
        self.device = torch.device(f"cuda:{self.local_rank}" if self.on_gpu else "cpu")
        self.engine = None
        self._agree(self._locate_data)
        self.run_dir = os.path.abspath(os.path.join(cfg.output_root, cfg.name))
        if os.path.isdir(self.run_dir) and os.listdir(self.run_dir) and not is_run_directory(self.run_dir):
            raise SystemExit(f"error: {self.run_dir} is not empty and is not a run directory (it holds "
                             f"{describe_folder(self.run_dir)}); nothing was changed: choose another name= or "
                             f"output_root=")
        if cfg.train.remote_dir:
            self._agree(self._restore_from_mirror)
        self.fork = None  # the checkpoint a fork starts from (train.fork_from), until it has checkpoints of its own
        if cfg.train.fork_from:
            if remote.is_remote(cfg.train.fork_from) and not is_restart(self.run_dir):  # one download per node
                self._agree(lambda: fetch_source(cfg.train.fork_from) if self.local_rank == 0 else None)
            self._agree(self._locate_fork)
        self._agree(self._check_inputs)

    @staticmethod
    def _agree(check) -> None:
        """Run ``check`` on every rank; a bad input on any rank stops every rank with its message."""
        error = None
        try:
            check()
        except (ValueError, OSError) as e:
            error = f"{e}"
        all_ranks_agree(error)

    def _restore_from_mirror(self) -> None:
        """On a machine without the run's checkpoints (a fresh node), the first rank of each node downloads the
        newest complete one of ``train.remote_dir``, so that the run resumes from it as from its own."""
        if self.local_rank == 0 and not usable_checkpoints(checkpoints_dir(self.run_dir))[0]:
            try:
                fetch_checkpoint(self.cfg.train.remote_dir, self.cfg.name, self.run_dir)
            except OSError as e:
                raise OSError(f"train.remote_dir: cannot download the run's checkpoint: {e}") from e

    def _locate_fork(self) -> None:
        if is_restart(self.run_dir):
            check_new_run(self.run_dir, self.cfg.train.fork_from)  # the same fork, started again
            if self.rank == 0:
                logger.info("%s has checkpoints of its own: it resumes from them; train.fork_from is not read again",
                            self.run_dir)
            return
        self.fork = fork_source(self.cfg.train.fork_from, self.run_dir)

    def _locate_data(self) -> None:
        """Validate the config; with ``data.stage_dir``, the first rank of every node copies the data there."""
        schema.validate(self.cfg)
        if self.cfg.train.remote_dir:  # before anything is written: a missing bucket or bad credentials stop here
            remote.check_reachable(self.cfg.train.remote_dir, "train.remote_dir")
        self.corpus = Corpus(self.cfg.data)
        self.corpus.locate(copy_here=self.local_rank == 0)

    def _check_inputs(self) -> None:
        cfg, corpus = self.cfg, self.corpus
        corpus.check_compatible()
        self.vocab_path = vocab_path = corpus.vocab_path
        self.tokenizer = load_tokenizer(vocab_path)
        vocab = vocab_identity(self.tokenizer)
        # Hashing every shard once is enough: on rank 0, and on each node's first rank for node-local copies.
        full = self.rank == 0 or (cfg.data.stage_dir and self.local_rank == 0)
        corpus.open(cfg.data.verify if full else ("size" if cfg.data.verify != "none" else "none"), vocab)
        length = corpus.max_seq_length
        self.objective = self._objective(vocab, length)
        for name, model_config in self.objective.model_configs().items():
            key = self.objective.config_key(name)
            if model_config.vocab_size < self.tokenizer.vocab_size:
                raise ValueError(f"{key}.vocab_size ({model_config.vocab_size}) is smaller than the data's "
                                 f"vocabulary ({self.tokenizer.vocab_size} ids in {vocab_path})")
            if length > model_config.max_position_embeddings:
                raise ValueError(f"blocks of {length} tokens exceed {key}.max_position_embeddings "
                                 f"({model_config.max_position_embeddings}){self._resume_hint()}")
        if cfg.data.max_seq_length is not None and cfg.data.max_seq_length != length:
            raise ValueError(f"data.max_seq_length={cfg.data.max_seq_length}, but {corpus.sources[0].path} holds "
                             f"blocks of {length} tokens; prepare the data again or drop the override")
        self.optimizer_source = (phases.optimizer_source(cfg, self.objective)
                                 if cfg.train.init_optimizer else None)
        self.engine_spec = EngineSpec.for_pretraining(cfg, self.objective.param_rates())
        check_engine_options(self.engine_spec, self.world, self.on_gpu)
        if cfg.impl.compile:
            check_compiler(self.device)
        self.sampler = corpus.sampler(cfg.seed, cfg.train.global_batch_size, cfg.train.micro_batch_size, self.world,
                                      self.rank)  # this rank's samples of every step
        streaming = corpus.check_cache_limit(cfg.seed, cfg.train.global_batch_size, cfg.train.max_steps)
        self.warnings = settings_warnings(cfg, corpus, self.tokenizer.vocab_size, self.objective.model_configs())
        if self.rank == 0:
            for source in corpus.sources:
                logger.info("data: %s: %d training and %d validation blocks of %d tokens%s", source.label,
                            len(source.train), len(source.validation), length,
                            f", share {source.share:.3g}" if corpus.mixture else "")
            if streaming:
                logger.info("data: %s", streaming)
            for warning in self.warnings:
                logger.warning(warning)

    def _resume_hint(self) -> str:
        """For errors about the model of a run that resumes: it is the recorded model, not this command's."""
        if not self.resuming:
            return ""
        return (f"; but this command resumes the run in {self.run_dir} (it holds checkpoints), whose model is the one "
                f"it recorded in model_config.json, not this command's model settings. To start a new phase from it, "
                f"give the phase its own name: name=<new> model.init_from={self.run_dir}")

    def _objective(self, vocab: dict, length: int):
        """The objective with its starting weights; a run that resumes builds the models its directory recorded
        (``model_config.json``, ``generator_config.json``) and takes its weights from its own checkpoint: what
        ``model.init_from`` named is not read again (it may be gone)."""
        cfg, recorded = self.cfg, os.path.join(self.run_dir, model_config_file("model"))
        self.resuming = os.path.isfile(recorded) and bool(usable_checkpoints(checkpoints_dir(self.run_dir))[0])
        if not self.resuming:
            return objective_with_weights(cfg, model_config_from(cfg), self.tokenizer, vocab, length)
        if cfg.model.init_from and self.rank == 0:
            logger.info("resuming: the weights come from the run's own checkpoint; model.init_from=%s is not read",
                        cfg.model.init_from)
        generator = os.path.join(self.run_dir, model_config_file("generator"))
        generator = (None, ModelConfig.from_json_file(generator)) if cfg.objective == "rtd" and os.path.isfile(
            generator) else None
        return build_objective(cfg, ModelConfig.from_json_file(recorded), self.tokenizer, length, None, generator)

    def prepare_run_dir(self) -> None:
        """Write the run directory's records (config, model configs, vocabulary) and start its train.log."""
        if self.rank == 0:
            settings = OmegaConf.to_yaml(self.cfg, resolve=True)
            atomic_write(recorded_config(self.run_dir), lambda f: f.write(settings.encode()))
            self.run_log.open(self.run_dir)
            logger.info("run %s in %s: settings %s (.hydra/config.yaml), command: %s", self.cfg.name, self.run_dir,
                        settings_digest(settings), " ".join(sys.argv[1:]) or "(defaults)")
            for name, model_config in self.objective.model_configs().items():
                write_json_atomic(os.path.join(self.run_dir, model_config_file(name)), model_config.to_dict())
            if os.path.exists(os.path.join(self.run_dir, STOP)):  # it stopped the previous start
                os.remove(os.path.join(self.run_dir, STOP))
            shutil.copyfile(self.vocab_path, os.path.join(self.run_dir, os.path.basename(self.vocab_path)))
        dist.barrier()

    def build_engine(self, load_universal: bool = False):
        """A fresh engine; ``load_universal`` prepares it to load a checkpoint in DeepSpeed's universal form."""
        torch.manual_seed(self.cfg.seed)
        self.engine = build_engine(self.objective.build_model(), self.engine_spec, self.world, self.on_gpu,
                                   load_universal)
        return self.engine

"""DeBERTa pretraining (MLM or replaced-token detection) under DeepSpeed, configured with Hydra.

    deepspeed launch/pretrain.py name=run1 data.path=data/wiki model=deberta-base deepspeed=zero2
    torchrun --nproc_per_node 8 launch/pretrain.py name=run1 ...
    python launch/pretrain.py experiment=quickstart            # one process (CPU or one GPU)

Running again with the same name resumes from the last complete checkpoint in outputs/<name>/checkpoints. Ctrl-C,
SIGTERM or SIGUSR1 checkpoint at the end of the current step and stop (a second Ctrl-C exits at once).
Configs: conf/pretrain.yaml and its groups; every key is in docs/configuration.md.
"""

import logging
import os

from deberta_pretrain.training.distributed import prepare_argv  # noqa: E402

prepare_argv()  # the deepspeed launcher's --local_rank must go before Hydra parses the command line

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from deberta_pretrain.cli import command_errors  # noqa: E402
from deberta_pretrain.config import register_configs  # noqa: E402

register_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="pretrain")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from deberta_pretrain.training.trainer import pretrain

    # Ctrl-C before the first step (once training runs, the trainer handles it); bad input exits in the trainer
    with command_errors("interrupted during start-up; no checkpoint was written by this start", bad_input=(),
                        distributed=True):
        pretrain(cfg)


if __name__ == "__main__":
    main()

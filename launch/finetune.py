"""Fine-tune a checkpoint on GLUE tasks or your own data and print (and write) a score table.

    python launch/finetune.py checkpoint=outputs/quickstart task=sst2
    deepspeed launch/finetune.py checkpoint=release/v3b suite=glue precision=bf16
    python launch/finetune.py checkpoint=deberta-v3-base task=custom task.train=my/train.jsonl \
        task.validation=my/dev.jsonl task.text_fields='[question,passage]' task.label_field=label
    python launch/finetune.py checkpoint=outputs/base1/checkpoints/step_00100000 suite=glue-small
    python launch/finetune.py checkpoint=release/v3b task=rte task.recipe.lr='[1e-5,2e-5,3e-5]' seeds='[1,2,3]'

A list in task.recipe (lr, epochs, batch_size, warmup_steps) is a grid: every setting with every seed, the table
reports the setting with the best median dev score. The same command again trains only the runs that are missing.

Configs: conf/finetune.yaml, conf/task/*.yaml (upstream's recipes), conf/suite/*.yaml.
"""

import logging
import os

from deberta_pretrain.training.distributed import prepare_argv  # noqa: E402

prepare_argv()  # the deepspeed launcher's --local_rank must go before Hydra parses the command line

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from deberta_pretrain.cli import command_errors  # noqa: E402
from deberta_pretrain.finetune.config import check_finetune_keys, register_finetune_configs  # noqa: E402

register_finetune_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="finetune")
def main(cfg: DictConfig) -> None:
    logging.basicConfig(level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from deberta_pretrain.finetune.suite import run_finetune  # noqa: PLC0415

    with command_errors("interrupted: tasks that finished are kept and skipped by the same command", distributed=True):
        check_finetune_keys(cfg)  # the rest is checked by run_finetune before anything is loaded
        run_finetune(cfg)


if __name__ == "__main__":
    main()

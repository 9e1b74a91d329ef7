"""PNG plots of a run's metrics.jsonl against the step: loss, learning rate, throughput, and MLM accuracy or (for
objective=rtd) the generator's loss and the discriminator's AUC, precision, recall and accuracy; one curve per
source of a data mixture.

    python launch/plot.py run=outputs/quickstart            # writes outputs/quickstart/plots/*.png
    python launch/plot.py run=outputs/quickstart out=figs

The keys: conf/plot.yaml (``--help`` lists them).
"""

import sys

import hydra
from omegaconf import DictConfig

from deberta_pretrain.config import check_tool_config, register_tool_configs
from deberta_pretrain.training.plots import plot_run

register_tool_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="plot")
def main(cfg: DictConfig) -> None:
    try:
        check_tool_config(cfg, "plot")
        written = plot_run(cfg.run, cfg.out)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to draw every plot", file=sys.stderr)
        sys.exit(130)
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""PNG plots of a run's metrics.jsonl against the step: loss, learning rate, throughput, and MLM accuracy or (for
objective=rtd) the generator's loss and the discriminator's AUC, precision, recall and accuracy; one curve per
source of a data mixture.

    python launch/plot.py run=outputs/quickstart            # writes outputs/quickstart/plots/*.png
    python launch/plot.py run=outputs/quickstart out=figs
    python launch/plot.py run=outputs/stable compare='[outputs/decay-short,outputs/decay-long]'   # + compare.png

The keys: conf/plot.yaml (``--help`` lists them).
"""

import os

import hydra
from omegaconf import DictConfig, ListConfig

from deberta_pretrain.cli import command_errors
from deberta_pretrain.config import check_tool_config, register_tool_configs
from deberta_pretrain.training.plots import plot_comparison, plot_run

register_tool_configs()


@hydra.main(version_base=None, config_path="../conf", config_name="plot")
def main(cfg: DictConfig) -> None:
    with command_errors("interrupted: run the same command again to draw every plot"):
        check_tool_config(cfg, "plot")
        compare = cfg.compare
        if compare is not None and not isinstance(compare, ListConfig):
            raise ValueError(f"compare: a list of run directories, e.g. compare='[{compare}]', got {compare!r}")
        written = plot_run(cfg.run, cfg.out)
        if compare:
            written.append(plot_comparison(cfg.run, list(compare), cfg.out))
    for path in written:
        print(f"wrote {path}")
    if written:
        print(f"plots in {os.path.dirname(written[0])}")


if __name__ == "__main__":
    main()

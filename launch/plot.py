"""PNG plots of a run's metrics.jsonl against the step: loss, learning rate, throughput, and MLM accuracy or (for
objective=rtd) the generator's loss and the discriminator's AUC, precision, recall and accuracy.

    python launch/plot.py run=outputs/quickstart            # writes outputs/quickstart/plots/*.png
    python launch/plot.py run=outputs/quickstart out=figs
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from deberta_pretrain.training.plots import plot_run  # noqa: E402


def main(argv: list[str]) -> int:
    args = dict(a.split("=", 1) for a in argv if "=" in a)
    unknown = [a for a in argv if "=" not in a] + sorted(set(args) - {"run", "out"})
    if unknown or "run" not in args:
        print(f"usage: python launch/plot.py run=<run dir> [out=<dir>]  (unexpected: {' '.join(unknown)})",
              file=sys.stderr)
        return 2
    for path in plot_run(args["run"], args.get("out")):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""PNG plots of a run's metrics.jsonl against the step: loss, learning rate, throughput, and MLM accuracy or (for
objective=rtd) the generator's loss and the discriminator's AUC, precision, recall and accuracy.

    python launch/plot.py run=outputs/quickstart            # writes outputs/quickstart/plots/*.png
    python launch/plot.py run=outputs/quickstart out=figs
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from deberta_pretrain.config_keys import parse_arguments  # noqa: E402
from deberta_pretrain.training.plots import plot_run  # noqa: E402


KEYS = ("run", "out")


def main(argv: list[str]) -> int:
    args, problems = parse_arguments(argv, KEYS, required=("run",))
    if problems:
        print(f"usage: python launch/plot.py run=<run dir> [out=<dir>]\n{'; '.join(problems)}", file=sys.stderr)
        return 2
    try:
        written = plot_run(args["run"], args.get("out"))
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Export a pretraining checkpoint for the original DeBERTa code and for Hugging Face transformers.

    python launch/export.py checkpoint=outputs/base1 output=release/base1     # newest checkpoint, both formats
    python launch/export.py checkpoint=outputs/base1/checkpoints/step_00010000 output=release/base1-10k format=hf
    python launch/export.py checkpoint=outputs/base1 output=release/base1 format=release dtype=bf16 overwrite=true

format: release (pytorch_model.bin + model_config.json + the vocabulary), hf (config.json + model.safetensors +
tokenizer files), or all (both, in one directory; default). dtype: fp32 (default), bf16, fp16. An objective=rtd run
exports its discriminator to output/ and its generator to output/generator/.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KEYS = ("checkpoint", "output", "format", "dtype", "overwrite")
USAGE = ("usage: python launch/export.py checkpoint=<run dir or checkpoint dir> output=<dir> "
         "[format=release|hf|all] [dtype=fp32|bf16|fp16] [overwrite=true]")


def main(argv: list[str]) -> int:
    from deberta_pretrain.config_keys import parse_arguments  # noqa: PLC0415

    args, problems = parse_arguments(argv, KEYS, required=("checkpoint", "output"))
    if problems:
        print(f"{USAGE}\n{'; '.join(problems)}", file=sys.stderr)
        return 2
    overwrite = args.get("overwrite", "false").lower()
    if overwrite not in ("true", "false"):
        print(f"overwrite must be true or false, got {overwrite!r}", file=sys.stderr)
        return 2
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # consolidation runs on the CPU; no GPU needed
    from deberta_pretrain.export import export  # noqa: PLC0415

    try:
        out = export(args["checkpoint"], args["output"], args.get("format", "all"), args.get("dtype", "fp32"),
                     overwrite == "true")
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

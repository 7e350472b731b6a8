"""`paddle-belle <subcommand>`: thin argument parsing over the library."""
from __future__ import annotations

import argparse
import sys

from paddle_belle import __version__


def cmd_convert(args) -> int:
    from paddle_belle.convert import convert

    convert(args.src, args.dst, to=args.to, dtype=args.dtype, max_shard_size=args.max_shard_size,
            safe_serialization=args.format == "safetensors", verify=args.verify)
    print(f"wrote {args.dst}")
    return 0


def cmd_models(args) -> int:
    from paddle_belle.registry import format_table

    print(format_table())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paddle-belle",
        description="BELLE chat models (BLOOM and LLaMA families) on PaddlePaddle.",
    )
    parser.add_argument("--version", action="version", version=f"paddle-belle {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("convert", help="convert a checkpoint between HF and PaddleNLP layouts",
                       description="Convert an HF checkpoint directory into a PaddleNLP one (--to paddle) or back "
                       "(--to hf), one tensor at a time. SRC is never written to; DST must not exist.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--to", choices=["paddle", "hf"], default="paddle")
    p.add_argument("--dtype", choices=["keep", "float32", "float16", "bfloat16"], default="keep",
                   help="cast floating-point weights (default: keep the source's)")
    p.add_argument("--max-shard-size", default="5GB", help="shard the weights above this size (default 5GB)")
    p.add_argument("--format", choices=["safetensors", "pdparams"], default="safetensors",
                   help="weight file format of PaddleNLP output (HF output is always safetensors)")
    p.add_argument("--verify", action="store_true",
                   help="load both sides (needs torch + transformers, and memory for both models) and print max |Δlogits|")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("models", help="list the BELLE family and base models: shapes, sizes, sources")
    p.set_defaults(run=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError: one line, no traceback
        print(f"paddle-belle {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

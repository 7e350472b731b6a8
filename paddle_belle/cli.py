"""`paddle-belle <subcommand>`: thin argument parsing over the library."""
from __future__ import annotations

import argparse
import sys

from paddle_belle import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paddle-belle",
        description="BELLE chat models (BLOOM and LLaMA families) on PaddlePaddle.",
    )
    parser.add_argument("--version", action="version", version=f"paddle-belle {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())

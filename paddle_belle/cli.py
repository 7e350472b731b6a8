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


def _load(args):
    from paddle_belle import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.model, threads=args.threads)
    return model, AutoTokenizer.from_pretrained(args.model)


def cmd_chat(args) -> int:
    from paddle_belle.chat import ChatSession

    model, tokenizer = _load(args)
    session = ChatSession(model, tokenizer, style=args.style, preset=args.preset, max_history=args.max_history)
    print(f"paddle-belle chat: {args.model} (style {args.style}, preset {args.preset}). /reset forgets, /exit quits.")
    while True:
        try:
            line = input("Human: ").strip()
        except EOFError:
            print()
            return 0
        if line == "/exit":
            return 0
        if line == "/reset":
            session.reset()
            print("(history cleared)")
            continue
        if not line:
            continue
        print("Assistant: ", end="", flush=True)
        for chunk in session.ask(line):
            print(chunk, end="", flush=True)
        print(flush=True)


def cmd_generate(args) -> int:
    from paddle_belle.chat import generate_batch, generate_file

    model, tokenizer = _load(args)
    options = dict(style=args.style, preset=args.preset)
    if args.prompt is not None:
        print(generate_batch(model, tokenizer, [args.prompt], **options)[0])
        return 0
    failures = generate_file(model, tokenizer, args.input_file, args.output_file, batch_size=args.batch_size, **options)
    print(f"wrote {args.output_file}" + (f"; {failures} record(s) failed (see above)" if failures else ""))
    return 1 if failures else 0


def cmd_train(args) -> int:
    from paddle_belle.train import load_config, train

    trainer = train(load_config(args.config, args.overrides))
    if trainer.is_world_process_zero():
        print(f"saved to {trainer.args.output_dir}")
    return 0


def cmd_merge_lora(args) -> int:
    from paddle_belle.train import merge_lora

    print(f"wrote {merge_lora(args.base, args.adapter, args.out)}")
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

    from paddle_belle.generation import PRESETS
    from paddle_belle.prompts import STYLES
    from paddle_belle.registry import DEFAULT_MODEL

    def model_options(p):
        p.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"checkpoint directory, community name (org/name) or short name (default {DEFAULT_MODEL}, "
                       "which ships inside paddle_belle)")
        p.add_argument("--preset", choices=list(PRESETS), default="belle-card", help="sampling settings (default belle-card)")
        p.add_argument("--style", choices=list(STYLES), default="belle", help="prompt format (default belle)")
        p.add_argument("--threads", type=int, help="CPU threads (default: every core this process may use)")

    p = sub.add_parser("chat", help="talk to a model (streaming, multi-turn)")
    model_options(p)
    p.add_argument("--max-history", type=int, help="turns of history to keep (default: as many as fit)")
    p.set_defaults(run=cmd_chat)

    p = sub.add_parser("generate", help="answer one prompt, or every record of a JSONL file")
    model_options(p)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one message")
    source.add_argument("--input-file", help='JSONL with a "prompt" (or BELLE "instruction" [+ "input"]) per line')
    p.add_argument("--output-file", help="JSONL written with each record plus its \"output\"")
    p.add_argument("--batch-size", type=int, default=8)
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("train", help="fine-tune a model on BELLE data (full SFT or LoRA) from a YAML config",
                       description="Train as CONFIG (see configs/sft/) says; settings can be overridden with --key value "
                       "pairs, dotted keys reaching into sections (--training.learning_rate 1e-4 --lora.r 8). For "
                       "several devices or hosts, run it under python -m paddle.distributed.launch.")
    p.add_argument("config", metavar="CONFIG")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="--key value pairs")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("merge-lora", help="fold a LoRA adapter into its base model: a plain checkpoint")
    p.add_argument("base", metavar="BASE", help="the base model the adapter was trained on (directory or name)")
    p.add_argument("adapter", metavar="ADAPTER", help="directory with lora_config.json and lora_model_state.pdparams")
    p.add_argument("out", metavar="OUT", help="new directory for the merged checkpoint")
    p.set_defaults(run=cmd_merge_lora)

    p = sub.add_parser("models", help="list the BELLE family and base models: shapes, sizes, sources")
    p.set_defaults(run=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "generate" and args.input_file and not args.output_file:
        parser.error("--input-file needs --output-file")
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

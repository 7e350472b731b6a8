"""`paddle-belle <subcommand>`: thin argument parsing over the library."""
from __future__ import annotations

import argparse
import sys

from paddle_belle import __version__


def cmd_convert(args) -> int:
    if args.from_gguf:
        from paddle_belle.convert.gguf import convert_gguf

        convert_gguf(args.src, args.dst)
        print(f"wrote {args.dst}")
        return 0
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


def cmd_quantize(args) -> int:
    if args.estimate:
        from paddle_belle.quant.estimate import format_estimate

        print(format_estimate(args.model))
        return 0
    if not args.out:
        raise ValueError("--out is required (unless --estimate)")
    from paddle_belle.hub import resolve
    from paddle_belle.quant import QuantConfig, quantize_checkpoint

    config = QuantConfig(bits=args.bits, group_size=args.group_size, method=args.method, sym=args.sym,
                         act_order=args.act_order, quantize_lm_head=args.quantize_lm_head)
    result = quantize_checkpoint(resolve(args.model), args.out, config, calib=args.calib, nsamples=args.nsamples,
                                 seqlen=args.seqlen, threads=args.threads)
    print(f"wrote {args.out} ({result['bytes'] / 1e6:.1f} MB of weights; quantized in {result['seconds']:.1f} s)")
    return 0


def cmd_perplexity(args) -> int:
    import json

    from paddle_belle.evaluate.perplexity import perplexity_of_file
    from paddle_belle.hub import resolve

    result = perplexity_of_file(resolve(args.model), args.data, seqlen=args.seqlen, stride=args.stride,
                                threads=args.threads)
    if args.json:
        print(json.dumps({"perplexity": result["perplexity"], "tokens": result["tokens"]}))
    else:
        print(f"perplexity {result['perplexity']:.4f} over {result['tokens']} tokens")
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
    p.add_argument("--from-gguf", action="store_true",
                   help="SRC is a llama.cpp GGUF file (LLaMA architecture; quantized tensors are dequantized to "
                   "float32); DST gets our PaddleNLP layout and, for byte-level BPE vocabularies, tokenizer.json")
    p.set_defaults(run=cmd_convert)

    p = sub.add_parser("quantize", help="quantize a checkpoint to 2/3/4/8-bit weights (GPTQ or round-to-nearest)",
                       description="Quantize the Linear weights of the decoder blocks block by block (GPTQ with "
                       "PaddleSlim, calibrated on a text file; or RTN) and write a quantized checkpoint that "
                       "from_pretrained loads. --estimate prints sizes instead, for any registry model.")
    p.add_argument("--model", required=True, help="checkpoint directory, community name or short name")
    p.add_argument("--method", choices=["gptq", "rtn"], default="gptq")
    p.add_argument("--bits", type=int, default=4, help="2, 3, 4 or 8 (default 4)")
    p.add_argument("--group-size", type=int, default=128, help="input rows per scale; -1: per channel (default 128)")
    p.add_argument("--calib", help="calibration text file (UTF-8), needed by gptq")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, default=2048, help="tokens per calibration window (default 2048)")
    p.add_argument("--act-order", action="store_true", help="GPTQ: quantize columns by decreasing Hessian diagonal")
    sym = p.add_mutually_exclusive_group()
    sym.add_argument("--sym", dest="sym", action="store_true", default=True, help="symmetric grid (default)")
    sym.add_argument("--asym", dest="sym", action="store_false", help="asymmetric grid with zero points")
    p.add_argument("--quantize-lm-head", action="store_true", help="also quantize a separate (untied) LM head")
    p.add_argument("--out", help="output directory (must not exist)")
    p.add_argument("--estimate", action="store_true", help="print checkpoint size and resident memory at "
                   "fp32/fp16/int8/int4-g128 for --model (a registry name needs no download) and stop")
    p.add_argument("--threads", type=int, help="CPU threads (default: every core this process may use)")
    p.set_defaults(run=cmd_quantize)

    p = sub.add_parser("perplexity", help="sliding-window perplexity of a model on a text file")
    p.add_argument("--model", required=True, help="checkpoint directory, community name or short name")
    p.add_argument("--data", required=True, help="UTF-8 text file")
    p.add_argument("--seqlen", type=int, default=2048, help="window length in tokens (default 2048)")
    p.add_argument("--stride", type=int, help="tokens between window starts (default: seqlen, disjoint windows)")
    p.add_argument("--json", action="store_true", help='print {"perplexity": ..., "tokens": ...}')
    p.add_argument("--threads", type=int, help="CPU threads (default: every core this process may use)")
    p.set_defaults(run=cmd_perplexity)

    from paddle_belle.generation import PRESETS
    from paddle_belle.prompts import STYLES

    def model_options(p):
        p.add_argument("--model", required=True, help="checkpoint directory, community name (org/name) or short name")
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

"""`paddle-belle <subcommand>`: thin argument parsing over the library."""
from __future__ import annotations

import argparse
import os
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
    session = ChatSession(model, tokenizer, style=args.style, preset=args.preset, max_history=args.max_history,
                          seed=args.seed)
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
    options = dict(style=args.style, preset=args.preset, seed=args.seed)
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


def cmd_serve(args) -> int:
    from paddle_belle.serve import serve

    serve(args.model, host=args.host, port=args.port, api_key=args.api_key, preset=args.preset, style=args.style,
          max_concurrency=args.max_concurrency, max_queue=args.max_queue, max_tokens_cap=args.max_tokens,
          max_request_bytes=args.max_request_bytes, served_name=args.served_model_name, threads=args.threads,
          log_level=args.log_level, context=args.context)
    return 0


def cmd_self_instruct(args) -> int:
    from paddle_belle.api import make_client
    from paddle_belle.datagen.self_instruct import self_instruct

    client = make_client(args.base_url, max_retries=args.max_retries, timeout=args.timeout)
    stats = self_instruct(args.out, client, args.model, args.num_instructions, api=args.api, seeds=args.seeds,
                          prompt=args.prompt, workers=args.workers, temperature=args.temperature, top_p=args.top_p,
                          max_tokens=args.max_tokens, threshold=args.threshold, max_requests=args.max_requests,
                          seed=args.seed)
    print(f"self-instruct: {stats.line()}; {args.out} holds {stats.kept + stats.resumed} records")
    return 0


def cmd_eval(args) -> int:
    from paddle_belle.api import make_client
    from paddle_belle.evaluate.judge import evaluate

    client = make_client(args.judge_base_url, max_retries=args.max_retries, timeout=args.timeout)
    report = evaluate(lambda: _load(args), client, args.judge_model, args.out, eval_set=args.eval_set,
                      judge_prompts=args.judge_prompts, limit=args.limit, style=args.style, preset=args.preset,
                      batch_size=args.batch_size, workers=args.workers, judge_max_tokens=args.judge_max_tokens,
                      max_new_tokens=args.max_new_tokens)
    show = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    print(f"eval: {report['scored']} scored, {report['unscored']} unscored, {report['not_judged']} not judged; "
          f"overall mean {show(report['overall_mean'])}, Score_w/o_others {show(report['score_wo_others'])}; "
          f"report in {args.out}/report.md")
    return 1 if report["not_judged"] else 0


def cmd_quantize(args) -> int:
    if args.estimate:
        from paddle_belle.quant.estimate import format_estimate

        print(format_estimate(args.model))
        return 0
    if not args.out:
        raise ValueError("--out is required (unless --estimate)")
    from paddle_belle.hub import resolve
    from paddle_belle.quant import QuantConfig
    from paddle_belle.quant.quantize import quantize_checkpoint

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


def cmd_card(args) -> int:
    from paddle_belle.cards import build_card, write_card

    hyper = {}
    for item in args.hyper or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--hyper {item!r}: expected KEY=VALUE, e.g. 'learning rate=2e-5'")
        hyper[key.strip()] = value.strip()
    text = build_card(args.model, facts=args.facts, card_path=args.out, title=args.title, base=args.base, data=args.data,
                      data_size=args.data_size, description=args.description, hyper=hyper or None)
    print(f"wrote {write_card(text, args.out, force=args.force)}")
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

    from paddle_belle.presets import PRESETS
    from paddle_belle.prompts import STYLES
    from paddle_belle.registry import DEFAULT_MODEL

    def model_options(p, preset="belle-card"):
        p.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"checkpoint directory, community name (org/name) or short name (default {DEFAULT_MODEL}, "
                       "which ships inside paddle_belle)")
        p.add_argument("--preset", choices=list(PRESETS), default=preset, help=f"sampling settings (default {preset})")
        p.add_argument("--style", choices=list(STYLES), default="belle", help="prompt format (default belle)")
        p.add_argument("--threads", type=int, help="CPU threads (default: every core this process may use)")
        p.add_argument("--seed", type=int, help="sampling seed: the same seed gives the same replies (default: a "
                       "fresh one each run)")

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
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API",
                       description="/v1/models, /v1/chat/completions, /v1/completions (streaming by SSE) and /health. "
                       "Chat messages are rendered in the --style prompt format; requests may set max_tokens, "
                       "temperature, top_p, seed, stop, and BELLE's top_k, repetition_penalty as extra body fields.")
    model_options(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("PADDLE_BELLE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every /v1 request (default: $PADDLE_BELLE_API_KEY)")
    p.add_argument("--max-concurrency", type=int, default=1, help="replies generated at once (default 1)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for a slot; beyond them requests get 429 (default 64)")
    p.add_argument("--max-tokens", type=int, default=2048, help="the largest max_tokens a request may ask for")
    p.add_argument("--max-request-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    p.add_argument("--context", type=int, help="prompt + reply tokens allowed (default: the model's "
                   "max_position_embeddings, or 2048, BELLE's training length, for BLOOM)")
    p.add_argument("--served-model-name", help="the model id clients use (default: the --model directory's name)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("datagen", help="generate instruction data through an OpenAI-compatible API")
    datagen = p.add_subparsers(dest="method", metavar="METHOD", required=True)
    p = datagen.add_parser("self-instruct", help="BELLE's self-instruct: new tasks from 3 sampled seed tasks a request",
                           description="Asks the model for new tasks shown 3 seed tasks at a time, parses and filters "
                           "them as BELLE did, drops BM25 near-duplicates, and appends them to --out. Run it again "
                           "with the same --out to resume. OPENAI_API_KEY and OPENAI_BASE_URL are honoured.")
    p.add_argument("--out", required=True, help="JSONL output (appended to; resumed from)")
    p.add_argument("--seeds", default=None, help="seed tasks, JSONL (default: BELLE's zh_seed_tasks.json, shipped)")
    p.add_argument("--prompt", default=None, help="request prompt (default: BELLE's prompt_cn.txt, shipped)")
    p.add_argument("--api", choices=["chat", "completion"], default="chat")
    p.add_argument("--model", default="gpt-3.5-turbo", help="model name on the API (default gpt-3.5-turbo)")
    p.add_argument("--base-url", help="API base URL, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL or OpenAI)")
    p.add_argument("--num-instructions", type=int, default=100, help="records --out should hold at the end")
    p.add_argument("--workers", type=int, default=1, help="requests in flight at once")
    p.add_argument("--max-requests", type=int, help="stop after this many requests even if short of the target")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=1024)
    p.add_argument("--threshold", type=float, default=18.0, help="BM25 score above which a task is a near-duplicate")
    p.add_argument("--max-retries", type=int, default=5, help="retries of a request on 429, 5xx, dropped connections")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--seed", type=int, help="seed for sampling the seed tasks")
    p.set_defaults(run=cmd_self_instruct)

    p = sub.add_parser("eval", help="BELLE's eval: answer its 1000 questions, score them with a judge model",
                       description="Answers BELLE's eval questions with --model, has --judge-model score each answer "
                       "from 0 to 1 with BELLE's per-class judge prompts, and writes answers.jsonl, judged.jsonl, "
                       "report.json and report.md into --out. Run it again with the same --out to resume. "
                       "OPENAI_API_KEY and OPENAI_BASE_URL are honoured for the judge.")
    model_options(p, preset="belle-eval")
    p.add_argument("--judge-model", required=True, help="the judge's model name on its API (BELLE: gpt-4)")
    p.add_argument("--judge-base-url", help="the judge's API base URL (default: $OPENAI_BASE_URL or OpenAI)")
    p.add_argument("--eval-set", help="questions, JSONL (default: BELLE's eval_set.json, shipped)")
    p.add_argument("--judge-prompts", help="judge prompt per class, JSONL (default: BELLE's eval_prompt.json)")
    p.add_argument("--out", default="belle-eval", help="output directory (default ./belle-eval)")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--batch-size", type=int, default=8, help="questions answered together")
    p.add_argument("--max-new-tokens", type=int, help="answer length limit (default: the preset's)")
    p.add_argument("--workers", type=int, default=4, help="judge requests in flight at once")
    p.add_argument("--judge-max-tokens", type=int, default=1024)
    p.add_argument("--max-retries", type=int, default=5, help="retries of a judge request on 429, 5xx, drops")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per judge request")
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("card", help="write a model card (README.md) for a checkpoint directory or a BELLE model",
                       description="Writes a model card: description, training hyper-parameters, prompt format, a "
                       "usage snippet, files with their sizes (measured for a directory, computed from the shapes for "
                       "a name), a memory table, limitations and BELLE's citation. Facts about BELLE's models come "
                       "from paddle_belle/cards/facts.py with their sources; the options below override them.")
    p.add_argument("--model", required=True, help="checkpoint directory, or a name (belle-7b-2m, "
                   "belle-7b-2m-gptq-4bit-128g, ...; see `paddle-belle models`)")
    p.add_argument("--out", required=True, help="the card's path, e.g. DIR/README.md")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--facts", help="use BELLE's published facts of this model (for a directory whose name does not say)")
    p.add_argument("--title", help="the card's title (default: BELLE's name, or the directory's)")
    p.add_argument("--description", help="the card's opening sentence")
    p.add_argument("--base", help="the model it was fine-tuned from")
    p.add_argument("--data", help="the training data, in words")
    p.add_argument("--data-size", help="the amount of training data, e.g. 2M")
    p.add_argument("--hyper", action="append", metavar="KEY=VALUE",
                   help="a training hyper-parameter (repeatable), e.g. --hyper 'learning rate=3e-6'")
    p.set_defaults(run=cmd_card)

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

"""`paddle-belle <subcommand>`: thin argument parsing over the library. A handler's flags are its decorators, with
dests named as the keywords they feed (tests/test_cli.py checks), so it passes `**options(args, fn)` on."""
from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
import warnings

from paddle_belle import __version__

COMMANDS = []  # (name, handler, add_parser keywords), in the order --help lists them
GROUPS = {"datagen": "generate instruction data through an OpenAI-compatible API"}  # "datagen METHOD" commands


def command(name, **parser_kwargs):
    """Registers the handler below as `paddle-belle NAME`; the decorators in between add its flags."""
    def register(handler):
        COMMANDS.append((name, handler, parser_kwargs))
        return handler
    return register


def adds(function, **kwargs):
    """Decorator: function(parser, **kwargs) adds flags; each goes first, as decorators apply bottom-up."""
    def decorate(handler):
        handler.arguments = [decorate.add, *getattr(handler, "arguments", [])]
        return handler
    decorate.add = lambda p: function(p, **kwargs)  # also for one_of()
    return decorate


def arg(*flags, **kwargs):
    """Decorator: the command takes this flag (argparse's add_argument)."""
    return adds(lambda p: p.add_argument(*flags, **kwargs))


def one_of(*args, **group_kwargs):
    """Decorator: flags (each an arg(...)) that exclude one another."""
    def add(p):
        group = p.add_mutually_exclusive_group(**group_kwargs)
        for a in args:
            a.add(group)
    return adds(add)


def whole(low: int, high: int | None = None):
    """argparse type: a whole number from ``low`` to ``high`` (None: no limit); out of range is a usage error
    naming the flag, found before anything is imported or loaded."""
    def parse(text):
        value = int(text)
        if value < low or high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}, not {value}" if high is not None
                                             else f"must be >= {low}, not {value}")
        return value
    parse.__name__ = "int"  # argparse names the type in "invalid int value: 'x'"
    return parse


THREADS = dict(type=whole(1), help="CPU threads (default: every core this process may use)")


def setting(name, convert):
    """argparse type of the flag for generation setting ``name``: ``convert``ed, then checked by the library's rule
    (presets.RULES), so that a bad value is a usage error naming the flag, before any model loads."""
    def parse(text):
        from paddle_belle.presets import check

        value = convert(text)
        problem = check(name, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value
    parse.__name__ = convert.__name__  # argparse names the type in "invalid int value: 'x'"
    return parse


def model_options(p, preset="belle-card", seed=True):
    """The flags of the commands that load a model and generate with it."""
    from paddle_belle.presets import PRESETS
    from paddle_belle.prompts import STYLES
    from paddle_belle.registry import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL, help=f"checkpoint directory, community name (org/name) or short "
                   f"name (default {DEFAULT_MODEL}, which ships inside paddle_belle)")
    p.add_argument("--preset", choices=list(PRESETS), default=preset, help=f"sampling settings (default {preset}); "
                   "the flags below override single settings of it")
    p.add_argument("--temperature", type=setting("temperature", float),
                   help="sampling temperature; 0: greedy (default: the preset's)")
    p.add_argument("--top-k", type=setting("top_k", int), help="sample from the K most likely tokens; 0: all")
    p.add_argument("--top-p", type=setting("top_p", float),
                   help="sample from the most likely tokens that make up probability P, in (0, 1]; 1: all")
    p.add_argument("--repetition-penalty", type=setting("repetition_penalty", float),
                   help="> 1 makes tokens already in the prompt or reply less likely; 1: off")
    p.add_argument("--max-new-tokens", type=setting("max_new_tokens", int), help="reply length limit in tokens")
    p.add_argument("--style", choices=list(STYLES), help="prompt format (default: the one the model was trained in, "
                   "as its config.json records it; else belle)")
    p.add_argument("--threads", **THREADS)
    if seed:
        p.add_argument("--seed", type=setting("seed", int), help="sampling seed: the same seed gives the same "
                       "replies (default: a fresh one each run)")


def sampling(args) -> dict:
    """The generation settings the flags of model_options set, for the library's ``**overrides`` of the preset
    (None: the preset's)."""
    from paddle_belle.presets import GenerationConfig, temperature_settings

    given = options(args, GenerationConfig)
    return {**given, **temperature_settings(given.pop("temperature", None))}


def options(args, *functions, **given) -> dict:
    """The options named like a parameter with a default of ``functions`` (the rest are inputs), plus ``given``."""
    names = {n for f in functions for n, p in inspect.signature(f).parameters.items() if p.default is not p.empty}
    return {**{k: v for k, v in vars(args).items() if k in names}, **given}


def _load(args):
    from paddle_belle import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(args.model, threads=args.threads)
    return model, AutoTokenizer.from_pretrained(args.model)


@command("convert", help="convert a checkpoint between HF, PaddleNLP and GGUF (llama.cpp) layouts",
         description="Convert an HF checkpoint directory into a PaddleNLP one (--to paddle) or back (--to hf), one "
         "tensor at a time; write our checkpoint (float or quantized) as a llama.cpp GGUF file (--to gguf); or read a "
         "GGUF file (--from-gguf). SRC is never written to; DST must not exist.")
@arg("src", metavar="SRC")
@arg("dst", metavar="DST")
@arg("--to", choices=["paddle", "hf", "gguf"], default="paddle")
@arg("--dtype", choices=["keep", "float32", "float16", "bfloat16"], default="keep",
     help="cast floating-point weights (default: keep the source's)")
@arg("--outtype", choices=["f32", "f16", "q8_0", "q4_0"], default="f16",
     help="--to gguf: the weights' GGML type (default f16; norms and biases stay f32; weights whose rows are not "
     "a multiple of 32 fall back to f16 under q8_0/q4_0). A quantized SRC is dequantized, then requantized")
@arg("--max-shard-size", default="5GB", help="shard the weights above this size (default 5GB)")
@arg("--format", choices=["safetensors", "pdparams"], default="safetensors",
     help="weight file format of PaddleNLP output (HF output is always safetensors)")
@arg("--verify", action="store_true",
     help="load both sides (needs torch + transformers, and memory for both models) and print max |Δlogits|")
@one_of(arg("--from-gguf", action="store_true",
            help="SRC is a llama.cpp GGUF file (BLOOM or LLaMA; quantized tensors are dequantized to "
            "float32); DST gets our PaddleNLP layout and, for byte-level BPE vocabularies, the tokenizer"),
        arg("--from-gptq", action="store_true",
            help="SRC is a GPTQ-for-Bloom / GPTQ-for-LLaMa / AutoGPTQ file (.pt or .safetensors: BELLE's "
            "bloom7b-2m-4bit-128g.pt, llama7b-2m-8bit-128g.pt, ...; or model.safetensors.index.json for shards); DST "
            "gets our quantized checkpoint, the codes repacked, not re-quantized"))
@arg("--config", metavar="DIR", help="with --from-gptq: the directory with the model's config.json and tokenizer "
     "(default: SRC's directory, as in BELLE's repos)")
def cmd_convert(args):
    if args.config and not args.from_gptq:
        raise argparse.ArgumentError(None, "--config goes with --from-gptq")
    if args.from_gguf:
        from paddle_belle.convert.gguf import convert_gguf

        convert_gguf(args.src, args.dst)
    elif args.from_gptq:
        from paddle_belle.convert.gptq import convert_gptq

        convert_gptq(args.src, args.dst, config=args.config)
    elif args.to == "gguf":
        from paddle_belle.convert.gguf import export_gguf

        export_gguf(args.src, args.dst, args.outtype, verbose=getattr(args, "verbose", False))
    else:
        from paddle_belle.convert import convert

        from paddle_belle.convert.verify import verify_imports, verify_logits

        if args.verify:
            verify_imports()  # before writing: a failure after it left DST behind, so a rerun failed with "exists"
        convert(args.src, args.dst, **options(args, convert, safe_serialization=args.format == "safetensors"))
        if args.verify:
            paddle_dir, hf_dir = (args.dst, args.src) if args.to == "paddle" else (args.src, args.dst)
            print(f"verify: max |Δlogits| = {verify_logits(paddle_dir, hf_dir):.3g} (relative to max(1, |logits|))")
    print(f"wrote {args.dst}")


@command("decrypt", help="decrypt BELLE's encrypted LLaMA releases (*-enc) with the original LLaMA weights",
         description="Decrypt every <file>.<sha256>.enc of ENC (a downloaded BELLE *-enc repo, or one such file) with "
         "KEY, the original LLaMA consolidated.00.pth, into the new directory DST, checking each file's SHA-256 "
         "(point-alpaca's scheme, as BELLE's models/decrypt.py). Nothing is left behind on a failure. Then convert "
         "DST like any HF checkpoint (or --from-gptq its .pt file).")
@arg("src", metavar="ENC")
@arg("key", metavar="KEY")
@arg("dst", metavar="DST")
def cmd_decrypt(args):
    from paddle_belle.convert.decrypt import decrypt

    decrypt(args.src, args.key, args.dst)
    print(f"wrote {args.dst}")


@command("quantize", help="quantize a checkpoint to 2/3/4/8-bit weights (GPTQ or round-to-nearest)",
         description="Quantize the Linear weights of the decoder blocks block by block (GPTQ as PaddleSlim's, "
         "calibrated on a text file; or RTN) and write a quantized checkpoint that from_pretrained loads. "
         "--estimate prints sizes instead, for any registry model.")
@arg("--model", required=True, help="checkpoint directory, community name or short name")
@arg("--method", choices=["gptq", "rtn"], default="gptq")
@arg("--bits", type=int, choices=[2, 3, 4, 8], default=4,  # quant.format.BITS, which would import Paddle
     help="2, 3, 4 or 8 (default 4)")
@arg("--group-size", type=int, default=128, help="input rows per scale; -1: per channel (default 128)")
@arg("--calib", help="calibration text file (UTF-8), needed by gptq")
@arg("--nsamples", type=whole(1), default=128, help="calibration windows (default 128)")
@arg("--seqlen", type=whole(1), default=2048, help="tokens per calibration window (default 2048)")
# Act-order by default with GPTQ: measured on SmolLM2-135M it cut GPTQ-4's perplexity rise by more than half
# (README "Quantizing"), and the kernels read its permutation at no measurable cost. RTN has no order to choose.
@one_of(arg("--act-order", dest="act_order", action="store_true", default=None,
            help="GPTQ: quantize columns by decreasing Hessian diagonal (the default with --method gptq)"),
        arg("--no-act-order", dest="act_order", action="store_false", help="GPTQ: quantize columns in input order"))
@one_of(arg("--sym", dest="sym", action="store_true", default=True, help="symmetric grid (default)"),
        arg("--asym", dest="sym", action="store_false", help="asymmetric grid with zero points"))
@arg("--quantize-lm-head", action="store_true", help="also quantize a separate (untied) LM head")
@arg("--embedding", choices=["int8", "int4", "keep"], default="int8",  # quant.format.EMBEDDING_FORMATS
     help="the token embedding and the head tied to it (or a separate head left out of --quantize-lm-head): "
     "int8 per token (default), int4 group 128 (round-to-nearest), or keep as stored")
@arg("--out", help="output directory (must not exist)")
@arg("--estimate", action="store_true", help="print checkpoint size and resident memory at "
     "fp32/fp16/int8/int4-g128 for --model (a registry name needs no download) and stop")
@arg("--threads", **THREADS)
def cmd_quantize(args):
    if args.estimate:
        from paddle_belle.quant.estimate import format_estimate

        print(format_estimate(args.model))
        return 0
    if not args.out:
        raise ValueError("--out is required (unless --estimate)")
    from paddle_belle.hub import resolve
    from paddle_belle.quant.format import QuantConfig
    from paddle_belle.quant.quantize import quantize_checkpoint

    if args.act_order is None:
        args.act_order = args.method == "gptq"
    config = QuantConfig(**options(args, QuantConfig))  # checked before resolve() may download the model
    result = quantize_checkpoint(resolve(args.model), args.out, config, **options(args, quantize_checkpoint))
    print(f"wrote {args.out} ({result['bytes'] / 1e6:.1f} MB of weights; quantized in {result['seconds']:.1f} s)")


@command("perplexity", help="sliding-window perplexity of a model on a text file")
@arg("--model", required=True, help="checkpoint directory, community name or short name")
@arg("--data", required=True, help="UTF-8 text file")
@arg("--seqlen", type=whole(1), default=2048, help="window length in tokens (default 2048)")
@arg("--stride", type=whole(1), help="tokens between window starts (default: seqlen, disjoint windows)")
@arg("--json", action="store_true", help='print {"perplexity": ..., "tokens": ...}')
@arg("--threads", **THREADS)
def cmd_perplexity(args):
    from paddle_belle.evaluate.perplexity import perplexity_of_file
    from paddle_belle.hub import resolve

    result = perplexity_of_file(resolve(args.model), args.data, **options(args, perplexity_of_file))
    print(json.dumps({"perplexity": result["perplexity"], "tokens": result["tokens"]}) if args.json
          else f"perplexity {result['perplexity']:.4f} over {result['tokens']} tokens")


@command("chat", help="talk to a model (streaming, multi-turn)")
@adds(model_options)
@arg("--max-history", type=whole(0), help="turns of history to keep (default: as many as fit)")
def cmd_chat(args):
    from paddle_belle.chat import ChatSession

    model, tokenizer = _load(args)
    session = ChatSession(model, tokenizer, **options(args, ChatSession), **sampling(args))
    print(f"paddle-belle chat: {args.model} (style {session.style}, preset {args.preset}). /help lists the commands.")
    while True:
        try:
            line = input("Human: ").strip()
        except EOFError:
            print()
            return 0
        # A line that starts with "/" is a command, never sent to the model (a mistyped one would be, unnoticed);
        # "//" sends the rest as text starting with "/".
        command = line if line.startswith("/") and not line.startswith("//") else None
        if command in ("/exit", "/quit"):
            return 0
        if command == "/reset":
            session.reset()
            print("(history cleared)")
        elif command == "/help":
            print(CHAT_HELP)
        elif command:
            print(f"unknown command {command.split()[0]}; /help lists the commands")
        elif line:
            print("Assistant: ", end="", flush=True)
            for chunk in session.ask(line[1:] if line.startswith("//") else line):
                print(chunk, end="", flush=True)
            print(flush=True)


CHAT_HELP = """/reset  forget the conversation so far
/exit   quit (also /quit, or end of input: Ctrl-D)
/help   this list
//text  send the message /text (a line starting with / is a command)"""


@command("generate", help="answer one prompt, or every record of a JSONL file")
@adds(model_options)
@one_of(arg("--prompt", help="one message"),
        arg("--input-file", help='JSONL with a "prompt" (or BELLE "instruction" [+ "input"]) per line'), required=True)
@arg("--output-file", help="JSONL written with each record plus its \"output\" (must not exist unless --force)")
@arg("--force", action="store_true", help="replace --output-file if it exists")
@arg("--batch-size", type=whole(1), default=8, help="prompts answered together: rows of the continuous batch, "
     "each taken by the next prompt as soon as its reply ends (default 8)")
def cmd_generate(args):
    if args.input_file and not args.output_file:  # before loading the model; main() reports it as a usage error
        raise argparse.ArgumentError(None, "--input-file needs --output-file")
    from paddle_belle.chat import check_output_file, generate_batch, generate_file

    if args.output_file:
        check_output_file(args.output_file, args.force)  # before minutes of model loading

    model, tokenizer = _load(args)
    settings = {**options(args, generate_batch), **sampling(args)}
    if args.prompt is not None:
        print(generate_batch(model, tokenizer, [args.prompt], **settings)[0])
        return 0
    failures = generate_file(model, tokenizer, args.input_file, args.output_file, args.batch_size, args.force,
                             **settings)
    print(f"wrote {args.output_file}" + (f"; {failures} record(s) failed (see above)" if failures else ""))
    return 1 if failures else 0


@command("train", help="fine-tune a model on BELLE data (full SFT or LoRA) from a YAML config",
         description="Train as CONFIG (see configs/sft/) says; settings can be overridden with --key value pairs, "
         "dotted keys reaching into sections (--training.learning_rate 1e-4 --lora.r 8). For several devices or "
         "hosts, run it under python -m paddle.distributed.launch.")
@arg("path", metavar="CONFIG")
@arg("overrides", nargs=argparse.REMAINDER, help="--key value pairs")
def cmd_train(args):
    from paddle_belle.train import load_config, train

    trainer = train(load_config(args.path, args.overrides))
    if trainer.is_world_process_zero():
        print(f"saved to {trainer.args.output_dir}")


@command("plot-loss", help="draw a training run's loss and learning rate over steps into a PNG",
         description="Reads RUN_DIR/loss_log.jsonl (written by `paddle-belle train`, also while it runs) and draws the "
         "training loss, the learning rate and the held-out loss (where the run evaluated) over steps. Training "
         "draws RUN_DIR/loss.png itself at the end.")
@arg("run_dir", metavar="RUN_DIR", help="a `paddle-belle train` output directory")
@arg("--out", help="the PNG to write (default RUN_DIR/loss.png)")
def cmd_plot_loss(args):
    from paddle_belle.train.plot import write_loss_png

    print(f"wrote {write_loss_png(args.run_dir, args.out)}")


@command("merge-lora", help="fold a LoRA adapter into its base model: a plain checkpoint")
@arg("base", metavar="BASE", help="the base model the adapter was trained on (directory or name)")
@arg("adapter", metavar="ADAPTER", help="directory with lora_config.json and lora_model_state.pdparams")
@arg("out", metavar="OUT", help="new directory for the merged checkpoint")
def cmd_merge_lora(args):
    from paddle_belle.train import merge_lora

    print(f"wrote {merge_lora(args.base, args.adapter, args.out)}")


@command("serve", help="serve a model over an OpenAI-compatible HTTP API",
         description="/v1/models, /v1/chat/completions, /v1/completions (streaming by SSE) and /health. Chat "
         "messages are rendered in the --style prompt format; requests may set max_tokens, temperature, top_p, "
         "seed, stop, and BELLE's top_k, repetition_penalty as extra body fields.")
@adds(model_options, seed=False)  # no --seed: requests bring their own
@arg("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
@arg("--port", type=whole(1, 65535), default=8000)
@adds(lambda p: p.add_argument("--api-key", default=os.environ.get("PADDLE_BELLE_API_KEY"), help="require "
      "'Authorization: Bearer KEY' on every /v1 request (default: $PADDLE_BELLE_API_KEY)"))  # read at parse time
@arg("--max-concurrency", type=whole(1), help="rows in the batch: replies generated together, one forward pass per "
     "token for all of them (default: as many as the KV cache of --context tokens a row fits in half the available "
     "memory, at most 16)")
@arg("--prefill-chunk", type=whole(1), default=128, help="prompt tokens prefilled between two decoding steps: the "
     "most a new prompt delays the replies in flight (default 128)")
@arg("--max-queue", type=whole(0), default=64,
     help="requests that may wait for a slot; beyond them requests get 429 (default 64)")
@arg("--max-tokens", dest="max_tokens_cap", metavar="MAX_TOKENS", type=whole(1), default=2048,
     help="the largest max_tokens a request may ask for")
@arg("--max-request-bytes", type=whole(1), default=1 << 20, help="request body limit (default 1 MiB)")
@arg("--context", type=whole(1), help="prompt + reply tokens allowed (default: the model's "
     "max_position_embeddings, or 2048, BELLE's training length, for BLOOM)")
@arg("--served-model-name", dest="served_name", metavar="SERVED_MODEL_NAME",
     help="the model id clients use (default: the --model directory's name)")
@arg("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
def cmd_serve(args):
    from paddle_belle.serve import serve

    serve(args.model, **options(args, serve), **sampling(args))  # sampling: the defaults of requests


@command("datagen self-instruct", help="BELLE's self-instruct: new tasks from 3 sampled seed tasks a request",
         description="Asks the model for new tasks shown 3 seed tasks at a time, parses and filters them as BELLE "
         "did, drops BM25 near-duplicates, and appends them to --out. Run it again with the same --out to resume. "
         "OPENAI_API_KEY and OPENAI_BASE_URL are honoured. Exits 1 when --out holds fewer records than asked for.")
@arg("--out", required=True, help="JSONL output (appended to; resumed from)")
@arg("--seeds", default=None, help="seed tasks, JSONL (default: BELLE's zh_seed_tasks.json, shipped)")
@arg("--prompt", default=None, help="request prompt (default: BELLE's prompt_cn.txt, shipped)")
@arg("--api", choices=["chat", "completion"], default="chat")
@arg("--model", default="gpt-3.5-turbo", help="model name on the API (default gpt-3.5-turbo)")
@arg("--base-url", help="API base URL, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL or OpenAI)")
@arg("--api-key", help="API key (default: $OPENAI_API_KEY)")
@arg("--num-instructions", type=whole(1), default=100, help="records --out should hold at the end")
@arg("--workers", type=whole(1), default=1, help="requests in flight at once")
@arg("--max-requests", type=whole(1), help="stop after this many requests even if short of the target")
@arg("--temperature", type=float, default=1.0)
@arg("--top-p", type=float, default=1.0)
@arg("--max-tokens", type=whole(1), default=1024, help="reply budget per request (default 1024; lowered to fit "
     "the context when the server reports it and a prompt would not leave room)")
@arg("--threshold", type=float, default=18.0, help="BM25 score above which a task is a near-duplicate")
@arg("--max-retries", type=whole(0), default=5, help="retries of a request on 429, 5xx, dropped connections")
@arg("--timeout", type=float, default=600.0, help="seconds per request")
@arg("--seed", type=int, help="seed for sampling the seed tasks")
def cmd_self_instruct(args):
    from paddle_belle.api import KeyRefused, make_client
    from paddle_belle.datagen.self_instruct import self_instruct

    client = make_client(**options(args, make_client))
    try:
        stats = self_instruct(args.out, client, args.model, args.num_instructions, **options(args, self_instruct))
    except KeyRefused as e:
        raise RuntimeError(f"{e}; pass the key with --api-key or set OPENAI_API_KEY") from None
    held = stats.kept + stats.resumed
    print(f"self-instruct: {stats.line()}; {args.out} holds {held} records")
    if held < args.num_instructions:  # only --max-requests ends a run short without an error of its own
        print(f"paddle-belle datagen: error: {args.out} holds {held} of the {args.num_instructions} records asked "
              f"for (--max-requests {args.max_requests} reached)", file=sys.stderr)
        return 1


@command("eval", help="BELLE's eval: answer its 1000 questions, score them with a judge model",
         description="Answers BELLE's eval questions with --model, has --judge-model score each answer from 0 to 1 "
         "with BELLE's per-class judge prompts, and writes answers.jsonl, judged.jsonl, report.json, report.md and "
         "report.html (a page: per-class bar chart, every question) into --out. Run it again with the same --out to "
         "resume. OPENAI_API_KEY and OPENAI_BASE_URL are honoured for the judge.")
@adds(model_options, preset="belle-eval")
@arg("--judge-model", required=True, help="the judge's model name on its API (BELLE: gpt-4)")
@arg("--judge-base-url", help="the judge's API base URL (default: $OPENAI_BASE_URL or OpenAI)")
@arg("--judge-api-key", dest="api_key", metavar="JUDGE_API_KEY", help="the judge's API key (default: "
     "$OPENAI_API_KEY)")
@arg("--eval-set", help="questions, JSONL (default: BELLE's eval_set.json, shipped)")
@arg("--judge-prompts", help="judge prompt per class, JSONL (default: BELLE's eval_prompt.json)")
@arg("--out", default="belle-eval", help="output directory (default ./belle-eval)")
@arg("--limit", type=whole(1), help="only the first N questions")
@arg("--batch-size", type=whole(1), default=8, help="questions answered together (rows of the continuous batch)")
@arg("--workers", type=whole(1), default=4, help="judge requests in flight at once")
@arg("--judge-max-tokens", type=whole(1), default=1024, help="reply budget per judge request (default 1024; lowered "
     "to fit the context when the judge's server reports it and a prompt would not leave room)")
@arg("--max-retries", type=whole(0), default=5, help="retries of a judge request on 429, 5xx, drops")
@arg("--timeout", type=float, default=600.0, help="seconds per judge request")
def cmd_eval(args):
    from paddle_belle.api import KeyRefused, make_client
    from paddle_belle.evaluate.judge import evaluate
    from paddle_belle.evaluate.report_page import load_runs, write_report_page

    client = make_client(args.judge_base_url, **options(args, make_client))
    try:
        report = evaluate(lambda: _load(args), client, args.judge_model, args.out, **options(args, evaluate),
                          **sampling(args))
    except KeyRefused as e:
        raise RuntimeError(f"{e}; pass the judge's key with --judge-api-key or set OPENAI_API_KEY") from None
    write_report_page(load_runs([args.out]), os.path.join(args.out, "report.html"),
                      f"BELLE eval of {args.out}, judged by {args.judge_model}")
    show = lambda x: "-" if x is None else f"{x:.3f}"  # noqa: E731
    print(f"eval: {report['scored']} scored, {report['unscored']} unscored, {report['not_judged']} not judged; "
          f"overall mean {show(report['overall_mean'])}, Score_w/o_others {show(report['score_wo_others'])}; "
          f"report in {args.out}/report.md and report.html")
    return 1 if report["not_judged"] else 0


@command("eval-report", help="one page comparing eval directories side by side (per-class bars, every question)",
         description="Writes a self-contained HTML page from one or more `paddle-belle eval --out` directories: "
         "Score_w/o_others and the other means per run, the per-class mean scores as grouped bars, and every "
         "question with each run's answer, the judge's reply and score, filterable by class and score.")
@arg("dirs", nargs="+", metavar="DIR", help="eval output directories (answers.jsonl, judged.jsonl)")
@arg("--out", help="the page to write (default: DIR/report.html for one DIR; required for several)")
@arg("--title", help="the page's title (default: the directories' names)")
def cmd_eval_report(args):
    from paddle_belle.evaluate.report_page import load_runs, write_report_page

    if args.out is None and len(args.dirs) > 1:
        raise argparse.ArgumentError(None, "--out is required with several directories")
    runs = load_runs(args.dirs)
    print(f"wrote {write_report_page(runs, args.out or os.path.join(args.dirs[0], 'report.html'), args.title)}")


@command("card", help="write a model card (README.md) for a checkpoint directory or a BELLE model",
         description="Writes a model card: description, training hyper-parameters, prompt format, a usage snippet, "
         "files with their sizes (measured for a directory, computed from the shapes for a name), a memory table, "
         "limitations and BELLE's citation. Facts about BELLE's models come from paddle_belle/cards/facts.py with "
         "their sources; the options below override them.")
@arg("--model", required=True, help="checkpoint directory, or a name (belle-7b-2m, "
     "belle-7b-2m-gptq-4bit-128g, ...; see `paddle-belle models`)")
@arg("--out", required=True, help="the card's path, e.g. DIR/README.md")
@arg("--force", action="store_true", help="replace --out if it exists")
@arg("--facts", help="use BELLE's published facts of this model (for a directory whose name does not say)")
@arg("--title", help="the card's title (default: BELLE's name, or the directory's)")
@arg("--description", help="the card's opening sentence")
@arg("--base", help="the model it was fine-tuned from")
@arg("--data", help="the training data, in words")
@arg("--data-size", help="the amount of training data, e.g. 2M")
@arg("--hyper", action="append", metavar="KEY=VALUE",
     help="a training hyper-parameter (repeatable), e.g. --hyper 'learning rate=3e-6'")
def cmd_card(args):
    from paddle_belle.cards import build_card, write_card
    from paddle_belle.cards.render import apply_overrides  # where build_card's **overrides go

    hyper = {}
    for item in args.hyper or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--hyper {item!r}: expected KEY=VALUE, e.g. 'learning rate=2e-5'")
        hyper[key.strip()] = value.strip()
    text = build_card(args.model, card_path=args.out, **options(args, build_card, apply_overrides, hyper=hyper or None))
    print(f"wrote {write_card(text, args.out, **options(args, write_card))}")


@command("models", help="list the BELLE family and base models: shapes, sizes, sources")
def cmd_models(args):
    from paddle_belle.registry import format_table

    print(format_table())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paddle-belle",
                                     description="BELLE chat models (BLOOM and LLaMA families) on PaddlePaddle.")
    parser.add_argument("--version", action="version", version=f"paddle-belle {__version__}")
    verbose = dict(action="store_true", help="also show the libraries' warnings and log lines (Paddle, PaddleNLP, ...)")
    parser.add_argument("-v", "--verbose", **verbose)
    parser.set_defaults(run=lambda args: parser.print_help())  # no command
    subparsers = {"": parser.add_subparsers(dest="command", metavar="COMMAND")}
    for name, run, kwargs in COMMANDS:
        group, _, name = name.rpartition(" ")
        if group not in subparsers:
            subparsers[group] = subparsers[""].add_parser(group, help=GROUPS[group]).add_subparsers(
                dest="method", metavar="METHOD", required=True)
        p = subparsers[group].add_parser(name, **kwargs)
        for add in getattr(run, "arguments", []):
            add(p)
        p.add_argument("-v", "--verbose", **verbose, default=argparse.SUPPRESS)  # also after the command's name
        p.set_defaults(run=run)
    return parser


def quiet_libraries() -> None:
    """Keep the libraries' chatter that does not concern the user off the terminal (`--verbose` shows it). Called
    before anything imports Paddle: the first three warnings come at import time."""
    for message in ("No ccache found",  # paddle/utils/cpp_extension/extension_utils.py: nothing is compiled here
                    "Setuptools is replacing distutils",  # setuptools' _distutils_hack, as Paddle imports distutils
                    "pkg_resources is deprecated as an API"):  # jieba 0.42.1's jieba/_compat.py, via PaddleNLP
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    # Paddle's paddle/distributed/utils/log_utils.py get_logger(name="root") gives Python's root logger an INFO
    # handler at import unless it has one, so every library's INFO lines (datasets' "PyTorch version ... available")
    # reached the terminal: a WARNING handler first.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    # PaddleNLP's logger (paddlenlp/utils/log.py) has its own handler and sets itself to DEBUG when paddlenlp is
    # imported; a filter on it, installed now, outlasts that.
    logging.getLogger("PaddleNLP").addFilter(lambda record: record.levelno >= logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "verbose", False):
        quiet_libraries()
    try:
        return args.run(args) or 0  # a handler returns its exit status, or None when it succeeded
    except argparse.ArgumentError as e:  # a usage error a handler found: reported as argparse reports its own
        parser.error(str(e))
    except (ValueError, OSError, RuntimeError) as e:  # CheckpointError is a ValueError: one line, no traceback
        print(f"paddle-belle {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

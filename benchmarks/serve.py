"""`paddle-belle serve` under load: continuous batching with C concurrent streaming clients (the openai SDK).

By default the model has bloom-560m's shape with random weights (std 0.02, written once under --workdir as float16,
served as float32, as int4-g128 by streaming RTN: the native int4 kernels, and as "int4-x8": that int4 checkpoint
with int8 activations, PADDLE_BELLE_INT8_ACTIVATIONS=1) and belle-tiny-zh's tokenizer, its
vocabulary padded with placeholder tokens up to BLOOM's 250,880 ids; --model DIR serves a checkpoint of yours.
Every request generates exactly --new tokens (min_tokens masks EOS). Prints, per format and client count: total
generated tokens/s, median time to first token and p95 time between tokens (the gaps between a stream's chunks).
Without HTTP, a decoding step with 1 and 16 rows busy (--rows-table), in wall and CPU seconds, for requests like the
served ones (same prompt, --new tokens, the settings the server makes of them). Then the prefill
delay: while --delay-clients streams run, one --long-token prompt arrives; the running streams' largest gap during
its prefill, less their median gap before it, is the delay it caused, shown beside the slowest prefill chunk
measured in process (each chunk of the same prompt as a Batcher step alone: the last, attending to the whole prompt,
is the slowest) and generation.stream alone (batch 1, no HTTP). Per client count, "model thread busy" is the share
of the wall time the server's model thread spent in batch steps (/health step_seconds): the rest it waited for
requests or ran their jobs; a second table splits it (decoding forwards, token choice, prefill, jobs) beside the
mean rows of a decoding step and the CPU seconds of the server and of the clients. On a shared machine expect +-30% between runs (the load average is printed). Nothing is
asserted.

    python benchmarks/serve.py [--shape bloom-560m | --model DIR] [--formats float32,int4,int4-x8] [--clients 1,4,16]
                               [--rows 16] [--chunk 128] [--new 48] [--requests 1] [--long 1000] [--threads 2]
                               [--rows-table 1,16] [--step-only]
    quick subsets: --formats float32 --clients 1,4 --long 0 --rows-table ''   (--clients '': in process only;
                   --long 0: no long prompt; --rows-table '': no decoding-step table; --step-only: only the
                   in-process decoding steps, no server)
"""
import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import openai
import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from cpu_formats import SHAPES, write_checkpoint  # noqa: E402
from servers import BelleServer  # noqa: E402

PROMPT = "请写一篇关于春天的短文。"
TOKENIZER = HERE.parent / "paddle_belle" / "assets" / "belle-tiny-zh"


def make_checkpoints(shape, workdir: Path) -> dict:
    """{format: directory} of a random-weights checkpoint of ``shape``, with a tokenizer covering its vocabulary."""
    work = workdir / shape
    if not (work / "fp16").exists():
        write_checkpoint(shape, work / "fp16")
    if not (work / "int4").exists():
        subprocess.run(["paddle-belle", "quantize", "--model", str(work / "fp16"), "--out", str(work / "int4"),
                        "--method", "rtn", "--bits", "4", "--group-size", "128"], check=True)
    for d in ("fp16", "int4"):
        for name in ("merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(TOKENIZER / name, work / d / name)
        vocab = json.loads((TOKENIZER / "vocab.json").read_text(encoding="utf-8"))
        vocab.update({f"x{i}": i for i in range(len(vocab), SHAPES[shape]["vocab_size"])})  # random ids decode
        (work / d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return {"float32": work / "fp16", "int4": work / "int4", "int4-x8": work / "int4"}


# Formats that are another format's checkpoint run with int8 activations (paddle_belle/kernels int8_activations):
# PADDLE_BELLE_INT8_ACTIVATIONS set for their in-process runs and their server, and cleared for every other format.
INT8_ACTIVATIONS = {"int4-x8"}


def activations(name):
    """Set PADDLE_BELLE_INT8_ACTIVATIONS for format ``name`` (inherited by the server it starts) and have the kernels
    read it again."""
    from paddle_belle import kernels

    os.environ["PADDLE_BELLE_INT8_ACTIVATIONS"] = "1" if name in INT8_ACTIVATIONS else "0"
    kernels.reload()


def stream_one(client, messages, new, marks):
    """One streaming chat; appends (time, completion tokens so far) per chunk to ``marks``; returns usage."""
    usage = None
    for chunk in client.chat.completions.create(model="m", messages=messages, stream=True, max_tokens=new,
                                                temperature=0, extra_body={"min_tokens": new},
                                                stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        elif chunk.choices and chunk.choices[0].delta.content:
            marks.append(time.perf_counter())
    return usage


PARTS = ("step", "decode", "tokens", "prefill", "job")  # /health's *_seconds: the model thread's time


def load(url, clients, per_client, new, pid):
    """(tokens/s, median TTFT, p95 time between tokens, {where the time went}) of ``clients`` streaming clients, the
    last: the share of the wall time the model thread spent in each of PARTS, the mean rows of a decoding step, and
    the CPU seconds a wall second of the server process (``pid``) and of this one (the clients)."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    ttft, gaps, tokens = [], [], []
    barrier = threading.Barrier(clients)

    def one():
        barrier.wait()
        for _ in range(per_client):
            start, marks = time.perf_counter(), []
            tokens.append(stream_one(client, [{"role": "user", "content": PROMPT}], new, marks).completion_tokens)
            ttft.append(marks[0] - start)
            gaps.extend(np.diff(marks))

    threads = [threading.Thread(target=one) for _ in range(clients)]
    before, cpu0, start = health(url), (process_cpu(pid), process_cpu("self")), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, after, cpu1 = time.perf_counter() - start, health(url), (process_cpu(pid), process_cpu("self"))
    where = {part: (after[f"{part}_seconds"] - before[f"{part}_seconds"]) / wall for part in PARTS}
    where["rows"] = (after["decode_rows"] - before["decode_rows"]) / max(1, after["decode_steps"] - before["decode_steps"])
    where["server cpu"], where["client cpu"] = ((b - a) / wall for a, b in zip(cpu0, cpu1))
    return sum(tokens) / wall, statistics.median(ttft), float(np.percentile(gaps, 95)), where


def health(url):
    """/health's figures; nan for those an older server lacks."""
    got = requests.get(url + "/health", timeout=60).json()
    keys = [f"{part}_seconds" for part in PARTS] + ["decode_rows", "decode_steps"]
    return {k: got.get(k, float("nan")) for k in keys}


def process_cpu(pid):
    """CPU seconds (user + system, all threads) of process ``pid`` ("self": this one) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (proc(5), from field 3)


def prefill_delay(url, clients, long_prompt, new):
    """While ``clients`` streams run, send ``long_prompt``: (median gap before, largest gap during its prefill,
    its prompt tokens, its time to first token)."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    marks = [[] for _ in range(clients)]
    threads = [threading.Thread(target=stream_one, args=(client, [{"role": "user", "content": PROMPT}], new, m))
               for m in marks]
    for t in threads:
        t.start()
    while min(len(m) for m in marks) < 8:  # every stream decoding for a while
        time.sleep(0.01)
    sent, first = time.perf_counter(), []
    usage = stream_one(client, [{"role": "user", "content": long_prompt}], 2, first)
    for t in threads:
        t.join()
    before = [g for m in marks for a, g in zip(m[1:], np.diff(m)) if a < sent]
    during = [g for m in marks for a, g in zip(m[1:], np.diff(m)) if sent < a <= first[0] + 0.5]
    return statistics.median(before), max(during), usage.prompt_tokens, first[0] - sent


def in_process(directory, prompt_ids, chunk, threads, rows=(), step_only=False, new=48):
    """Without HTTP: (seconds of the slowest prefill chunk of ``prompt_ids`` alone, each a Batcher step after a
    warm-up one (None without a prompt);
    tokens/s of generation.stream, batch 1: the reference; {rows: (wall s, CPU s) of a decoding step with that many
    rows busy}). CPU seconds (all threads of this process) show what batching costs apart from the share of the
    cores that a shared machine leaves this process. ``step_only``: the decoding steps alone (the others None).
    The decoding steps are those of the served requests: the same prompt, ``new`` tokens, and the settings the
    server makes of the benchmark's request (its preset's repetition penalty and the chat style's stop strings
    with temperature 0 and min_tokens), so that served and in-process figures differ by the serving alone."""
    import resource

    from paddle_belle import AutoModelForCausalLM, AutoTokenizer, generation, prompts
    from paddle_belle.batching import Batcher

    model = AutoModelForCausalLM.from_pretrained(directory, threads=threads)
    tok = AutoTokenizer.from_pretrained(directory)
    times = []
    for warm_up in (True, False) if prompt_ids and not step_only else ():
        # columns for the whole prompt from the start: no cache growth inside a timed step (the server has them too)
        batcher = Batcher(model, tok, rows=1, chunk=chunk, columns=len(prompt_ids) + 1)
        request = batcher.add(prompt_ids, generation.GenerationConfig(max_new_tokens=1))
        while not request.tokens:
            t = time.perf_counter()
            batcher.step()
            times.append(time.perf_counter() - t)
            if warm_up:
                times = []
                break
    ids = tok(generation_prompt(PROMPT))["input_ids"]
    config = generation.GenerationConfig(max_new_tokens=16, min_new_tokens=16)
    stream_s = None
    if not step_only:
        for _ in range(2):  # the first: warm-up
            t = time.perf_counter()
            list(generation.stream(model, np.array([ids]), config=config))
            stream_s = time.perf_counter() - t
    # serve/engine.py's Engine.config for stream_one's request, with the server's default preset (belle-card)
    served = generation.make_config("belle-card", max_new_tokens=new, min_new_tokens=new,
                                    stop_strings=prompts.get_style("belle").stops, **generation.temperature_settings(0))

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    steps = {}
    # The first Batcher's steps pay one-off costs (allocations, first calls): a warm-up run of the first row count,
    # discarded, so that the 1-row step (the ratios' base) is not inflated by them
    for n in list(rows[:1]) + list(rows):
        batcher = Batcher(model, tok, rows=n, chunk=chunk, columns=len(ids) + new)  # no growth in a timed step
        for _ in range(n):
            batcher.add(ids, served, strip=True)
        while batcher.waiting or any(r is not None and not r.tokens for r in batcher.slots):
            batcher.step()
        wall, cpu0, count = time.perf_counter(), cpu(), 0
        while batcher.busy:
            batcher.step()
            count += 1
        steps[n] = ((time.perf_counter() - wall) / count, (cpu() - cpu0) / count)
    return max(times, default=None), stream_s and 16 / stream_s, steps


def generation_prompt(text):
    from paddle_belle import prompts

    return prompts.render("belle", [], text, "</s>")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=list(SHAPES), default="bloom-560m")
    p.add_argument("--model", help="a checkpoint directory to serve instead of random weights")
    p.add_argument("--formats", default="float32,int4")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--rows", type=int, default=16, help="--max-concurrency of the server")
    p.add_argument("--chunk", type=int, default=128, help="--prefill-chunk of the server")
    p.add_argument("--requests", type=int, default=1, help="requests per client")
    p.add_argument("--new", type=int, default=48)
    p.add_argument("--long", type=int, default=1000, help="tokens of the prompt that arrives mid-run (0: none)")
    p.add_argument("--delay-clients", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows-table", default="1,16", help="rows of the in-process table ('': none)")
    p.add_argument("--step-only", action="store_true",
                   help="only the in-process decoding steps (--rows-table), no server, no prefill figures")
    p.add_argument("--workdir", default="/tmp/serve-bench")
    a = p.parse_args()
    for name in ("httpx", "httpx2"):  # the openai client's HTTP library (httpx2: newer openai) logs every request
        logging.getLogger(name).setLevel(logging.WARNING)  # at INFO ("HTTP Request: POST ..."), shown by PaddleNLP
    dirs = {"model": Path(a.model)} if a.model else make_checkpoints(a.shape, Path(a.workdir))
    if not a.model:
        dirs = {f: d for f, d in dirs.items() if f in a.formats.split(",")}
    from paddle_belle import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(next(iter(dirs.values())))
    unit = tok(PROMPT)["input_ids"]
    long_ids = (unit * (a.long // len(unit) + 1))[: a.long]
    long_prompt = tok.decode(long_ids)
    print(f"{a.model or a.shape}: {a.rows} rows, prefill chunk {a.chunk}, {a.new} tokens a request, "
          f"{a.threads} threads; load average {os.getloadavg()[0]:.1f} at the start")
    if a.clients and not a.step_only:
        print("| format | clients | tokens/s | x 1 client | median TTFT (s) | p95 between tokens (s) | x 1 client | "
              "model thread busy |")
        print("|---|---|---|---|---|---|---|---|")
    delays, rows_tables, wheres = [], [], []
    for name, directory in dirs.items():
        if not a.model:  # --model: the environment as given
            activations(name)
        rows = [int(n) for n in a.rows_table.split(",") if n]
        prompt_ids = tok(generation_prompt(long_prompt))["input_ids"] if a.long else []
        chunk_s, stream_tok_s, steps = in_process(directory, prompt_ids, a.chunk, a.threads, rows, a.step_only, a.new)
        rows_tables += [(name, n, wall, cpu_s, steps[rows[0]]) for n, (wall, cpu_s) in steps.items()]
        if not a.clients or a.step_only:
            continue
        server = BelleServer(directory, "--max-concurrency", a.rows, "--prefill-chunk", a.chunk, "--served-model-name",
                             "m", "--threads", a.threads, "--max-tokens", 4096)
        try:
            load(server.url, 1, 1, 4, server.proc.pid)  # warm-up
            base = None
            for clients in map(int, a.clients.split(",")):
                tps, ttft, tbt, where = load(server.url, clients, a.requests, a.new, server.proc.pid)
                base = base or (tps, tbt)
                print(f"| {name} | {clients} | {tps:.1f} | {tps / base[0]:.1f} | {ttft:.2f} | {tbt:.3f} | "
                      f"{tbt / base[1]:.1f} | {where['step']:.0%} |", flush=True)
                wheres.append((name, clients, tps, where))
            if not a.long:
                continue
            # the streams run on through the whole prefill: 8 tokens before it, one a step during it, 8 after
            before, during, n, ttft = prefill_delay(server.url, a.delay_clients, long_prompt, a.long // a.chunk + 24)
            delays.append((name, n, ttft, before, during, chunk_s, stream_tok_s))
        finally:
            server.stop()
    print(f"(load average {os.getloadavg()[0]:.1f} at the end)")
    if wheres:
        print("\nWhere the served time went: the model thread's share of the wall time in decoding forwards, in choosing"
              " their tokens (sampling, stop strings, text), in prefill, in jobs (tokenizing, adding requests), idle;"
              " the mean rows of a decoding step; CPU seconds a wall second of the server and of the clients (this "
              "process); the in-process step of that many rows, as tokens/s")
        print("| format | clients | tokens/s | decode | tokens | prefill | jobs | idle | rows a step | server CPU | "
              "client CPU | in process tokens/s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        alone = {(name, n): n / wall for name, n, wall, *_ in rows_tables}
        for name, clients, tps, w in wheres:
            print(f"| {name} | {clients} | {tps:.1f} | {w['decode']:.0%} | {w['tokens']:.1%} | {w['prefill']:.1%} | "
                  f"{w['job']:.1%} | {1 - w['step'] - w['job']:.1%} | {w['rows']:.1f} | {w['server cpu']:.2f} | "
                  f"{w['client cpu']:.2f} | {alone.get((name, clients), float('nan')):.1f} |")
    if rows_tables:
        print("\nIn process, no HTTP: a decoding step with N rows busy (tokens/s = N / step; CPU: all threads)")
        print("| format | rows | step (s) | tokens/s | x 1 row | CPU s a step | tokens per CPU s | x 1 row |")
        print("|---|---|---|---|---|---|---|---|")
        for name, n, wall, cpu_s, (wall1, cpu1) in rows_tables:
            print(f"| {name} | {n} | {wall:.3f} | {n / wall:.1f} | {n * wall1 / wall:.1f} | {cpu_s:.3f} | "
                  f"{n / cpu_s:.1f} | {n * cpu1 / cpu_s:.1f} |")
    if not delays:
        return
    print(f"\nA long prompt arriving while {a.delay_clients} streams run (prefill chunk {a.chunk} tokens):")
    print("| format | prompt tokens | its TTFT (s) | running streams' median gap before (s) | largest gap during "
          "its prefill (s) | delay (s) | slowest chunk alone (s) | delay / chunk | generation.stream batch 1 tok/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, n, ttft, before, during, chunk_s, stream_tok_s in delays:
        print(f"| {name} | {n} | {ttft:.2f} | {before:.3f} | {during:.3f} | {during - before:.3f} | {chunk_s:.3f} | "
              f"{(during - before) / chunk_s:.2f} | {stream_tok_s:.1f} |")


if __name__ == "__main__":
    main()

"""`paddle-belle serve` under load: C concurrent streaming clients (the openai SDK), each sending R chat requests
that generate exactly --new tokens (min_tokens masks EOS), against a server started here with --max-concurrency
S. Prints, per (C, S): requests/s, generated tokens/s, and medians of time to first token and of request latency.
Two in-process baselines generate the same tokens without HTTP: generation.stream alone (token ids), and
ChatSession.ask (what `paddle-belle chat` does per token: stop-string checks and decoding the reply so far), so
the ratios show what HTTP + the async hop to the model thread cost. On a shared machine expect ±30% between runs.
Nothing is asserted.

    python benchmarks/serve.py --model DIR [--clients 1,4,16] [--slots 1,2] [--requests 4] [--new 64] [--threads 2]
"""
import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servers import BelleServer  # noqa: E402


def load(server_url, clients, requests, new):
    client = openai.OpenAI(base_url=server_url + "/v1", api_key="none", max_retries=0, timeout=600)
    ttft, latency, tokens = [], [], []
    barrier = threading.Barrier(clients)

    def one():
        barrier.wait()
        for _ in range(requests):
            start = time.perf_counter()
            first = None
            stream = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "请写一篇关于春天的短文。"}], stream=True,
                max_tokens=new, temperature=0, extra_body={"min_tokens": new}, stream_options={"include_usage": True})
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - start
                if chunk.usage is not None:
                    tokens.append(chunk.usage.completion_tokens)
            latency.append(time.perf_counter() - start)
            ttft.append(first if first is not None else latency[-1])

    threads = [threading.Thread(target=one) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return len(latency) / wall, sum(tokens) / wall, statistics.median(ttft), statistics.median(latency)


def baseline(model_dir, new, threads, runs=4):
    """tokens/s of (generation.stream, ChatSession.ask), medians of ``runs`` after a warm-up."""
    from paddle_belle import AutoModelForCausalLM, AutoTokenizer, generation, prompts
    from paddle_belle.chat import ChatSession

    model = AutoModelForCausalLM.from_pretrained(model_dir, threads=threads)
    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = np.array([tok(prompts.render("belle", [], "请写一篇关于春天的短文。"))["input_ids"]])
    config = generation.GenerationConfig(max_new_tokens=new, min_new_tokens=new)
    session = ChatSession(model, tok, preset="greedy", max_new_tokens=new, min_new_tokens=new, max_history=0)
    result = []
    for run in (lambda: list(generation.stream(model, ids, config=config)),
                lambda: "".join(session.ask("请写一篇关于春天的短文。"))):
        times = []
        for _ in range(runs + 1):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        result.append(new / statistics.median(times[1:]))
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--slots", default="1,2")
    p.add_argument("--requests", type=int, default=4)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    raw, chat = baseline(args.model, args.new, args.threads)
    print(f"in-process: generation.stream {raw:.1f} tokens/s, ChatSession.ask {chat:.1f} tokens/s")
    print("| clients | max-concurrency | requests/s | tokens/s | median TTFT (s) | median latency (s) |")
    print("|---|---|---|---|---|---|")
    for slots in map(int, args.slots.split(",")):
        server = BelleServer(args.model, "--max-concurrency", slots, "--served-model-name", "m",
                             "--threads", args.threads)
        try:
            load(server.url, 1, 1, args.new)  # warm-up
            for clients in map(int, args.clients.split(",")):
                rps, tps, ttft, lat = load(server.url, clients, args.requests, args.new)
                print(f"| {clients} | {slots} | {rps:.2f} | {tps:.1f} | {ttft:.3f} | {lat:.3f} |", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()

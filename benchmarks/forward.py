"""Prefill and per-token decode latency: our BLOOM/LLaMA vs PaddleNLP 2.8.1's vs HF transformers', same weights
shape, same process, CPU fp32. Prints a table (median of several runs); nothing is asserted.

    python benchmarks/forward.py [--threads 2] [--prompt 128] [--steps 32] [--repeats 5]
"""
import argparse
import os
import statistics
import time

import numpy as np
import paddle
import paddlenlp.transformers as pnlp
import torch
import transformers

from paddle_belle import BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM

CONFIGS = {
    "bloom": dict(vocab_size=32000, hidden_size=1024, n_layer=8, n_head=16),
    "llama": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                  num_attention_heads=16, num_key_value_heads=4),
}


def timed(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ours(model_type, ids, steps):
    model = {"bloom": BloomForCausalLM, "llama": LlamaForCausalLM}[model_type](
        {"bloom": BloomConfig, "llama": LlamaConfig}[model_type](**CONFIGS[model_type])).eval()
    x = paddle.to_tensor(ids)

    def prefill():
        with paddle.no_grad():
            model(x)

    def decode():
        with paddle.no_grad():
            cache = model.new_cache(1, ids.shape[1] + steps)
            model(x, cache=cache)
            nxt = x[:, -1:]
            for _ in range(steps):
                nxt = model(nxt, cache=cache).logits[:, -1:].argmax(-1)
    return prefill, decode


def paddlenlp_(model_type, ids, steps):
    config_cls, model_cls = {"bloom": (pnlp.BloomConfig, pnlp.BloomForCausalLM),
                             "llama": (pnlp.LlamaConfig, pnlp.LlamaForCausalLM)}[model_type]
    model = model_cls(config_cls(**CONFIGS[model_type])).eval()
    x = paddle.to_tensor(ids)
    cache_kw = "cache" if model_type == "bloom" else "past_key_values"

    def prefill():
        with paddle.no_grad():
            model(x, return_dict=True)

    def decode():
        with paddle.no_grad():
            out = model(x, use_cache=True, return_dict=True)
            nxt, past = x[:, -1:], out.past_key_values
            for i in range(steps):
                mask = paddle.ones([1, ids.shape[1] + i + 1], dtype="int64")
                out = model(nxt, attention_mask=mask, use_cache=True, return_dict=True, **{cache_kw: past})
                nxt, past = out.logits[:, -1:].argmax(-1), out.past_key_values
    return prefill, decode


def hf(model_type, ids, steps):
    cfg = {"bloom": transformers.BloomConfig, "llama": transformers.LlamaConfig}[model_type](**CONFIGS[model_type])
    model = {"bloom": transformers.BloomForCausalLM, "llama": transformers.LlamaForCausalLM}[model_type](cfg).eval()
    x = torch.tensor(ids)

    def prefill():
        with torch.no_grad():
            model(x)

    def decode():
        with torch.no_grad():
            out = model(x, use_cache=True)
            nxt, past = x[:, -1:], out.past_key_values
            for _ in range(steps):
                out = model(nxt, past_key_values=past, use_cache=True)
                nxt, past = out.logits[:, -1:].argmax(-1), out.past_key_values
    return prefill, decode


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    paddle.base.core.set_num_threads(a.threads)  # Paddle uses one thread unless told
    torch.set_num_threads(a.threads)
    ids = np.random.default_rng(0).integers(0, 32000, (1, a.prompt))
    print(f"CPU fp32, {a.threads} threads, prompt {a.prompt}, {a.steps} decode steps, median of {a.repeats}")
    print(f"{'model':6} {'impl':10} {'prefill ms':>11} {'decode ms/tok':>14} {'prefill ×ours':>14} {'decode ×ours':>13}")
    for model_type in CONFIGS:
        rows = {}
        for name, make in (("ours", ours), ("paddlenlp", paddlenlp_), ("hf-torch", hf)):
            prefill, decode = make(model_type, ids, a.steps)
            rows[name] = (timed(prefill, a.repeats) * 1e3, timed(decode, a.repeats) * 1e3 / a.steps)
        for name, (pf, dc) in rows.items():
            print(f"{model_type:6} {name:10} {pf:11.1f} {dc:14.2f} {pf / rows['ours'][0]:14.2f} {dc / rows['ours'][1]:13.2f}")


if __name__ == "__main__":
    os.environ.setdefault("GLOG_minloglevel", "2")
    main()

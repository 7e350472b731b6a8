"""How close to the memory-bandwidth ceiling can a decode step get with no framework at all?

A BLOOM decode step (layernorm, fused qkv, KV cache, ALiBi attention, GELU MLP, tied head) written in plain numpy,
float32, batch 1, random weights: every matmul is numpy's BLAS (the ceiling's own gemv), nothing else runs. Its
tok/s against the ceiling that benchmarks/decode.py uses bounds what any Python-level implementation can reach on
this machine (issue 4's "90 % of the ceiling" target). Not a model: no checkpoint, no correctness claim.

    python benchmarks/numpy_step.py [--shape bloom-560m|small] [--steps 64]
"""
import argparse
import time

import numpy as np

SHAPES = {"bloom-560m": (1024, 24, 16, 250880), "small": (512, 4, 8, 5000)}  # hidden, layers, heads, vocab


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", choices=SHAPES, default="bloom-560m")
    p.add_argument("--steps", type=int, default=64)
    a = p.parse_args()
    hidden, n_layer, n_head, vocab = SHAPES[a.shape]
    head_dim, length = hidden // n_head, 32 + a.steps
    rng = np.random.default_rng(0)

    def w(*shape):
        return rng.standard_normal(shape, dtype=np.float32) * 0.02

    layers = [dict(qkv=w(hidden, 3 * hidden), b_qkv=w(3 * hidden), dense=w(hidden, hidden), b_dense=w(hidden),
                   up=w(hidden, 4 * hidden), b_up=w(4 * hidden), down=w(4 * hidden, hidden), b_down=w(hidden),
                   k=np.zeros((n_head, length, head_dim), np.float32), v=np.zeros((n_head, length, head_dim), np.float32))
              for _ in range(n_layer)]
    embedding = w(vocab, hidden)
    slopes = (2.0 ** (-8.0 * np.arange(1, n_head + 1) / n_head)).astype(np.float32)

    def layer_norm(x):
        centered = x - x.mean()
        return centered / np.sqrt((centered * centered).mean() + 1e-5)  # weight 1, bias 0: same work either way

    def step(x, pos):
        bias = slopes[:, None] * np.arange(pos + 1, dtype=np.float32)
        for p in layers:
            qkv = (layer_norm(x) @ p["qkv"] + p["b_qkv"]).reshape(n_head, 3, head_dim)
            p["k"][:, pos], p["v"][:, pos] = qkv[:, 1], qkv[:, 2]
            scores = np.einsum("hd,htd->ht", qkv[:, 0], p["k"][:, : pos + 1]) * head_dim**-0.5 + bias
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            x = x + np.einsum("ht,htd->hd", probs, p["v"][:, : pos + 1]).reshape(hidden) @ p["dense"] + p["b_dense"]
            u = layer_norm(x) @ p["up"] + p["b_up"]
            u = u * 0.5 * (1 + np.tanh(0.79788456 * u * (1 + 0.044715 * u * u)))
            x = x + u @ p["down"] + p["b_down"]
        return embedding @ layer_norm(x)

    x = rng.standard_normal(hidden, dtype=np.float32)
    for pos in range(32):  # the prompt, one position at a time (it only fills the cache)
        step(x, pos)
    start = time.perf_counter()
    for pos in range(32, length):
        step(x, pos)
    seconds = (time.perf_counter() - start) / a.steps

    weight_bytes = embedding.nbytes + sum(p[k].nbytes for p in layers for k in ("qkv", "dense", "up", "down"))
    probe, xv = rng.standard_normal((1024, 131072), dtype=np.float32), rng.standard_normal(1024, dtype=np.float32)
    xv @ probe
    start = time.perf_counter()
    for _ in range(5):
        xv @ probe
    bandwidth = probe.nbytes * 5 / (time.perf_counter() - start)
    ceiling = bandwidth / weight_bytes
    print(f"{a.shape}: numpy decode step {seconds * 1e3:.1f} ms = {1 / seconds:.1f} tok/s; ceiling {ceiling:.1f} tok/s "
          f"(gemv {bandwidth / 1e9:.1f} GB/s, {weight_bytes / 1e6:.0f} MB/step) -> {1 / seconds / ceiling:.1%} of it")


if __name__ == "__main__":
    main()

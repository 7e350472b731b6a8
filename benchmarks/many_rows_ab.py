"""A/B in one process of the kernels' many-rows paths (cpu_matmul.cc: imany for int8 activations, the float
many-rows loops) against the 4-row tiles (PADDLE_BELLE_KERNELS_MANY_ROWS=1000000), step by step alternating, on
a checkpoint: a decoding step with --rows rows busy (continuous batching) and a --chunk-token prefill chunk of one
prompt (time to first token). Prints the median ms of each and their ratio. Nothing is asserted.

    PADDLE_BELLE_INT8_ACTIVATIONS=1 python benchmarks/many_rows_ab.py /tmp/serve-w/bloom-560m/int4 [--rows 16]
        [--chunk 128] [--steps 40] [--threads 2]
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from steps import Tokens  # noqa: E402

VARIANTS = {"many rows": None, "4-row tiles": "1000000"}


def variant(name):
    value = VARIANTS[name]
    if value is None:
        os.environ.pop("PADDLE_BELLE_KERNELS_MANY_ROWS", None)
    else:
        os.environ["PADDLE_BELLE_KERNELS_MANY_ROWS"] = value


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--steps", type=int, default=40, help="timed steps of each variant")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()

    from paddle_belle import AutoModelForCausalLM, generation
    from paddle_belle.batching import Batcher

    model = AutoModelForCausalLM.from_pretrained(a.model, threads=a.threads)
    rng = np.random.default_rng(0)
    # no EOS, so every row runs all its steps (as benchmarks/steps.py)
    config = generation.GenerationConfig(max_new_tokens=2 * a.steps + 8, eos_token_id=[], do_sample=False)
    times = {("decode", name): [] for name in VARIANTS} | {("prefill", name): [] for name in VARIANTS}

    # decoding steps: every row busy, the variants alternating step by step
    batcher = Batcher(model, Tokens(), rows=a.rows, chunk=a.chunk, columns=20 + 2 * a.steps + 8)
    for _ in range(a.rows):
        batcher.add(rng.integers(5, 5000, 20).tolist(), config)
    for _ in range(4):  # prefill and warm-up
        batcher.step()
    for i in range(2 * a.steps):
        name = list(VARIANTS)[i % 2]
        variant(name)
        t = time.perf_counter()
        batcher.step()
        times[("decode", name)].append(time.perf_counter() - t)

    # prefill: one prompt of 4 chunks, its chunks alternating between the variants
    for i in range(max(2, a.steps // 4)):
        batcher = Batcher(model, Tokens(), rows=1, chunk=a.chunk, columns=4 * a.chunk + 2)
        one = generation.GenerationConfig(max_new_tokens=1, eos_token_id=[])
        batcher.add(rng.integers(5, 5000, 4 * a.chunk).tolist(), one)
        for j in range(4):
            name = list(VARIANTS)[(i + j) % 2]
            variant(name)
            t = time.perf_counter()
            batcher.step()
            if i:  # the first prompt warms up
                times[("prefill", name)].append(time.perf_counter() - t)
    variant("many rows")

    print(f"{a.model}: {a.threads} threads, INT8_ACTIVATIONS={os.environ.get('PADDLE_BELLE_INT8_ACTIVATIONS', '0')}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print("| what | many rows (ms) | 4-row tiles (ms) | tiles / many |")
    print("|---|---|---|---|")
    for what, label in (("decode", f"decoding step, {a.rows} rows"), ("prefill", f"prefill chunk, {a.chunk} tokens")):
        new, old = (statistics.median(times[(what, name)]) * 1e3 for name in VARIANTS)
        print(f"| {label} | {new:.1f} | {old:.1f} | {old / new:.2f} |")


if __name__ == "__main__":
    main()

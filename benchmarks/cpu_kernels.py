"""Decode-shaped matmuls on CPU (M rows of x: 1 for one reply, up to 16 for a batched decoding step): Paddle's
float32 matmul, numpy's, the native kernels of paddle_belle/kernels (float32, bfloat16, int8, int4 with float32
activations, and int8, int4 with int8 activations: "x-int8"; from 5 rows int8, int4 also without the kernel's
many-rows path: "4-row", the A/B of cpu_matmul.cc's "many rows"; int4 also through
QuantLinear, plain and with GPTQ's act-order permutation, which it applies to x before the kernel) and QuantLinear's
pure-Paddle block-wise path (int8, int4; M = 1 only, it is slow).

    python benchmarks/cpu_kernels.py [--threads 2] [--m 1,4,8,16] [--repeats 30] [--rounds 3] [--head] [--methods ...]

Shapes: bloom-560m's Linears (K=1024 -> N=3072 query_key_value, N=4096 dense_h_to_4h; K=4096 -> N=1024
dense_4h_to_h) and bloom-7b's dense_h_to_4h (K=4096 -> N=16384); --head adds bloom-560m's tied head (K=1024 ->
N=250,880, 1 GB in float32). Prints the median ms per call, GB/s = bytes of weight read per call (codes + scales for
the integer formats, group 128) / time, the GB/s of the fastest call (the machine may be shared: the best call shows
what an idle one does), and GFLOP/s (2 M K N / time: what bounds M = 16). The methods take turns, round
after round, so that drift in the machine's speed spreads over all of them; each cell is the median of all rounds.
Before its turn each method waits 0.3 s, for the previous one's threads to stop spinning (numpy's BLAS threads
keep 2 cores busy well after their call returns).
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = [(1024, 3072), (1024, 4096), (4096, 1024), (4096, 16384)]
GROUP = 128


def tiles_only(call):
    """``call`` with the quantized kernels' many-rows path off (PADDLE_BELLE_KERNELS_MANY_ROWS: cpu_matmul.cc)."""
    def run():
        os.environ["PADDLE_BELLE_KERNELS_MANY_ROWS"] = "1000000"
        try:
            return call()
        finally:
            del os.environ["PADDLE_BELLE_KERNELS_MANY_ROWS"]
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--m", default="1", help="rows of x, comma-separated (1: one decoded token)")
    parser.add_argument("--head", action="store_true", help="also bloom-560m's tied head, 1024 -> 250,880")
    parser.add_argument("--repeats", type=int, default=30, help="calls per method per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default="", help="only methods whose name contains one of these "
                        "comma-separated strings (e.g. 'kernel int' for the A/B of float vs int8 activations)")
    args = parser.parse_args()

    import paddle_belle  # noqa: F401  (before paddle: MKL's fast path on AMD, as the CLI does)
    import paddle
    import threadpoolctl

    from paddle_belle import kernels
    from paddle_belle.quant import QuantConfig, QuantLinear

    paddle.base.core.set_num_threads(args.threads)
    threadpoolctl.threadpool_limits(args.threads, user_api="blas")
    t0 = time.perf_counter()
    ops = kernels.cpu_kernels()
    print(f"kernels: {'loaded' if ops else 'UNAVAILABLE'} in {time.perf_counter() - t0:.1f} s; "
          f"threads {args.threads}, M={args.m}, MKL_DEBUG_CPU_TYPE={os.environ.get('MKL_DEBUG_CPU_TYPE')}")
    rng = np.random.RandomState(0)
    rows = []
    for (k, n), m in itertools.product(SHAPES + [(1024, 250880)] * args.head, [int(v) for v in args.m.split(",")]):
        x_np = rng.standard_normal((m, k)).astype(np.float32)
        x = paddle.to_tensor(x_np)
        w_np = (rng.standard_normal((k, n)) * 0.02).astype(np.float32)
        w = paddle.to_tensor(w_np)
        w_bf16 = w.astype("bfloat16")
        layers = {}
        for bits in (8, 4):
            config = QuantConfig(bits=bits, group_size=GROUP, method="rtn")
            codes = rng.randint(0, 1 << bits, (k, n)).astype(np.uint8)
            scales = rng.uniform(0.001, 0.01, (k // GROUP, n)).astype(np.float32)
            layers[bits] = QuantLinear.from_codes(codes, scales, None, config)
        # GPTQ's act-order: the same codes with a random row permutation, which the layer applies to x per call.
        act_order = QuantConfig(bits=4, group_size=GROUP, act_order=True)
        layers["4 act-order"] = QuantLinear.from_codes(codes, scales, None, act_order, perm=rng.permutation(k))

        def quant(layer, int8_x=False):
            return kernels.quant_matmul(x, layer.qweight, layer.scales, None, layer.config.bits, layer.group_size,
                                        int8_x=int8_x)

        def quant_bytes(bits):
            return k * n * bits // 8 + (k // GROUP) * n * 4

        methods = [  # name, call, bytes of weight read
            ("paddle fp32", lambda: paddle.matmul(x, w), k * n * 4),
            ("numpy fp32", lambda: x_np @ w_np, k * n * 4),
        ]
        if ops:
            methods += [
                ("kernel fp32", lambda: kernels.dense_matmul(x, w), k * n * 4),
                ("kernel bf16", lambda: kernels.dense_matmul(x, w_bf16), k * n * 2),
                ("kernel int8", lambda: quant(layers[8]), quant_bytes(8)),
                ("kernel int8 x-int8", lambda: quant(layers[8], True), quant_bytes(8)),
                ("kernel int4", lambda: quant(layers[4]), quant_bytes(4)),
                ("kernel int4 x-int8", lambda: quant(layers[4], True), quant_bytes(4)),
                ("layer int4", lambda: layers[4](x), quant_bytes(4)),  # QuantLinear.forward around the kernel
                ("layer int4 act-ord", lambda: layers["4 act-order"](x), quant_bytes(4)),
            ]
        if ops and m >= 5:  # the same calls without the kernel's many-rows path: its A/B in this process
            methods += [(name + " 4-row", tiles_only(call), nbytes) for name, call, nbytes in methods
                        if name in ("kernel int8", "kernel int4")]
        if m == 1:
            methods += [
                ("blockwise int8", lambda: layers[8]._blockwise_forward(x), quant_bytes(8)),
                ("blockwise int4", lambda: layers[4]._blockwise_forward(x), quant_bytes(4)),
            ]
        if args.methods:
            methods = [method for method in methods if any(part in method[0] for part in args.methods.split(","))]
        times = {name: [] for name, _, _ in methods}
        with paddle.no_grad():
            for _ in range(args.rounds):
                for name, call, _ in methods:
                    repeats = max(3, args.repeats // 10) if name.startswith("blockwise") else args.repeats
                    # Let the previous method's thread pool go idle first: numpy's BLAS threads spin for a while after
                    # a call, and on a 2-core machine they take the cores from the next method's threads.
                    time.sleep(0.3)
                    call()  # warm (wakes this method's threads)
                    for _ in range(repeats):
                        start = time.perf_counter()
                        call()
                        times[name].append(time.perf_counter() - start)
        for name, _, nbytes in methods:
            seconds, best = float(np.median(times[name])), float(np.min(times[name]))
            rows.append((f"{k}x{n}", m, name, seconds * 1e3, nbytes / seconds / 1e9, nbytes / best / 1e9,
                         2 * m * k * n / seconds / 1e9))

    print(f"\n{'shape KxN':<12} {'M':>3} {'method':<18} {'ms':>9} {'GB/s':>7} {'best GB/s':>10} {'GFLOP/s':>8}")
    for shape, m, name, ms, gbs, best, flops in rows:
        print(f"{shape:<12} {m:>3} {name:<18} {ms:9.3f} {gbs:7.1f} {best:10.1f} {flops:8.1f}")


if __name__ == "__main__":
    main()

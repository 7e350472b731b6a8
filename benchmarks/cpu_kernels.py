"""Decode-shaped matmuls on CPU (M rows of x: 1 for one reply, up to 16 for a batched decoding step): Paddle's
float32 matmul, numpy's, the native kernels of paddle_belle/kernels (float32, bfloat16, int8, int4 with float32
activations, and int8, int4 with int8 activations: "x-int8"; from 5 rows int8, int4 and their x-int8 also without the
kernel's many-rows paths: "4-row", the A/B of cpu_matmul.cc's "many rows"; int4 also through
QuantLinear, plain and with GPTQ's act-order permutation, which it applies to x before the kernel) and QuantLinear's
pure-Paddle block-wise path (int8, int4; M = 1 only, it is slow). The "kernel" rows read packed codes in the
checkpoint's order, the "layer" rows (QuantLinear) in the kernels' tile order (cpu_matmul.cc, Tiles): "kernel int4"
against "layer int4" is that order's A/B.

    python benchmarks/cpu_kernels.py [--threads 2] [--m 1,4,8,16] [--repeats 30] [--rounds 3] [--head [1024,4096]]
        [--methods ...]

Shapes: bloom-560m's Linears (K=1024 -> N=3072 query_key_value, N=4096 dense_h_to_4h; K=4096 -> N=1024
dense_4h_to_h) and bloom-7b's dense_h_to_4h (K=4096 -> N=16384); --head adds the tied heads x @ E^T with E
[250,880, K] as stored (cpu.tied_head): bloom-560m's (K=1024, 1 GB in float32) and, with --head 1024,4096,
belle-7b-2m's (K=4096, 4.1 GB in float32 + 2 GB in bfloat16 resident for the run); their methods are numpy's and
Paddle's float32 products and the native rows_matmul (float32, bfloat16; from 5 rows also without its many-rows
loop: "dots-off") and the int8 token table E^T [K, 250,880] of a quantized checkpoint through the quant kernel,
float and int8 x ("kernel int8 table"). Each method rotates over copies of its
weight that together exceed the L3 cache (--cold-mib), so that every call reads its weight from memory, as a decoding
step does. Prints the median ms per call, GB/s = bytes of weight read per call (codes + scales for
the integer formats, group 128) / time, the GB/s of the fastest call (the machine may be shared: the best call shows
what an idle one does), and GFLOP/s (2 M K N / time: what bounds M = 16), and first a large-read bandwidth to hold
them against (cpu_formats.py's ceiling: numpy's float32 gemv over 512 MiB, best of 5, before and after). The methods
take turns, round after round, so that drift in the machine's speed spreads over all of them; each cell is the
median of all rounds.
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
HEAD_ROWS = 250880  # BLOOM's vocabulary: the rows of its tied embedding
GROUP = 128


def tiles_only(call):
    """``call`` with the kernels' many-rows paths off (PADDLE_BELLE_KERNELS_MANY_ROWS: cpu_matmul.cc)."""
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
    parser.add_argument("--head", nargs="?", const="1024", default="",
                        help="also the tied heads 250,880 x K for these K (comma-separated; bare --head: 1024)")
    parser.add_argument("--cold-mib", type=int, default=256,
                        help="each method rotates over copies of its weight totalling at least this many MiB")
    parser.add_argument("--repeats", type=int, default=30, help="calls per method per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--methods", default="", help="only methods whose name contains one of these "
                        "comma-separated strings (e.g. 'kernel int' for the A/B of float vs int8 activations)")
    args = parser.parse_args()

    import paddle_belle  # noqa: F401  (before paddle: MKL's fast path on AMD, as the CLI does)
    import paddle
    import threadpoolctl

    from paddle_belle import kernels

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cpu_formats import gemv_bandwidth

    paddle.base.core.set_num_threads(args.threads)
    threadpoolctl.threadpool_limits(args.threads, user_api="blas")
    t0 = time.perf_counter()
    ops = kernels.cpu_kernels()
    print(f"kernels: {'loaded' if ops else 'UNAVAILABLE'} in {time.perf_counter() - t0:.1f} s; "
          f"threads {args.threads}, M={args.m}, MKL_DEBUG_CPU_TYPE={os.environ.get('MKL_DEBUG_CPU_TYPE')}")
    bandwidth = [gemv_bandwidth(args.threads)]
    rng = np.random.RandomState(0)
    cases = [(k, n, False) for k, n in SHAPES] + [(int(k), HEAD_ROWS, True) for k in args.head.split(",") if k]
    rows = []
    for (k, n, head), m in itertools.product(cases, [int(v) for v in args.m.split(",")]):
        x_np = rng.standard_normal((m, k)).astype(np.float32)
        x = paddle.to_tensor(x_np)
        methods = head_methods(x, k, n, ops) if head else linear_methods(x, k, n, m, ops, rng, args.cold_mib)
        if args.methods:
            methods = [method for method in methods if any(part in method[0] for part in args.methods.split(","))]
        times = {name: [] for name, _, _ in methods}
        with paddle.no_grad():
            for _ in range(args.rounds):
                for name, calls, _ in methods:
                    repeats = max(3, args.repeats // 10) if name.startswith("blockwise") or head else args.repeats
                    # Let the previous method's thread pool go idle first: numpy's BLAS threads spin for a while after
                    # a call, and on a 2-core machine they take the cores from the next method's threads.
                    time.sleep(0.3)
                    calls[-1]()  # warm (wakes this method's threads)
                    for i in range(repeats):
                        call = calls[i % len(calls)]
                        start = time.perf_counter()
                        call()
                        times[name].append(time.perf_counter() - start)
        for name, _, nbytes in methods:
            seconds, best = float(np.median(times[name])), float(np.min(times[name]))
            rows.append((f"{n}x{k} E" if head else f"{k}x{n}", m, name, seconds * 1e3, nbytes / seconds / 1e9,
                         nbytes / best / 1e9, 2 * m * k * n / seconds / 1e9))
        del methods
    bandwidth.append(gemv_bandwidth(args.threads))

    print(f"\nlarge read (numpy float32 gemv, 512 MiB, best of 5): {bandwidth[0]:.1f} GB/s before, "
          f"{bandwidth[1]:.1f} GB/s after")
    print(f"\n{'shape':<14} {'M':>3} {'method':<30} {'ms':>9} {'GB/s':>7} {'best GB/s':>10} {'GFLOP/s':>8}")
    for shape, m, name, ms, gbs, best, flops in rows:
        print(f"{shape:<14} {m:>3} {name:<30} {ms:9.3f} {gbs:7.1f} {best:10.1f} {flops:8.1f}")


def linear_methods(x, k, n, m, ops, rng, cold_mib):
    """(name, calls over the copies, bytes of weight read per call) for a Linear K -> N."""
    import paddle

    from paddle_belle import kernels
    from paddle_belle.quant import QuantConfig, QuantLinear

    copies = max(1, -(-(cold_mib << 20) // (k * n * 2)))  # copies of the bfloat16 weight fill cold_mib
    x_np = x.numpy()
    w_np = [(rng.standard_normal((k, n)) * 0.02).astype(np.float32) for _ in range(copies)]
    w = [paddle.to_tensor(v) for v in w_np]
    w_bf16 = [v.astype("bfloat16") for v in w]
    layers = {8: [], 4: [], "4 layer": [], "4 act-order": []}
    for _ in range(copies):
        for bits in (8, 4):
            config = QuantConfig(bits=bits, group_size=GROUP, method="rtn")
            codes = rng.randint(0, 1 << bits, (k, n)).astype(np.uint8)
            scales = rng.uniform(0.001, 0.01, (k // GROUP, n)).astype(np.float32)
            layers[bits].append(QuantLinear.from_codes(codes, scales, None, config))
        # Layers of their own for QuantLinear.forward, which keeps its codes in tile order: the "kernel" rows read
        # layer.qweight, which would put them back in the checkpoint's order at every call.
        layers["4 layer"].append(QuantLinear.from_codes(codes, scales, None, config))
        # GPTQ's act-order: the same codes with a random row permutation, which the layer applies to x per call.
        act_order = QuantConfig(bits=4, group_size=GROUP, act_order=True)
        layers["4 act-order"].append(QuantLinear.from_codes(codes, scales, None, act_order, perm=rng.permutation(k)))

    def each(fn, items):
        return [lambda item=item: fn(item) for item in items]

    def quant(layer, int8_x=False):
        return kernels.quant_matmul(x, layer.qweight, layer.scales, None, layer.config.bits, layer.group_size,
                                    int8_x=int8_x)

    def quant_bytes(bits):
        return k * n * bits // 8 + (k // GROUP) * n * 4

    methods = [  # name, calls (one per copy), bytes of weight read
        ("paddle fp32", each(lambda v: paddle.matmul(x, v), w), k * n * 4),
        ("numpy fp32", each(lambda v: x_np @ v, w_np), k * n * 4),
    ]
    if ops:
        methods += [
            ("kernel fp32", each(lambda v: kernels.dense_matmul(x, v), w), k * n * 4),
            ("kernel bf16", each(lambda v: kernels.dense_matmul(x, v), w_bf16), k * n * 2),
            ("kernel int8", each(quant, layers[8]), quant_bytes(8)),
            ("kernel int8 x-int8", each(lambda v: quant(v, True), layers[8]), quant_bytes(8)),
            ("kernel int4", each(quant, layers[4]), quant_bytes(4)),
            ("kernel int4 x-int8", each(lambda v: quant(v, True), layers[4]), quant_bytes(4)),
            ("layer int4", each(lambda v: v(x), layers["4 layer"]), quant_bytes(4)),  # QuantLinear.forward
            ("layer int4 act-ord", each(lambda v: v(x), layers["4 act-order"]), quant_bytes(4)),
        ]
    if ops and m >= 5:  # the same calls without the kernel's many-rows paths: their A/B in this process
        methods += [(name + " 4-row", [tiles_only(call) for call in calls], nbytes) for name, calls, nbytes in methods
                    if name in ("kernel fp32", "kernel bf16", "kernel int8", "kernel int4") or name.endswith("x-int8")]
    if m == 1:
        methods += [
            ("blockwise int8", each(lambda v: v._blockwise_forward(x), layers[8]), quant_bytes(8)),
            ("blockwise int4", each(lambda v: v._blockwise_forward(x), layers[4]), quant_bytes(4)),
        ]
    return methods


def head_methods(x, k, n, ops):
    """The tied head x @ E^T, E [n, k] as stored: float32 (written a block of rows at a time: a float64 draw of the
    whole would double the memory) and its bfloat16 copy, one each (each far beyond the L3 cache)."""
    import paddle

    from paddle_belle import kernels

    rng = np.random.default_rng(k)
    e = paddle.empty([n, k], "float32")
    for r in range(0, n, 16384):
        e[r : r + 16384] = paddle.to_tensor(rng.standard_normal((min(16384, n - r), k), np.float32) * 0.02)
    e_np, x_np = np.from_dlpack(e), x.numpy()
    methods = [
        ("numpy fp32", [lambda: x_np @ e_np.T], n * k * 4),
        ("paddle fp32", [lambda: paddle.matmul(x, e, transpose_y=True)], n * k * 4),
    ]
    if ops:
        e_bf16 = e.astype("bfloat16")
        methods += [
            ("kernel rows fp32", [lambda: kernels.rows_matmul(x, e)], n * k * 4),
            ("kernel rows bf16", [lambda: kernels.rows_matmul(x, e_bf16)], n * k * 2),
        ]
        # The int8 token table of a quantized checkpoint (--embedding int8, the default): QuantEmbedding.logits,
        # codes E^T [k, n], one scale per token, through the quant kernel with float x and with int8 x.
        codes = paddle.to_tensor(rng.integers(0, 256, (k, n), np.uint8))
        scales = paddle.to_tensor(rng.uniform(0.001, 0.01, (1, n)).astype(np.float32))
        table = lambda int8_x: kernels.quant_matmul(x, codes, scales, None, 8, k, int8_x=int8_x)  # noqa: E731
        methods += [
            ("kernel int8 table", [lambda: table(False)], k * n + n * 4),
            ("kernel int8 table x-int8", [lambda: table(True)], k * n + n * 4),
        ]
    if ops and x.shape[0] >= 5:  # the same calls without the many-rows loops (cpu_matmul.cc dots, imany): their A/B
        methods += [(name + (" dots-off" if name.startswith("kernel rows") else " 4-row"),
                     [tiles_only(call) for call in calls], nbytes)
                    for name, calls, nbytes in methods if name.startswith("kernel")]
    return methods


if __name__ == "__main__":
    main()

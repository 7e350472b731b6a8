"""CPU tuning: Intel MKL's fast path on AMD CPUs, thread counts, and the tied LM head through the native kernel.

``paddle_belle/__init__`` imports this module before anything imports Paddle (MKL reads its switch when it loads),
so Paddle (and numpy, which `paddle-belle --version` need not pay for) is imported inside the functions.
"""
from __future__ import annotations

import math
import os
import sys

NUMPY_HEAD_MIN = 1 << 23  # elements (32 MB in float32): beyond any CPU cache
KERNEL_HEAD_ROWS = 16  # 1 to this many rows of a float32 tied head (a decoding step) take the native kernel


def fast_mkl_on_amd() -> None:
    """Paddle's CPU wheel computes with Intel MKL, which on AMD CPUs takes a generic path unless
    MKL_DEBUG_CPU_TYPE=5 selects its AVX2 kernels: measured on an AMD EPYC, fp32 gemv 26 -> 35 GB/s and BLOOM-560m
    decode +37%. MKL reads the variable when it loads, so this only helps if paddle_belle is imported before
    paddle (the CLI always is). Only on AMD CPUs that have AVX2, and never over the user's own setting."""
    if "MKL_DEBUG_CPU_TYPE" in os.environ or "paddle" in sys.modules:
        return
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            first_cpu = f.read(16384).split("\n\n", 1)[0]
    except OSError:
        return
    if "AuthenticAMD" in first_cpu and " avx2" in first_cpu:
        os.environ["MKL_DEBUG_CPU_TYPE"] = "5"


_threads = None  # what set_cpu_threads chose: use_cpu_threads_here gives it to other threads
_set_threads = None  # paddle.base.core.set_num_threads, once set_cpu_threads has imported Paddle
# Work of at most this many elements takes one thread (serial): 16 decoding rows of 4096, 64 of 1024.
SERIAL_ELEMENTS = 1 << 16


def set_cpu_threads(n: int | None = None) -> int:
    """Use ``n`` threads (default: every core this process may run on) for Paddle's CPU kernels: Paddle sets
    OMP_NUM_THREADS=1 at import unless told, which leaves all but one core idle. numpy's BLAS, which computes
    the large tied heads (tied_head), gets the same count: left alone it would take every core."""
    import paddle
    import threadpoolctl

    global _threads, _set_threads
    n = n or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    _set_threads = paddle.base.core.set_num_threads
    _set_threads(n)
    threadpoolctl.threadpool_limits(n, user_api="blas")
    _threads = n
    return n


def use_cpu_threads_here() -> None:
    """Give the calling thread the count set_cpu_threads chose. Paddle's own CPU kernels (layer norm, softmax, GELU,
    adds: OpenMP in libiomp5) take the calling thread's count, and omp_set_num_threads sets it for the calling
    thread only: any other thread starts from OMP_NUM_THREADS, which Paddle sets to 1. So a thread that runs the
    model (the server's) calls this first; without it, 16-row decoding steps of bloom-560m on the server's model
    thread cost 0.44-0.48 CPU s of that thread a step against 0.26-0.30 on the loading thread (the rest on one
    core while the other waited)."""
    import paddle

    if _threads:
        paddle.base.core.set_num_threads(_threads)


def serial(elements: int, op, *args):
    """``op(*args)``, on one OpenMP thread when it works on at most SERIAL_ELEMENTS ``elements`` and set_cpu_threads
    gave Paddle more. Paddle 3.3.1's CPU layer norm, fused RMS norm and embedding lookup use every thread whatever
    the size (their time on one row depends on the thread count; add, softmax and a row's GELU do not): for a
    decoding row the parallel region costs more than the work, and on a machine whose other cores are busy the
    calling thread waits for its helper to be scheduled. On 2 cores beside
    other jobs (load 3), one row: layer norm of 1024 81 -> 7 us, RMS norm of 576 62 -> 5, an embedding row 49 -> 2;
    bloom-560m int4 decoding, the step's 50 layer norms 4.8 -> 1.2 ms (alternating in one process). Our kernels and
    Paddle's matmuls keep every thread. (omp_set_num_threads is per thread, as is this switch.)"""
    if _threads is None or _threads == 1 or elements > SERIAL_ELEMENTS:
        return op(*args)
    _set_threads(1)
    try:
        return op(*args)
    finally:
        _set_threads(_threads)


def tied_head(x, embedding):
    """Logits ``x @ embedding^T`` for a head tied to the [vocab, hidden] input embedding.

    In inference on CPU, for a decoding step's rows (1 to KERNEL_HEAD_ROWS), the native kernel reads the embedding as
    stored, once for all the rows: this is the largest matrix of a decode step (1 GB for bloom-560m in float32, 4 GB
    for belle-7b-2m; ~45% of bloom-560m's bytes per token), and Paddle 3.3.1's CPU matmul streams it at ~16-28 GB/s
    where the kernel reads ~26 (one row, benchmarks/cpu_kernels.py --head). numpy's BLAS reads it about as fast
    (25), but its OpenBLAS threads spin on after the call and take the cores from the next step's Paddle ops: bloom-560m
    float32 decoding, one process, alternating, 9.2 tok/s with numpy's head, 13.1 with the kernel's. Without the
    kernels, one row goes through numpy's BLAS on a zero-copy view of the embedding. Many rows (a prompt's logits),
    gradients needed, or any other device: a Paddle matmul.
    """
    import numpy as np
    import paddle

    from paddle_belle import kernels

    if embedding.dtype in (paddle.bfloat16, paddle.float16):  # CPU half weights (quant/linear.py keep_half)
        if kernels.usable(x):
            return kernels.rows_matmul(x, embedding)
        from paddle_belle.quant.linear import BLOCK_ELEMENTS

        rows = max(1, BLOCK_ELEMENTS // embedding.shape[1])  # else a block of rows widened at a time
        return paddle.concat([paddle.matmul(x, embedding[r : r + rows].astype(x.dtype), transpose_y=True)
                              for r in range(0, embedding.shape[0], rows)], axis=-1)
    # (not Tensor.size: Paddle's takes numpy's prod, 8 us a call)
    large = math.prod(embedding.shape) >= NUMPY_HEAD_MIN  # a small head is overhead-bound, not bandwidth-bound
    rows = math.prod(x.shape[:-1])
    if large and x.place.is_cpu_place() and x.dtype == paddle.float32 and (
            not paddle.is_grad_enabled() or x.stop_gradient and embedding.stop_gradient):
        # A decoding batch's rows: numpy's OpenBLAS computes a few rows at nearly a pass over the head each, where the
        # native kernel reads it once for them (bloom-560m's head, 1 thread, CPU s: 4 rows 0.25 vs 0.06, 16 rows
        # 0.31 vs 0.25). More rows (a prompt's logits): Paddle's matmul, faster than OpenBLAS (0.3.23, Cooperlake
        # kernels) at several rows (one Zen 4 core of a busy machine: 4 rows 255 ms, 16 rows 310 ms; Paddle 141 / 202)
        if rows <= KERNEL_HEAD_ROWS and kernels.usable(x):
            return kernels.rows_matmul(x, embedding)
        if rows == 1:
            logits = x.reshape([1, -1]).numpy() @ np.from_dlpack(embedding.detach()).T
            return paddle.to_tensor(logits.reshape(x.shape[:-1] + [-1]))
    return paddle.matmul(x, embedding, transpose_y=True)

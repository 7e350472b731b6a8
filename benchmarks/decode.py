"""Greedy decode throughput: our generate() vs PaddleNLP 2.8.1's vs HF transformers', against the memory ceiling.

Same random weights in all three (written once, converted for HF), CPU fp32, batch 1, each framework in its own
process. Every run generates exactly --new tokens (min_new_tokens masks EOS). tok/s = new tokens / time of the whole
generate call, prefill of the prompt included; "decode" subtracts a 1-token generate (the prefill) and counts the
remaining steps only. The ceiling is memory bandwidth (a large fp32 gemv) / the bytes one decode step must read
(every weight once; an untied input embedding is not read, only one row of it).

Shared CPUs drift (fast and slow spells of tens of percent), so the frameworks take turns: each round runs the
bandwidth probe and then every framework once (load, warm-up, timed runs), and the table shows medians over rounds.

    python benchmarks/decode.py [--shapes bloom-560m,tinyllama-1.1b,small,belle-tiny-zh] [--prompt 32] [--new 128]
                                [--rounds 3] [--threads 2] [--workdir /tmp/decode-bench] [--keep]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name: (model type, our config, targets: {"ceiling": least fraction of the ceiling, impl: least ours/impl tok/s})
SHAPES = {
    "bloom-560m": ("bloom", dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16),
                   {"ceiling": 0.90, "hf": 1.05}),
    "tinyllama-1.1b": ("llama", dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                                     num_attention_heads=32, num_key_value_heads=4),
                       {"ceiling": 0.90, "hf": 1.05}),
    "small": ("bloom", dict(vocab_size=5000, hidden_size=512, n_layer=4, n_head=8), {"hf": 1.0, "paddlenlp": 1.5}),
    # the bundled model's shape (paddle_belle/assets/belle-tiny-zh): a step of it is nearly all per-op overhead
    "belle-tiny-zh": ("bloom", dict(vocab_size=6000, hidden_size=256, n_layer=4, n_head=8), {"hf": 1.0, "paddlenlp": 1.5}),
}
IMPLS = ("ours", "paddlenlp", "hf")
GEMV_K, GEMV_N = 1024, 131072  # bandwidth probe: x[1, K] @ W[K, N], W = 512 MiB (far beyond any cache)


def seconds(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# ------------------------------------------------------------------------------------- workers (own process)
def make_checkpoint(shape, workdir):
    """Random weights (std 0.02) saved in PaddleNLP's layout, plus the HF conversion; returns bytes per step."""
    import paddle
    from paddle_belle import BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM
    from paddle_belle.convert import convert

    model_type, config, _ = SHAPES[shape]
    paddle.seed(0)
    if model_type == "bloom":
        model = BloomForCausalLM(BloomConfig(**config, initializer_range=0.02))
    else:
        model = LlamaForCausalLM(LlamaConfig(**config, initializer_range=0.02))
    model.save_pretrained(workdir / shape / "paddle", safe_serialization=False)
    convert(workdir / shape / "paddle", workdir / shape / "hf", to="hf")
    params = {name: p.numel().item() for name, p in model.named_parameters()}
    # BLOOM's tied embedding is read whole by the head, so it counts (once); LLaMA's own embedding is not read.
    unread = params.get("llama.embed_tokens.weight", 0) if model_type == "llama" else 0
    return {"weight_bytes": 4 * (sum(params.values()) - unread)}


def gemv_bandwidth():
    """GB/s of x[1, K] @ W[K, N] in numpy, Paddle and torch: the best is the machine's ceiling, Paddle's is what
    our model's matmuls can reach at most."""
    import numpy as np
    import paddle
    import torch

    rng = np.random.default_rng(0)
    w, x = rng.standard_normal((GEMV_K, GEMV_N), dtype=np.float32), rng.standard_normal((1, GEMV_K), dtype=np.float32)
    pw, px, tw, tx = paddle.to_tensor(w), paddle.to_tensor(x), torch.from_numpy(w), torch.from_numpy(x)
    probes = {"numpy": lambda: x @ w, "paddle": lambda: paddle.matmul(px, pw).numpy(), "torch": lambda: tx @ tw}
    result = {}
    for name, fn in probes.items():
        fn()  # warm-up
        result[name] = w.nbytes / statistics.median(seconds(fn) for _ in range(5)) / 1e9
    return result


def load_generate(impl, shape, workdir, prompt):
    """A function generating ``n`` tokens greedily from a fixed prompt with ``impl``'s model; it returns them."""
    import numpy as np

    model_type, config, _ = SHAPES[shape]
    ids = np.random.default_rng(0).integers(5, config["vocab_size"], (1, prompt))
    if impl == "hf":
        import torch
        import transformers

        model = transformers.AutoModelForCausalLM.from_pretrained(workdir / shape / "hf", torch_dtype=torch.float32)
        x, mask = torch.tensor(ids), torch.ones(ids.shape, dtype=torch.int64)

        def generate(n):
            with torch.no_grad():
                out = model.generate(x, attention_mask=mask, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                     pad_token_id=0)
            return out[0, prompt:].tolist()
        return generate

    import paddle
    x, mask = paddle.to_tensor(ids), paddle.ones(ids.shape, dtype="int64")
    if impl == "paddlenlp":
        import paddlenlp.transformers as pnlp

        cls = pnlp.BloomForCausalLM if model_type == "bloom" else pnlp.LlamaForCausalLM
        model = cls.from_pretrained(workdir / shape / "paddle", dtype="float32").eval()

        def generate(n):
            with paddle.no_grad():
                out, _ = model.generate(input_ids=x, attention_mask=mask, decode_strategy="greedy_search",
                                        max_length=n, min_length=n, use_cache=True)
            return out[0].tolist()
        return generate

    from paddle_belle import BloomForCausalLM, LlamaForCausalLM

    cls = BloomForCausalLM if model_type == "bloom" else LlamaForCausalLM
    model = cls.from_pretrained(workdir / shape / "paddle", dtype="float32")

    def generate(n):
        out = model.generate(x, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return out[0, prompt:].tolist()
    return generate


def time_generate(impl, shape, workdir, prompt, new):
    generate = load_generate(impl, shape, workdir, prompt)
    tokens = generate(new)  # also the warm-up: first-call allocations, kernel selection
    full, prefill = seconds(lambda: generate(new)), seconds(lambda: generate(1))
    if len(tokens) != new or len(generate(1)) != 1:
        raise RuntimeError(f"{impl} generated {len(tokens)} tokens, not {new}")
    return {"full_s": full, "prefill_s": prefill, "tokens": tokens}


def worker(a):
    if a.worker in ("ours", "make", "bandwidth"):
        # First, as a user's `import paddle_belle` would be: it may set up the libraries before paddle loads them
        # (MKL_DEBUG_CPU_TYPE=5 on AMD). PaddleNLP and HF run as installed.
        import paddle_belle  # noqa: F401
    if a.worker != "hf":
        import paddle

        paddle.base.core.set_num_threads(a.threads)  # Paddle uses one thread unless told
    if a.worker in ("hf", "bandwidth"):
        import torch

        torch.set_num_threads(a.threads)
    if a.worker == "make":
        result = make_checkpoint(a.shape, a.workdir)
    elif a.worker == "bandwidth":
        result = gemv_bandwidth()
    else:
        result = time_generate(a.worker, a.shape, a.workdir, a.prompt, a.new)
        result["mkl_env"] = os.environ.get("MKL_DEBUG_CPU_TYPE")
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------- driver
def run_worker(a, kind, shape=""):
    """One worker process; thread counts are fixed in its environment before numpy/MKL/OpenMP start."""
    n = str(a.threads)
    env = {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "OPENBLAS_NUM_THREADS": n,
           "GLOG_minloglevel": "2"}
    cmd = [sys.executable, __file__, "--worker", kind, "--shape", shape, "--workdir", str(a.workdir),
           "--prompt", str(a.prompt), "--new", str(a.new), "--threads", n]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.exit(f"worker {kind} {shape} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, of: {', '.join(SHAPES)}")
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3, help="turns of every framework; the table shows medians")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/decode-bench"))
    p.add_argument("--keep", action="store_true", help="keep the checkpoints in --workdir")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    shapes = a.shapes.split(",")
    unknown = sorted(set(shapes) - set(SHAPES))
    if unknown:
        p.error(f"unknown shape(s): {', '.join(unknown)}")

    print(f"CPU fp32, {a.threads} threads, batch 1, prompt {a.prompt}, {a.new} new tokens (greedy), "
          f"median of {a.rounds} rounds. tok/s: the whole generate call, prefill included; decode: the steps after "
          "the first token")
    print("ceiling: bandwidth of a fp32 gemv [1,1024]@[1024,131072] (best of numpy, Paddle as paddle_belle sets it "
          "up, torch) / bytes per step; %paddle: of the ceiling at Paddle's gemv speed; =ours: leading tokens equal "
          "to ours (same weights)")
    try:
        for shape in shapes:
            a.workdir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(a.workdir / shape, ignore_errors=True)
            weight_bytes = run_worker(a, "make", shape)["weight_bytes"]
            runs = {name: [] for name in ("bandwidth",) + IMPLS}
            for _ in range(a.rounds):
                for name in runs:
                    runs[name].append(run_worker(a, name, "" if name == "bandwidth" else shape))
            report(a, shape, weight_bytes, runs)
    finally:
        if not a.keep:
            for shape in shapes:
                shutil.rmtree(a.workdir / shape, ignore_errors=True)
            if a.workdir.is_dir() and not any(a.workdir.iterdir()):
                a.workdir.rmdir()


def report(a, shape, weight_bytes, runs):
    median = statistics.median
    bw = {lib: median(r[lib] for r in runs["bandwidth"]) for lib in runs["bandwidth"][0]}
    ceiling, paddle_ceiling = max(bw.values()) * 1e9 / weight_bytes, bw["paddle"] * 1e9 / weight_bytes
    rows = {}
    for impl in IMPLS:
        full, prefill = median(r["full_s"] for r in runs[impl]), median(r["prefill_s"] for r in runs[impl])
        rows[impl] = dict(tok_s=a.new / full, decode=(a.new - 1) / (full - prefill), prefill=prefill,
                          tokens=runs[impl][0]["tokens"], mkl_env=runs[impl][0]["mkl_env"])
    targets = SHAPES[shape][2]
    print(f"\n{shape}: {weight_bytes / 1e6:.0f} MB/step; gemv " + ", ".join(f"{k} {v:.1f}" for k, v in bw.items())
          + f" GB/s -> ceiling {ceiling:.1f} tok/s (at Paddle's gemv speed {paddle_ceiling:.1f})")
    print(f"  {'impl':10} {'tok/s':>7} {'decode':>7} {'prefill s':>9} {'%ceil':>6} {'%paddle':>7} {'ours/x':>7} "
          f"{'=ours':>5}  target")
    for impl, r in rows.items():
        ratio = rows["ours"]["tok_s"] / r["tok_s"]
        # greedy tokens equal to ours, from the start: a check that all three run the same weights
        same = next((i for i, (t, u) in enumerate(zip(r["tokens"], rows["ours"]["tokens"])) if t != u), a.new)
        if impl == "ours" and "ceiling" in targets:
            want, got = targets["ceiling"], r["tok_s"] / ceiling
            target = f">= {want:.0%} of ceiling: {'met' if got >= want else 'MISSED'}"
        elif impl in targets:
            target = f"ours/{impl} >= {targets[impl]:.2f}x: {'met' if ratio >= targets[impl] else 'MISSED'}"
        else:
            target = ""
        if r["mkl_env"]:
            target += f" [MKL_DEBUG_CPU_TYPE={r['mkl_env']}]"
        print(f"  {impl:10} {r['tok_s']:7.1f} {r['decode']:7.1f} {r['prefill']:9.3f} {100 * r['tok_s'] / ceiling:6.1f} "
              f"{100 * r['tok_s'] / paddle_ceiling:7.1f} {ratio:7.2f} {same:5}  {target}", flush=True)


if __name__ == "__main__":
    main()

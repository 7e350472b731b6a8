"""BLOOM on a CPU in every weight format paddle_belle runs: float32, bfloat16, int8-g128 and int4-g128 (RTN).

One random float16 checkpoint (std 0.02) is written tensor by tensor (never all in memory); the int8/int4 ones are
made from it by streaming RTN (`paddle-belle quantize --method rtn`; its peak RSS is shown), with the token table
(BLOOM's tied embedding = its head) int8 per token as `quantize` does by default, kept float16 (`--embedding keep`,
loaded with dtype="float16" so that it stays so), or int4. Each format is then loaded in its own process (resident
memory after loading, and the peak while loading, both over the process's RSS before it) and decodes greedily,
batch 1: tok/s counts the decode steps only (a 1-token generate, the prefill, is subtracted). A step reads every
weight once (the whole token table, for the head), so the ceiling is a large-read bandwidth (numpy fp32 gemv,
measured in the same run) / the weight bytes. int4/int8 and bf16/fp16 weights go through the native kernels
(paddle_belle/kernels).

    python benchmarks/cpu_formats.py [--shape bloom-560m|bloom-7b1] [--prompt 32] [--new 64] [--threads 2]
                                     [--formats float32,bfloat16,int8,...] [--workdir /tmp/cpu-formats]

Not yet here (issue 14): llama.cpp on the same weights.
"""
import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {"bloom-560m": dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16),
          "bloom-7b1": dict(vocab_size=250880, hidden_size=4096, n_layer=30, n_head=32)}
# format: (checkpoint directory, quantize options (None: the float16 checkpoint itself), from_pretrained dtype)
FORMATS = {
    "float32": ("fp16", None, "float32"),
    "bfloat16": ("fp16", None, "bfloat16"),
    "int8 (fp16 embedding)": ("int8-keep", dict(bits=8, embedding="keep"), "float16"),
    "int8": ("int8", dict(bits=8), "float32"),  # the token table int8, quantize's default
    "int4 (fp16 embedding)": ("int4-keep", dict(bits=4, embedding="keep"), "float16"),
    "int4": ("int4", dict(bits=4), "float32"),
    "int4 (int4 embedding)": ("int4-int4", dict(bits=4, embedding="int4"), "float32"),
}


def write_checkpoint(shape: str, out: Path) -> None:
    import numpy as np

    from paddle_belle import arch
    from paddle_belle.checkpoint import safetensors_writer, write_json

    config = {"model_type": "bloom", **SHAPES[shape], "dtype": "float16"}
    shapes = arch.BLOOM.checkpoint_shapes(config)
    rng = np.random.default_rng(0)
    out.mkdir(parents=True)
    with safetensors_writer(out / "model.safetensors", [(n, np.dtype("float16"), s) for n, s in shapes.items()]) as w:
        for name, s in shapes.items():
            ones = name.endswith("norm.weight") or name.endswith("layernorm.weight") or name.endswith("ln_f.weight")
            w(name, np.ones(s, np.float16) if ones else (rng.standard_normal(s, np.float32) * 0.02).astype(np.float16))
    write_json(out / "config.json", {**config, "architectures": ["BloomForCausalLM"]})


def gemv_bandwidth(threads: int) -> float:
    """GB/s of a numpy float32 gemv over 512 MiB (far beyond any cache), best of 5."""
    import numpy as np
    import threadpoolctl

    threadpoolctl.threadpool_limits(threads, user_api="blas")
    w, x = np.random.default_rng(0).standard_normal((1024, 131072), np.float32), np.ones((1, 1024), np.float32)
    best = min(_seconds(lambda: x @ w) for _ in range(5))
    return w.nbytes / best / 1e9


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run_format(directory: str, dtype: str, prompt: int, new: int, threads: int) -> dict:
    """In its own process: load, then time greedy decoding."""
    import numpy as np

    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096

    from paddle_belle import AutoModelForCausalLM

    before = rss()
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, threads=threads)
    resident = rss() - before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before  # (nothing above peaked higher)
    ids = np.random.default_rng(1).integers(10, 1000, (1, prompt))

    def generate(n):
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    generate(4)  # warm-up: kernels built and loaded, caches allocated
    prefill = min(_seconds(lambda: generate(1)) for _ in range(2))
    total = min(_seconds(lambda: generate(new)) for _ in range(2))
    return {"resident": resident, "load_peak": peak, "tok_s": (new - 1) / (total - prefill)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=list(SHAPES), default="bloom-560m")
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--workdir", default="/tmp/cpu-formats")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--quantize-worker", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(run_format(*a.worker, a.prompt, a.new, a.threads)))
        return
    if a.quantize_worker:  # its own process, so that its peak RSS is its own
        from paddle_belle.quant.format import QuantConfig
        from paddle_belle.quant.quantize import quantize_checkpoint

        src, out, options = a.quantize_worker
        quantize_checkpoint(src, out, QuantConfig(group_size=128, method="rtn", **json.loads(options)))
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return
    work = Path(a.workdir) / a.shape
    if not (work / "fp16").exists():
        write_checkpoint(a.shape, work / "fp16")
    quantize_rss = {}
    for name in a.formats.split(","):
        directory, options, _ = FORMATS[name]
        if options is not None and not (work / directory).exists():
            run = subprocess.run([sys.executable, __file__, "--quantize-worker", str(work / "fp16"),
                                  str(work / directory), json.dumps(options)], check=True, capture_output=True, text=True)
            quantize_rss[name] = int(run.stdout.strip().splitlines()[-1])
    bandwidth = gemv_bandwidth(a.threads)
    rows = []
    for name in a.formats.split(","):
        directory, _, dtype = FORMATS[name]
        run = subprocess.run([sys.executable, __file__, "--worker", str(work / directory), dtype, "--prompt",
                              str(a.prompt), "--new", str(a.new), "--threads", str(a.threads)],
                             check=True, capture_output=True, text=True)
        result = json.loads(run.stdout.strip().splitlines()[-1])
        weights = sum(f.stat().st_size for f in (work / directory).glob("*.safetensors"))
        weights = weights * 2 if name == "float32" else weights  # the float16 file, held as float32
        ceiling = bandwidth * 1e9 / weights
        rows.append((name, weights, quantize_rss.get(name), result["resident"], result["load_peak"], result["tok_s"],
                     ceiling))
    print(f"{a.shape}: batch 1, {a.threads} threads, prompt {a.prompt}, {a.new} greedy tokens; "
          f"bandwidth {bandwidth:.1f} GB/s (numpy fp32 gemv, same run)")
    print("| format | weight bytes | quantize peak RSS | resident after load | peak while loading | decode tok/s | "
          "ceiling tok/s | % ceiling |")
    print("|---|---|---|---|---|---|---|---|")
    gb = lambda n: "–" if n is None else f"{n / 1e9:.2f} GB"  # noqa: E731
    for name, weights, q_rss, resident, peak, tok_s, ceiling in rows:
        print(f"| {name} | {gb(weights)} | {gb(q_rss)} | {gb(resident)} | {gb(peak)} | {tok_s:.1f} | {ceiling:.1f} | "
              f"{100 * tok_s / ceiling:.0f} % |")


if __name__ == "__main__":
    main()

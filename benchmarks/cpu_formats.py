"""BLOOM on a CPU in every weight format paddle_belle runs (float32, bfloat16, int8-g128, int4-g128), and llama.cpp
on the same weights (f32, f16, q8_0, q4_0), in one run.

The source is a random float16 checkpoint (std 0.02, sharded, written tensor by tensor: never all in memory) in
transformers' layout, as BELLE-7B-2M is published on the HF hub and as `paddle-belle convert --to hf` writes it
(written so directly: at 7B a Paddle copy and its export would need 28 GB of disk), with belle-tiny-zh's tokenizer (no
package ships BLOOM's 250k vocabulary). Both engines read it as it is:
- ours: bfloat16 / float32 load it directly; int8 / int4 are made by streaming RTN (`paddle-belle quantize --method rtn`,
  its peak RSS shown), with the token table (BLOOM's tied embedding = its head) int8 per token as `quantize` does by
  default, kept float16 (`--embedding keep`, loaded with dtype="float16" so that it stays so), or int4; int8 and int4
  also with int8 activations (PADDLE_BELLE_INT8_ACTIVATIONS=1: the kernels' opt-in integer path, same files).
- llama.cpp (llama-cpp-python, built from PyPI's sdist): f32 / f16 / q8_0 by llama.cpp's own convert_hf_to_gguf.py
  (taken from that sdist), q4_0 by llama.cpp's own quantizer (llama_model_quantize, as `llama-quantize`) from the f16
  file, or from the q8_0 one when no f16 is made (at 7B an f16 GGUF beside the source needs 28 GB of disk).
Each format is loaded in its own process (our resident memory after loading, and the peak while loading, both over
the process's RSS before it) and decodes greedily, batch 1, in both engines the same way: a 1-token generate (the
prefill) is subtracted from a --new-token one, so tok/s counts the decode steps only. A step reads every weight once
(the whole token table, for the head), so the ceiling is a large-read bandwidth (numpy fp32 gemv, measured just before
each row's decode) / the weight bytes.

    python benchmarks/cpu_formats.py [--shape bloom-560m|bloom-7b1] [--prompt 32] [--new 64] [--threads 2]
        [--formats float32,bfloat16,int8,...] [--llama-cpp f32,f16,q8_0,q4_0] [--workdir /tmp/cpu-formats]
        [--low-disk] [--lock /work/logs/bench.lock] [--rounds 2]

On a CPU with AMX, llama.cpp as the test extra builds it (natively) puts q8_0 and q4_0 weights in its AMX backend,
which dies with SIGSEGV in ggml_backend_amx_mul_mat (llama-cpp-python 0.3.36 in a KVM guest with amx_int8: stop 28).
For this benchmark build it without that backend, as it runs on any AVX-512 CPU without AMX (its AVX-512 kernels and
its repacking of q4_0, CPU_REPACK):

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
      -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON" \
      pip install --force-reinstall --no-deps --no-cache-dir llama-cpp-python==0.3.36

A llama.cpp run that dies is reported in one line and its cells left empty.

Every file is made first, then all rows are timed while holding --lock's flock once (the slow making of files
blocks no other benchmark). --low-disk makes, times (locking for that row only) and deletes one file at a time
instead; the source stays.
"""
import argparse
import contextlib
import fcntl
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

SHAPES = {"bloom-560m": dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16),
          "bloom-7b1": dict(vocab_size=250880, hidden_size=4096, n_layer=30, n_head=32),
          "tiny": dict(vocab_size=6000, hidden_size=128, n_layer=2, n_head=4)}  # tests
# format: (checkpoint directory, `paddle-belle quantize` options (None: the source itself), from_pretrained dtype,
#          llama.cpp's type at the matching width)
FORMATS = {
    "float32": ("fp16", None, "float32", "f32"),
    "bfloat16": ("fp16", None, "bfloat16", "f16"),
    "int8 (fp16 embedding)": ("int8-keep", ["--bits", "8", "--embedding", "keep"], "float16", "q8_0"),
    "int8": ("int8", ["--bits", "8"], "float32", "q8_0"),  # the token table int8, quantize's default
    "int8 (int8 activations)": ("int8", ["--bits", "8"], "float32", "q8_0"),  # PADDLE_BELLE_INT8_ACTIVATIONS=1
    "int4 (fp16 embedding)": ("int4-keep", ["--bits", "4", "--embedding", "keep"], "float16", "q4_0"),
    "int4": ("int4", ["--bits", "4"], "float32", "q4_0"),
    "int4 (int8 activations)": ("int4", ["--bits", "4"], "float32", "q4_0"),
    "int4 (int4 embedding)": ("int4-int4", ["--bits", "4", "--embedding", "int4"], "float32", "q4_0"),
}
LLAMA_TYPES = ("f32", "f16", "q8_0", "q4_0")
LLAMA_CPP_VERSION = "0.3.36"  # setup.py's test extra
TOKENIZER = Path(__file__).resolve().parent.parent / "paddle_belle" / "assets" / "belle-tiny-zh"


# ------------------------------------------------------------------------------------------- the source
def write_checkpoint(shape: str, out: Path, max_shard_size="2GB") -> None:
    """Random float16 weights as an HF checkpoint (transformers' names and [out, in] Linears, i.e. what `paddle-belle
    convert --to hf` writes), shard by shard, one tensor in memory at a time."""
    import numpy as np
    from tqdm.auto import tqdm

    from paddle_belle import arch
    from paddle_belle.checkpoint import atomic_dir, read_config, safetensors_writer, shard_names, split_shards, write_json
    from paddle_belle.convert.tokenizer import write_hf_tokenizer

    config = {"model_type": "bloom", **SHAPES[shape], "dtype": "float16", "bos_token_id": 1, "eos_token_id": 2,
              "pad_token_id": 3, "layer_norm_epsilon": 1e-5}
    spoken = read_config(TOKENIZER)["vocab_size"]  # the tokenizer's tokens; the rest of the vocabulary is padding
    hf_names = arch.PADDLE_TO_HF["bloom"]
    tensors = {}  # HF name -> (Paddle shape, transpose)
    for name, shape_ in arch.BLOOM.checkpoint_shapes(config).items():
        hf_name, transpose = arch.rename(name, hf_names)
        tensors[hf_name] = (shape_, transpose)
    shards = split_shards({n: 2 * int(np.prod(s)) for n, (s, _) in tensors.items()}, max_shard_size)
    files, index = shard_names(len(shards), safe_serialization=True)
    # Noise (std 0.02) copied from a 32 MB pool at random offsets: drawing 7 billion normals takes a busy 2-core
    # machine most of an hour, and no step of a dense matmul can tell the difference.
    rng, piece = np.random.default_rng(0), 2**24
    pool = (rng.standard_normal(piece + 2**20, np.float32) * 0.02).astype(np.float16)

    def random(shape_):
        array = np.empty(shape_, np.float16)
        flat = array.reshape(-1)
        for i in range(0, flat.size, piece):
            start = int(rng.integers(0, 2**20))
            flat[i:i + piece] = pool[start:start + min(piece, flat.size - i)]
        return array

    with atomic_dir(out) as tmp:
        for file, names in tqdm(list(zip(files, shards)), desc="random float16", unit="shard"):
            specs = [(n, np.dtype("float16"), tensors[n][0][::-1] if tensors[n][1] else tensors[n][0]) for n in names]
            with safetensors_writer(tmp / file, specs, fmt="pt") as write:
                for n in names:
                    s, transpose = tensors[n]
                    ones = n.endswith("layernorm.weight") or n.endswith("ln_f.weight")
                    array = np.ones(s, np.float16) if ones else random(s)
                    if n == "transformer.word_embeddings.weight":  # the head: keep replies to tokens that can be
                        array[spoken:] *= 1e-3  # decoded, so that `paddle-belle chat` runs on this checkpoint
                    write(n, array.T if transpose else array)
        if len(files) > 1:
            weight_map = {n: f for f, names in zip(files, shards) for n in names}
            write_json(tmp / index, {"metadata": {"total_size": sum(2 * int(np.prod(s)) for s, _ in tensors.values())},
                                     "weight_map": weight_map})
        write_json(tmp / "config.json", arch.hf_config("bloom", config))
        write_hf_tokenizer(TOKENIZER, tmp, "bloom")


def weight_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


# ------------------------------------------------------------------------------------------- timing
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


def decode_rate(generate, new: int) -> float:
    """Decode steps per second: generate(n) decodes n tokens after the prompt; a 1-token run (the prefill) is
    subtracted. A 4-token warm-up first (kernels built and loaded, caches allocated); best of 2."""
    generate(4)
    prefill = min(_seconds(lambda: generate(1)) for _ in range(2))
    total = min(_seconds(lambda: generate(new)) for _ in range(2))
    return (new - 1) / (total - prefill)


def prompt_ids(prompt: int):
    import numpy as np

    return np.random.default_rng(1).integers(10, 1000, (1, prompt))


def run_ours(directory: str, dtype: str, prompt: int, new: int, threads: int) -> dict:
    """In its own process: load, then time greedy decoding."""
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096

    from paddle_belle import AutoModelForCausalLM

    before = rss()
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, threads=threads)
    resident = rss() - before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before  # (nothing above peaked higher)
    ids = prompt_ids(prompt)

    def generate(n):
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    return {"resident": resident, "load_peak": peak, "tok_s": decode_rate(generate, new)}


def llama_cpp_generate(llm, ids, n: int) -> list[int]:
    """Greedy decoding in llama.cpp, as our generate does it: the prompt in one batch, then one token per step
    (argmax of the last logits; no sampler chain)."""
    import numpy as np
    import llama_cpp

    llm.reset()
    llm.eval(ids)
    out = []
    for i in range(n):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        out.append(int(logits.argmax()))
        if i < n - 1:
            llm.eval(out[-1:])
    return out


def open_llama_cpp(path, n_ctx: int, threads: int):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, n_threads_batch=threads,
                 verbose=False)


def run_llama_cpp(path: str, prompt: int, new: int, threads: int) -> dict:
    llm = open_llama_cpp(path, prompt + new + 8, threads)
    ids = [int(i) for i in prompt_ids(prompt)[0]]
    return {"tok_s": decode_rate(lambda n: llama_cpp_generate(llm, ids, n), new)}


# ------------------------------------------------------------------------------------------- llama.cpp's files
def llama_cpp_tree(work: Path) -> Path:
    """vendor/llama.cpp of llama-cpp-python's sdist (its convert_hf_to_gguf.py, conversion/ and gguf-py/), fetched by
    pip (from pip's cache when the test install built it) and unpacked once."""
    tree = work / f"llama-cpp-python-{LLAMA_CPP_VERSION}"
    if (tree / "convert_hf_to_gguf.py").is_file():
        return tree
    sdist = work / "sdist"
    subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={LLAMA_CPP_VERSION}", "--no-deps",
                    "--no-binary", ":all:", "--quiet", "-d", str(sdist)], check=True)
    prefix = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
    tmp = tree.with_name(tree.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(next(sdist.glob("llama_cpp_python-*.tar.gz"))) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile() and
                   m.name[len(prefix):].split("/")[0] in ("convert_hf_to_gguf.py", "conversion", "gguf-py")]
        for m in members:
            m.name = m.name[len(prefix):]
        tar.extractall(tmp, members=members, filter="data")
    tmp.rename(tree)
    return tree


# Runs convert_hf_to_gguf.py as its own script with one change: its BPE pre-tokenizer check hashes the encoding of a
# fixed text and knows only real vocabularies (conversion/base.py get_vocab_base_pre), so belle-tiny-zh's vocabulary
# is refused; we name BLOOM's pre-tokenizer, which is what the real BLOOM vocabulary hashes to.
CONVERT = """
import runpy, sys
tree = sys.argv.pop(1)
sys.path[:0] = [tree, tree + "/gguf-py"]
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "bloom"
sys.argv[0] = tree + "/convert_hf_to_gguf.py"
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def make_gguf(source: Path, work: Path, qtype: str, threads: int) -> Path:
    out = work / f"llama-{qtype}.gguf"
    if out.exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    if qtype in ("f32", "f16", "q8_0"):
        run = subprocess.run([sys.executable, "-c", CONVERT, str(llama_cpp_tree(work.parent)), str(source), "--outtype",
                              qtype, "--outfile", str(tmp)], capture_output=True, text=True)
        if run.returncode:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"convert_hf_to_gguf.py {source} --outtype {qtype}: {run.stderr.strip().splitlines()[-1]}")
    else:  # q4_0: the converter cannot; llama.cpp's quantizer (llama-quantize's code) makes it
        import llama_cpp

        base = next((work / f"llama-{t}.gguf" for t in ("f16", "f32", "q8_0") if (work / f"llama-{t}.gguf").exists()),
                    None) or make_gguf(source, work, "q8_0", threads)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.nthread, params.allow_requantize = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, threads, True
        if llama_cpp.llama_model_quantize(str(base).encode(), str(tmp).encode(), params) != 0:
            raise RuntimeError(f"llama_model_quantize {base} -> q4_0 failed")
    tmp.rename(out)
    return out


# ------------------------------------------------------------------------------------------- the run
# A command's peak RSS, measured by a small launcher that runs it: a child's ru_maxrss starts from what its parent's
# address space held when it was forked (vfork/exec keep the pre-exec peak: a 2 GB parent makes `python -c pass`
# report 2.08 GB), and the launcher's own is small once it has exec'd. Also used by pdparams_stream.py, gptq_ab.py.
LAUNCH = """import os, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(proc.pid, 0)
print("PEAK", os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024, time.perf_counter() - start)"""


def run_measured(argv: list[str], **kwargs) -> tuple[int, int, float, subprocess.CompletedProcess]:
    """Run ``argv`` through the launcher, its stdout captured (``kwargs``: subprocess.run's env, cwd, stderr):
    (exit status, peak RSS in bytes, wall seconds, the finished launcher)."""
    run = subprocess.run([sys.executable, "-c", LAUNCH, *argv], stdout=subprocess.PIPE, text=True, **kwargs)
    peak = next((line.split() for line in reversed(run.stdout.splitlines()) if line.startswith("PEAK ")), None)
    if peak is None:  # the launcher itself failed
        return run.returncode or 1, 0, 0.0, run
    return int(peak[1]), int(peak[2]), float(peak[3]), run


def quantize(source: Path, out: Path, options: list[str]) -> int:
    """`paddle-belle quantize --method rtn` in its own process; returns its peak RSS (bytes)."""
    status, peak, _, _ = run_measured([sys.executable, "-m", "paddle_belle.cli", "quantize", "--model", str(source),
                                       "--method", "rtn", "--group-size", "128", *options, "--out", str(out)])
    if status:
        raise RuntimeError(f"paddle-belle quantize {' '.join(options)} failed ({status})")
    return peak


def memory_available() -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/meminfo") if line.startswith("MemAvailable:"))


@contextlib.contextmanager
def locked(path):
    if not path:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def timed(a, worker: list[str], need: int, lock=None, env=None) -> dict:
    """Bandwidth probe + one worker process (under ``lock``, with ``env`` added to its environment); refused (None)
    when the machine lacks the memory."""
    if memory_available() < need + 2e9:
        print(f"skipped {worker[1]}: needs ~{need / 1e9:.1f} GB + 2 GB spare, {memory_available() / 1e9:.1f} GB "
              "available", file=sys.stderr)
        return None
    with locked(lock):
        load = os.getloadavg()[0]
        bandwidth = gemv_bandwidth(a.threads)
        run = subprocess.run([sys.executable, __file__, *worker, "--prompt", str(a.prompt), "--new", str(a.new),
                              "--threads", str(a.threads)], check=worker[0] != "--llama-worker", capture_output=True,
                             text=True, env={**os.environ, **(env or {})})
    if run.returncode:  # llama.cpp's (ours raise): see the docstring on AMX
        print(f"llama.cpp died on {Path(worker[1]).name} (exit {run.returncode}; on a CPU with AMX see this script's "
              "docstring)", file=sys.stderr)
        return None
    return {**json.loads(run.stdout.strip().splitlines()[-1]), "bandwidth": bandwidth, "load": load}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", choices=list(SHAPES), default="bloom-560m")
    p.add_argument("--prompt", type=int, default=32)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--llama-cpp", default=",".join(LLAMA_TYPES), help="llama.cpp types to run ('' for none)")
    p.add_argument("--workdir", default="/tmp/cpu-formats")
    p.add_argument("--low-disk", action="store_true", help="make, measure and delete one file at a time")
    p.add_argument("--lock", help="flock this file while timing")
    p.add_argument("--rounds", type=int, default=2, help="turns of each format, each followed by llama.cpp's")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--llama-worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(run_ours(*a.worker, a.prompt, a.new, a.threads)))
        return
    if a.llama_worker:
        print(json.dumps(run_llama_cpp(a.llama_worker, a.prompt, a.new, a.threads)))
        return
    formats, llama_types = [f for f in a.formats.split(",") if f], [t for t in a.llama_cpp.split(",") if t]
    work = Path(a.workdir) / a.shape
    source = work / "fp16"
    if not source.exists():
        write_checkpoint(a.shape, source)
    quantize_rss = {}

    def make(name):
        directory, options, _, _ = FORMATS[name]
        if options is not None and not (work / directory).exists():
            quantize_rss[name] = quantize(source, work / directory, options)
        return work / directory

    # Files are made first and then every row is timed under one hold of the lock; with --low-disk each file is
    # made, timed (holding the lock for that row only) and deleted in turn. Each format's rounds alternate with those
    # of llama.cpp at its width: the machine's bandwidth drifts by a third from minute to minute (numpy's probe 30-49
    # GB/s within one run), so only turns taken side by side compare; the ratio is the median of each round's.
    if not a.low_disk:
        for name in formats:
            make(name)
        for qtype in llama_types:
            make_gguf(source, work, qtype, a.threads)
    last_user = {FORMATS[n][3]: n for n in formats}  # each llama.cpp type's last format of ours at its width
    pending = set(llama_types)  # llama.cpp types with turns still to take
    rows, theirs = {}, {}

    def llama_row(qtype):
        path = make_gguf(source, work, qtype, a.threads)
        return path, theirs.setdefault(qtype, (path.stat().st_size, []))[1]

    def done_with(qtype):  # --low-disk: a GGUF goes after its last turn; q8_0, maybe q4_0's source, not before q4_0
        pending.discard(qtype)
        for t in set(llama_types) - pending if a.low_disk else ():
            if not (t == "q8_0" and "q4_0" in pending):
                (work / f"llama-{t}.gguf").unlink(missing_ok=True)

    with locked(None if a.low_disk else a.lock):
        row_lock = a.lock if a.low_disk else None
        for name in formats:
            _, options, dtype, qtype = FORMATS[name]
            path = make(name)
            weights = weight_bytes(path) * (2 if dtype == "float32" and options is None else 1)
            env = {"PADDLE_BELLE_INT8_ACTIVATIONS": "1"} if "int8 activations" in name else None
            gguf, other = llama_row(qtype) if qtype in pending else (None, None)
            ours, pairs = [], []
            for _ in range(a.rounds):
                ours.append(timed(a, ["--worker", str(path), dtype], weights, row_lock, env))
                if gguf:
                    other.append(timed(a, ["--llama-worker", str(gguf)], gguf.stat().st_size, row_lock))
                    pairs.append((ours[-1], other[-1]))
            rows[name] = (weights, quantize_rss.get(name), [r for r in ours if r],
                          [o["tok_s"] / l["tok_s"] for o, l in pairs if o and l])
            if a.low_disk and options is not None:
                shutil.rmtree(path)
            if gguf and last_user[qtype] == name:
                done_with(qtype)
        for qtype in [t for t in llama_types if t not in theirs]:  # no format of ours at its width
            gguf, other = llama_row(qtype)
            other.extend(timed(a, ["--llama-worker", str(gguf)], gguf.stat().st_size, row_lock)
                         for _ in range(a.rounds))
            done_with(qtype)
    print_tables(a, rows, theirs)


def print_tables(a, rows: dict, theirs: dict) -> None:
    """One row a format: medians over its rounds (tok/s, and the ceiling from the bandwidth probed before each), and
    the median of the rounds' ours / llama.cpp ratios."""
    median = statistics.median
    gb = lambda n: "–" if n is None else f"{n / 1e9:.2f} GB"  # noqa: E731
    theirs = {t: (size, [r for r in runs if r]) for t, (size, runs) in theirs.items()}
    results = [r for _, _, runs, _ in rows.values() for r in runs] + [r for _, runs in theirs.values() for r in runs]
    if not results:
        print("nothing was timed")
        return
    print(f"{a.shape}: batch 1, {a.threads} threads, prompt {a.prompt}, {a.new} greedy tokens, {a.rounds} rounds "
          f"(ours and llama.cpp at the same width in turn); bandwidth {min(r['bandwidth'] for r in results):.1f}-"
          f"{max(r['bandwidth'] for r in results):.1f} GB/s (numpy fp32 gemv before each run); load average "
          f"{min(r['load'] for r in results):.1f}-{max(r['load'] for r in results):.1f}")
    print("| format | weight bytes | quantize peak RSS | resident after load | peak while loading | decode tok/s | "
          "% of ceiling | llama.cpp (type, file) tok/s | ours / llama.cpp |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (weights, q_rss, runs, ratios) in rows.items():
        qtype = FORMATS[name][3]
        size, other = theirs.get(qtype, (None, []))
        if not runs:
            print(f"| {name} | {gb(weights)} | {gb(q_rss)} | skipped (memory) | | | | | |")
            continue
        tok_s = median([r["tok_s"] for r in runs])
        ceiling = median([r["bandwidth"] for r in runs]) * 1e9 / weights
        vs = f"{median([r['tok_s'] for r in other]):.1f} ({qtype}, {gb(size)})" if other else "–"
        ratio = f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})" if ratios else "–"
        print(f"| {name} | {gb(weights)} | {gb(q_rss)} | {gb(runs[0]['resident'])} | {gb(runs[0]['load_peak'])} | "
              f"{tok_s:.2f} | {100 * tok_s / ceiling:.0f} % | {vs} | {ratio} |")
    for qtype, (size, runs) in theirs.items():
        if runs:
            tok_s = median([r["tok_s"] for r in runs])
            print(f"llama.cpp {qtype}: {gb(size)}, {tok_s:.2f} tok/s (median of {len(runs)}), "
                  f"{100 * tok_s * size / (median([r['bandwidth'] for r in runs]) * 1e9):.0f} % of its ceiling")


if __name__ == "__main__":
    main()

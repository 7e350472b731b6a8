"""A one-file float16 model_state.pdparams (as belle-7b-2m is published: one 15.1 GB pickle) read by two source
trees, this one and another (e.g. a checkout of main before the lazy reader), back to back, each step in a fresh
process: `paddle-belle quantize --method rtn --bits 4` (wall time, peak RSS) and `from_pretrained(dtype="float16")`
on the CPU (peak RSS, resident after loading, and the RSS before loading, i.e. Python + Paddle + PaddleNLP). Then
the time to open a pickle of many tensors: checkpoint.open_pdparams (the pure-Python unpickler, large tensors
skipped) against CPython's C unpickler reading it whole.

    python benchmarks/pdparams_stream.py --other /path/to/old/checkout [--shape bloom-1b7] [--workdir /tmp/pdparams-stream]

Peak RSS is the kernel's, as a small launcher process gets it when it reaps each step (cpu_formats.run_measured):
a process started by this one would report this one's peak as its own (Linux keeps the pre-exec peak).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from cpu_formats import run_measured

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this tree's paddle_belle for the steps run here, whatever is installed
SHAPES = {"bloom-1b7": dict(vocab_size=250880, hidden_size=2048, n_layer=24, n_head=16),  # 3.4 GB in float16
          "bloom-560m": dict(vocab_size=250880, hidden_size=1024, n_layer=24, n_head=16),  # 1.1 GB
          "tiny": dict(vocab_size=1000, hidden_size=64, n_layer=2, n_head=4)}  # a smoke test of this script
LOAD = """import paddle
from paddle_belle import AutoModelForCausalLM
def rss(): return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) * 1024
before = rss()
model = AutoModelForCausalLM.from_pretrained({source!r}, dtype="float16")
print("RSS", before, rss(), sum(p.numel().item() * p.element_size() for p in model.parameters()))"""


class _Random:
    """Pickles as a random float16 ndarray made only while it is written: with the pickler's memo off (fast mode:
    a state dict has no shared objects) nothing keeps it, so the file is written one tensor in memory at a time."""

    def __init__(self, shape, rng, pool):
        self.shape, self.rng, self.pool = shape, rng, pool

    def __reduce__(self):
        n = int(np.prod(self.shape))
        start = int(self.rng.integers(0, self.pool.size - n)) if n < self.pool.size else 0
        return np.resize(self.pool[start:], self.shape).__reduce__()


def write_source(shape: str, out: Path) -> None:
    """config.json and one model_state.pdparams of random float16 weights (std 0.02) in PaddleNLP's layout: a
    protocol-4 pickle of a dict of numpy arrays, as paddle.save writes a state dict."""
    from paddle_belle import arch
    from paddle_belle.checkpoint import atomic_dir, write_json

    config = {"model_type": "bloom", **SHAPES[shape], "dtype": "float16", "bos_token_id": 1, "eos_token_id": 2,
              "pad_token_id": 3, "layer_norm_epsilon": 1e-5}
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 24, np.float32) * 0.02).astype(np.float16)
    with atomic_dir(out) as tmp:
        state = {name: _Random(s, rng, pool) for name, s in arch.BLOOM.model_shapes(config).items()}
        with open(tmp / "model_state.pdparams", "wb") as f:
            pickler = pickle.Pickler(f, protocol=4)
            pickler.fast = True
            pickler.dump(state)
        write_json(tmp / "config.json", config)


def launch(tree: Path, argv: list[str]) -> tuple[int, float, str]:
    """Peak RSS (bytes) and wall seconds of ``argv`` run with ``tree`` first on the path, and its output."""
    env = dict(os.environ, PYTHONPATH=str(tree))  # cwd "/": `python -c` puts the cwd first on the path
    status, peak, seconds, run = run_measured(argv, env=env, cwd="/", stderr=subprocess.PIPE)
    if status:
        sys.exit(f"{tree}: {' '.join(argv[:4])} failed:\n{run.stdout[-2000:]}{run.stderr[-3000:]}")
    return peak, seconds, run.stdout


def open_times(workdir: Path, n_tensors: int) -> dict:
    """Seconds to open a pickle of ``n_tensors`` (half 64 KiB and over, half under) by open_pdparams, and to read
    it whole by the C unpickler (what read_pdparams did)."""
    from paddle_belle.checkpoint import open_pdparams

    path = workdir / "many.pdparams"
    state = {f"t{i}": np.ones(40_000 if i % 2 else 100, "float16") for i in range(n_tensors)}
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=4)
    del state
    t = time.perf_counter()
    open_pdparams(path)
    lazy = time.perf_counter() - t
    t = time.perf_counter()
    with open(path, "rb") as f:
        pickle.load(f)
    whole = time.perf_counter() - t
    result = {"tensors": n_tensors, "bytes": path.stat().st_size, "open_pdparams_s": lazy, "c_unpickler_whole_s": whole}
    path.unlink()
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--other", type=Path, required=True, help="another source tree (the old reader)")
    p.add_argument("--shape", choices=list(SHAPES), default="bloom-1b7")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/pdparams-stream"))
    p.add_argument("--tensors", type=int, default=20_000, help="tensors in the open-time file")
    a = p.parse_args()
    source = a.workdir / a.shape
    a.workdir.mkdir(parents=True, exist_ok=True)
    if not source.exists():
        write_source(a.shape, source)
    size = (source / "model_state.pdparams").stat().st_size
    print(f"source: {source / 'model_state.pdparams'}, {size / 1e9:.2f} GB; load average {os.getloadavg()[0]:.2f}")
    rows = []
    for name, tree in (("other", a.other.resolve()), ("this", ROOT)):
        out = a.workdir / f"int4-{name}"
        shutil.rmtree(out, ignore_errors=True)
        q_peak, q_seconds, _ = launch(tree, [sys.executable, "-m", "paddle_belle.cli", "quantize", "--model",
                                             str(source), "--method", "rtn", "--bits", "4", "--out", str(out)])
        shutil.rmtree(out)
        l_peak, l_seconds, output = launch(tree, [sys.executable, "-c", LOAD.format(source=str(source))])
        rss = next(line for line in output.splitlines() if line.startswith("RSS")).split()[1:]
        before, after, params = (int(x) for x in rss)
        rows.append({"tree": f"{name} ({tree})", "quantize_s": q_seconds, "quantize_peak": q_peak, "load_s": l_seconds,
                     "load_peak": l_peak, "before_load": before, "after_load": after, "param_bytes": params})
    gb = lambda n: f"{n / 1e9:.2f} GB"  # noqa: E731
    print("| tree | quantize rtn-4 | quantize peak RSS | load (float16) | load peak RSS | resident after load "
          "(over the RSS before it) | parameters |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tree']} | {r['quantize_s']:.1f} s | {gb(r['quantize_peak'])} | {r['load_s']:.1f} s | "
              f"{gb(r['load_peak'])} | {gb(r['after_load'])} ({gb(r['after_load'] - r['before_load'])}) | "
              f"{gb(r['param_bytes'])} |")
    print(json.dumps(open_times(a.workdir, a.tensors)))
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Conversion cost: ours vs PaddleNLP's convert_from_torch vs `cp` of the same bytes, on a synthetic sharded HF
BLOOM checkpoint (bloom-1b1 shapes, fp16, ~2.1 GB in 3 shards). Wall time and peak RSS of each, each in its own
process (GNU time), plus the RSS of a process that only imports what the converter imports. Prints a table and
the targets of issue 3; nothing is asserted.

    python benchmarks/convert.py [--workdir /tmp/convert-bench] [--shard-size 1GB] [--keep]
"""
import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from paddle_belle.checkpoint import safetensors_writer, shard_names, split_shards, write_json
from paddle_belle import arch

CONFIG = {"model_type": "bloom", "architectures": ["BloomForCausalLM"], "vocab_size": 250880, "hidden_size": 1536,
          "n_layer": 24, "n_head": 16, "torch_dtype": "float16", "layer_norm_epsilon": 1e-5}


def make_checkpoint(directory: Path, shard_size: str) -> None:
    """HF names and [out, in] layout, written shard by shard with small random values."""
    directory.mkdir(parents=True)
    paddle_shapes = arch.paddle_shapes("bloom", CONFIG)
    specs = {}
    for name, shape in paddle_shapes.items():
        hf_name, transpose = arch.rename(name, arch.PADDLE_TO_HF["bloom"])
        specs[hf_name] = shape[::-1] if transpose else shape
    shards = split_shards({n: int(np.prod(s)) * 2 for n, s in specs.items()}, shard_size)
    names, index = shard_names(len(shards), True)
    rng = np.random.default_rng(0)
    for file, shard in zip(names, shards):
        with safetensors_writer(directory / file, [(n, np.float16, specs[n]) for n in shard], fmt="pt") as write:
            for n in shard:
                write(n, (rng.standard_normal(specs[n], dtype=np.float32) * 0.02).astype(np.float16))
    write_json(directory / index, {"metadata": {}, "weight_map": {n: f for f, s in zip(names, shards) for n in s}})
    write_json(directory / "config.json", CONFIG)


def measure(label: str, argv: list[str]) -> tuple[str, float, float]:
    """(label, wall seconds, peak RSS MB) of one command under GNU time."""
    start = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "RSS_KB %M", *argv], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"{label} failed:\n{out.stderr[-2000:]}")
    rss = int(next(l for l in out.stderr.splitlines() if l.startswith("RSS_KB")).split()[1]) / 1024
    return label, wall, rss


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/convert-bench")
    p.add_argument("--shard-size", default="1GB")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    a = p.parse_args()
    work = Path(a.workdir)
    shutil.rmtree(work, ignore_errors=True)
    hf = work / "hf"
    make_checkpoint(hf, a.shard_size)
    shards = sorted(hf.glob("model-*.safetensors"))
    total, largest = sum(f.stat().st_size for f in shards), max(f.stat().st_size for f in shards)
    py = sys.executable
    rows = [
        measure("cp -r", ["cp", "-r", str(hf), str(work / "cp")]),
        measure("import (ours)", [py, "-c", "import paddle_belle.convert, paddle_belle.cli"]),
        measure("ours: paddle-belle convert", [py, "-m", "paddle_belle.cli", "convert", str(hf), str(work / "ours"),
                                               "--max-shard-size", a.shard_size]),
        measure("import paddle, paddlenlp", [py, "-c", "import paddle, paddlenlp.transformers"]),
    ]
    shutil.copytree(hf, work / "pnlp")  # PaddleNLP writes its model_state.pdparams into the source folder
    rows.append(measure("PaddleNLP convert_from_torch", [py, "-c", (
        "from paddlenlp.transformers import BloomForCausalLM;"
        f"BloomForCausalLM.from_pretrained({str(work / 'pnlp')!r}, convert_from_torch=True, dtype='float16')")]))

    print(f"\nsynthetic HF BLOOM (bloom-1b1 shapes, fp16): {len(shards)} shards, {total / 1e9:.2f} GB, "
          f"largest shard {largest / 1e9:.2f} GB\n")
    print(f"{'':32} {'wall s':>8} {'peak RSS MB':>12}")
    for label, wall, rss in rows:
        print(f"{label:32} {wall:8.1f} {rss:12.0f}")
    by = {label: (wall, rss) for label, wall, rss in rows}
    ours, pnlp, cp, base = by["ours: paddle-belle convert"], by["PaddleNLP convert_from_torch"], by["cp -r"], by["import (ours)"]
    budget = base[1] + 1.25 * largest / 2**20
    print(f"\npeak RSS ours {ours[1]:.0f} MB vs import baseline + 1.25 x largest shard = {budget:.0f} MB: "
          f"{'OK' if ours[1] <= budget else 'OVER'}")
    print(f"peak RSS ours / PaddleNLP = {ours[1] / pnlp[1]:.2f} (target <= 0.25): {'OK' if ours[1] <= 0.25 * pnlp[1] else 'OVER'}")
    print(f"time ours / cp = {ours[0] / cp[0]:.2f} (target <= 3): {'OK' if ours[0] <= 3 * cp[0] else 'OVER'}")
    print(f"time ours / PaddleNLP = {ours[0] / pnlp[0]:.2f}")
    if not a.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()

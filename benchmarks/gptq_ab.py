"""GPTQ of SmolLM2-135M by two source trees, back to back: this one and another (e.g. a checkout of an older
commit), same settings, each in a fresh process; prints quantize time, peak RSS while quantizing and the
perplexity of each result (evaluated by this tree). Uses benchmarks/quant.py's model and texts. Without --other,
this tree only; --act-order both: with and without act-order, one after the other.

    python benchmarks/gptq_ab.py [--other /path/to/old/checkout] [--calib-samples 96] [--seqlen 512] [--eval-tokens 8192] [--act-order yes|no|both] [--embedding int8|int4|keep]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import quant
from cpu_formats import run_measured

ROOT = Path(__file__).resolve().parents[1]
QUANTIZE = """
import json, sys
from paddle_belle.quant import QuantConfig
from paddle_belle.quant.quantize import quantize_checkpoint
spec = json.loads(sys.argv[1])
quantize_checkpoint(spec["model"], spec["out"], QuantConfig(**spec["quant"]), calib=spec["calib"],
                    nsamples=spec["nsamples"], seqlen=spec["seqlen"], threads=2)
"""


def quantize(root: Path, spec: dict) -> dict:
    """Wall time and peak RSS of quantize_checkpoint from the tree ``root``, in a fresh process (through
    cpu_formats' launcher: this process's own peak, e.g. from evaluating the other tree's result, is not counted)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    status, peak, seconds, run = run_measured([sys.executable, "-c", QUANTIZE, json.dumps(spec)], env=env, cwd="/",
                                              stderr=subprocess.PIPE)
    if status:
        sys.exit(f"{root}: quantize failed:\n{run.stderr[-3000:]}")
    return {"seconds": seconds, "peak_rss": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", help="the other source tree (its paddle_belle is imported); default: none")
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "paddle_belle" / "bench-quant"))
    parser.add_argument("--calib-samples", type=int, default=96)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--act-order", choices=("yes", "no", "both"), default="yes")
    parser.add_argument("--embedding", default="int8", help="the token table (quantize --embedding; default int8)")
    args = parser.parse_args()
    work = Path(args.work)
    model = work / "smollm2-135m"
    if not model.is_dir():
        sys.exit(f"{model}: run benchmarks/quant.py --work {work} --configs fp32 first (it fetches and converts)")
    trees = ([("other", Path(args.other).resolve())] if args.other else []) + [("this", ROOT)]
    for act_order in {"yes": [True], "no": [False], "both": [True, False]}[args.act_order]:
        rows = {}
        for name, root in trees:
            out = work / f"ab-{name}"
            subprocess.run(["rm", "-rf", str(out)], check=True)
            spec = dict(model=str(model), out=str(out), calib=str(work / "calib.txt"), nsamples=args.calib_samples,
                        seqlen=args.seqlen, quant=dict(method="gptq", bits=4, act_order=act_order,
                                                       embedding=args.embedding))
            rows[name] = quantize(root, spec)
            rows[name].update(quant.run_worker(name, dict(step="evaluate", model=str(out), eval=str(work / "eval.txt"),
                                                          seqlen=args.seqlen, eval_tokens=args.eval_tokens,
                                                          in_features={})))
            print(f"{name}: {rows[name]['seconds']:.1f} s", file=sys.stderr, flush=True)
        print(f"SmolLM2-135M GPTQ-4 g128 act-order={act_order} embedding={args.embedding}, {args.calib_samples} x "
              f"{args.seqlen} calibration tokens, perplexity over {rows['this']['tokens']} tokens")
        print("| tree | quantize time | peak RSS while quantizing | perplexity |\n|---|---|---|---|")
        for name, r in rows.items():
            print(f"| {name} ({ROOT if name == 'this' else args.other}) | {r['seconds']:.1f} s | "
                  f"{r['peak_rss'] / 1e6:.0f} MB | {r['perplexity']:.3f} |", flush=True)
        if args.other:
            print(f"time this / other: {rows['this']['seconds'] / rows['other']['seconds']:.3f}")


if __name__ == "__main__":
    main()

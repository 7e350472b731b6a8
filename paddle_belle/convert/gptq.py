"""BELLE's GPTQ releases (GPTQ-for-Bloom / GPTQ-for-LLaMa files) -> our quantized checkpoint, without re-quantizing.

The format is what ``QuantLinear.pack`` writes in BELLE's models/gptq/quant.py (from qwopqwop200/GPTQ-for-LLaMa
quant.py) and what its CUDA kernels (quant_cuda_kernel.cu) read, saved as ``torch.save(model.state_dict())`` (.pt)
or with safetensors. For each quantized Linear ``NAME`` of the HF model:

- ``NAME.qweight`` int32 [in * bits / 32, out]: the integer codes packed along the input dimension, lowest bits
  first. Every ``bits`` consecutive words hold 32 codes as one little-endian bit stream (with 3 bits a code may
  straddle two words);
- ``NAME.qzeros`` int32 [groups, out * bits / 32]: each zero point minus one, packed the same way along the output
  dimension; the kernels add the one back, so weight = scale * (code - (stored + 1));
- ``NAME.scales`` [groups, out], one per group of input rows; ``NAME.bias`` [out] (zeros when the Linear had none);
- ``NAME.g_idx`` int32 [in] in later GPTQ-for-LLaMa versions: each input row's group (trivial unless act-order).

Everything else (embeddings, norms, the unquantized lm_head) is the HF model's float tensor. The codes are already
in our orientation ([in, out], packed along the input), so they are repacked, never re-quantized: the imported
model computes exactly BELLE's dequantized weights. Bits and group size are read from the shapes; the architecture
from config.json. One tensor is in memory at a time.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from paddle_belle import arch as archs
from paddle_belle.checkpoint import CheckpointError, atomic_dir, read_config, read_safetensors_header, \
    safetensors_writer, write_json
from paddle_belle.convert.engine import dtype_name
from paddle_belle.convert.tokenizer import write_paddle_tokenizer
from paddle_belle.convert.torch_bin import read_torch_bin
from paddle_belle.quant.format import BITS, QuantConfig, pack

PARTS = ("qweight", "qzeros", "scales", "g_idx", "bias")
COPIED = ("generation_config.json",)


def unpack_words(words: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """uint8 codes from GPTQ-for-LLaMa's int32 words packed along ``axis``: each run of ``bits`` words is a
    little-endian bit stream of 32 codes, code j at bits [j * bits, (j + 1) * bits) (pack() writes 2/4/8-bit codes
    whole into each word, and splits 3-bit codes 10 and 21 across word boundaries, which reads the same way)."""
    w = np.moveaxis(np.ascontiguousarray(words).view(np.uint32), axis, 0)
    if w.shape[0] % bits:
        raise ValueError(f"{w.shape[0]} packed words are not a whole number of {bits}-word runs")
    w = w.reshape(w.shape[0] // bits, bits, *w.shape[1:])
    out = np.empty((w.shape[0], 32, *w.shape[2:]), np.uint8)
    mask = np.uint32((1 << bits) - 1)
    for j in range(32):
        word, shift = divmod(j * bits, 32)
        value = w[:, word] >> np.uint32(shift)
        if shift + bits > 32:  # the high bits are in the next word
            value = value | (w[:, word + 1] << np.uint32(32 - shift))
        out[:, j] = value & mask
    return np.moveaxis(out.reshape(-1, *w.shape[2:]), 0, axis)


# --------------------------------------------------------------------------------------------- the source
class _Source:
    """The tensors of a GPTQ file by name: dtype, shape and a loader, from the safetensors header or the torch
    pickle (read by convert/torch_bin.py's restricted unpickler: no torch, no code from the file)."""

    def __init__(self, path: Path):
        self.path = path
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such GPTQ file")
        if path.name.endswith(".safetensors.index.json"):  # shards, as transformers' save_pretrained writes them
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
            self.files = [path.parent / shard for shard in shards]
        elif path.suffix == ".safetensors":
            self.files = [path]
        else:  # .pt / .pth / .bin: torch.save's zip
            self.files = None
            self.lazy = read_torch_bin(path)
            self.specs = {n: (t.dtype, t.shape) for n, t in self.lazy.items()}
            return
        self.entries = {}  # name -> (file, its data start, header entry)
        for file in self.files:
            entries, start = read_safetensors_header(file)
            self.entries.update((n, (file, start, e)) for n, e in entries.items())
        self.specs = {n: (e["dtype"], e["shape"]) for n, (_, _, e) in self.entries.items()}

    def read(self, name: str) -> np.ndarray:
        if self.files:
            file, start, e = self.entries[name]
            with open(file, "rb") as f:
                f.seek(start + e["offsets"][0])
                return np.fromfile(f, e["dtype"], int(np.prod(e["shape"], dtype=np.int64))).reshape(e["shape"])
        return self.lazy[name].load()

    def same_storage(self, a: str, b: str) -> bool:
        """Whether two names are one tensor saved twice (torch.save keeps a tied head as a second view)."""
        if self.files:
            return False
        x, y = self.lazy[a], self.lazy[b]
        return (x.member, x.offset, x.shape, x.stride) == (y.member, y.offset, y.shape, y.stride)


def _group_sizes(in_features: int, groups: int) -> set[int]:
    """The group sizes GPTQ-for-LLaMa could have used to make ``groups`` groups of ``in_features`` rows: powers of
    two from 32 (its QuantLinear's rule), and -1 (per-channel scales) when there is one group."""
    found = {1 << k for k in range(5, 31) if -(-in_features // (1 << k)) == groups}
    return found | ({-1} if groups == 1 else set())


# ------------------------------------------------------------------------------------------------ planning
def _plan(src: _Source, model_type: str, dims: dict):
    """(QuantConfig, {paddle stem: HF stem} of the quantized Linears, {paddle name: (HF name, transpose)} of the
    float tensors), from the file's names and shapes; every mismatch is reported by name."""
    spec, where = archs.get(model_type), src.path
    shapes, to_hf = spec.model_shapes(dims), archs.invert(spec.hf_to_paddle)
    quantized, bits, sizes = {}, None, None
    for weight, (rows, cols) in spec.linear_weights(dims).items():
        stem, hf = weight[: -len(".weight")], archs.rename(weight, to_hf)[0][: -len(".weight")]
        parts = ("qweight", "qzeros", "scales") + (("bias",) if f"{stem}.bias" in shapes else ())
        missing = [p for p in parts if f"{hf}.{p}" not in src.specs]
        if missing:
            raise CheckpointError(f"{where}: lacks {hf}.{missing[0]}; not a GPTQ-for-LLaMa/Bloom file of this "
                                  f"{model_type} config (is --config the model it was quantized from?)")
        qshape, zshape, sshape = (src.specs[f"{hf}.{p}"][1] for p in ("qweight", "qzeros", "scales"))
        b = qshape[0] * 32 // rows if len(qshape) == 2 and qshape[1] == cols and rows % 32 == 0 else None
        if b not in BITS or b * rows != qshape[0] * 32 or bits not in (None, b):
            raise CheckpointError(f"{where}: {hf}.qweight has shape {qshape}; [in * bits / 32, out] with in, out = "
                                  f"{rows}, {cols} and one bit width of {', '.join(map(str, BITS))} for every layer "
                                  "is expected")
        bits = b
        if len(sshape) != 2 or sshape[1] != cols or zshape != [sshape[0], cols * b // 32]:
            raise CheckpointError(f"{where}: {hf}.scales {sshape} and {hf}.qzeros {zshape} do not fit "
                                  f"[groups, {cols}] and [groups, {cols * b // 32}]")
        options = _group_sizes(rows, sshape[0])
        sizes = options if sizes is None else sizes & options
        if not sizes:
            raise CheckpointError(f"{where}: {hf}.scales has {sshape[0]} groups of {rows} rows, which fits no group "
                                  "size shared by the layers before it")
        # GPTQ-for-LLaMa's QuantLinear registers a bias for every Linear, zeros where the model has none (LLaMA).
        if f"{stem}.bias" not in shapes and f"{hf}.bias" in src.specs and np.any(src.read(f"{hf}.bias")):
            raise CheckpointError(f"{where}: {hf}.bias is not zero, but this {model_type} Linear has no bias")
        quantized[stem] = hf
    group = -1 if -1 in sizes else min(sizes)
    # g_idx: trivial (row // group) without act-order; with it, our format stores each group's rows together
    # (quant/format.py ``perm``), which needs every group but the last to hold ``group`` rows.
    act_order = False
    for hf in quantized.values():
        if f"{hf}.g_idx" in src.specs:
            g_idx = src.read(f"{hf}.g_idx").astype(np.int64)
            trivial = np.arange(g_idx.size) // (group if group > 0 else g_idx.size)
            if not np.array_equal(np.sort(g_idx), trivial):
                raise CheckpointError(f"{where}: {hf}.g_idx does not make groups of {group} rows")
            act_order |= not np.array_equal(g_idx, trivial)
    # Symmetric files (GPTQ-for-LLaMa --sym) have every zero at 2^(bits-1), our format's implicit zero: no zeros.
    sym = all(np.all(_zeros(src, hf, bits) == 1 << (bits - 1)) for hf in quantized.values())
    config = QuantConfig(bits=bits, group_size=group, method="gptq", sym=sym, act_order=act_order,
                         embedding="keep")  # BELLE's files keep the token tables as they are

    floats = {}
    for name in shapes:
        if name.rsplit(".", 1)[0] not in quantized:
            hf, transpose = archs.rename(name, to_hf)
            if hf not in src.specs:
                raise CheckpointError(f"{where}: lacks {hf}, which the config implies")
            stored = src.specs[hf][1]
            if (stored[::-1] if transpose else stored) != shapes[name]:
                raise CheckpointError(f"{where}: {hf} has shape {stored}, the config implies "
                                      f"{shapes[name][::-1] if transpose else shapes[name]}")
            floats[name] = (hf, transpose)
    known = {f"{hf}.{p}" for hf in quantized.values() for p in PARTS} | {hf for hf, _ in floats.values()}
    strays = [n for n in src.specs if n not in known | {archs.HF_HEAD}
              and not any(re.match(p, n) for p in spec.hf_ignored)]
    if strays:
        raise CheckpointError(f"{where}: tensor {strays[0]!r} is not a {model_type} weight of this config "
                              "(a quantized lm_head or another layout is not supported)")
    return config, quantized, floats


def _zeros(src: _Source, hf: str, bits: int) -> np.ndarray:
    """The zero points the kernels use: the stored value plus one."""
    return unpack_words(src.read(f"{hf}.qzeros"), bits, axis=1).astype(np.int32) + 1


# ---------------------------------------------------------------------------------------------- converting
def convert_gptq(src, dst, config=None) -> Path:
    """Convert BELLE's GPTQ file ``src`` (.pt, .safetensors, or the model.safetensors.index.json of shards) into our
    quantized checkpoint directory ``dst``
    (must not exist), with the config.json and tokenizer of the directory ``config`` (default: the file's directory,
    as BELLE's repos ship them). Returns ``dst``."""
    src, dst = Path(src), Path(dst)
    config_dir = Path(config) if config is not None else src.parent
    if dst.exists():
        raise FileExistsError(f"{dst} exists; give a new directory")
    hf_config = read_config(config_dir)
    model_type = archs.model_type_of(hf_config, f"{config_dir}/config.json")
    # An AutoGPTQ checkpoint (transformers' quantization_config) in the "gptq" format is GPTQ-for-LLaMa's packing;
    # "gptq_v2" (GPTQModel's, AutoGPTQ's later format) stores the zero points without GPTQ-for-LLaMa's minus one.
    hf_quant = hf_config.pop("quantization_config", None) or {}
    if hf_quant.get("checkpoint_format", "gptq") != "gptq" or hf_quant.get("quant_method", "gptq") != "gptq":
        raise CheckpointError(f"{config_dir}/config.json: quantization_config {hf_quant.get('quant_method')} / "
                              f"{hf_quant.get('checkpoint_format')}: only GPTQ's gptq format can be imported")
    spec, dims = archs.get(model_type), archs.paddle_config(model_type, hf_config)
    source = _Source(src)
    quant, quantized, floats = _plan(source, model_type, dims)
    embed_hf = floats[spec.embedding][0]
    float_dtype = source.specs[embed_hf][0]

    from paddle_belle.cards.files import checkpoint_tensors  # the tensors, in the order save_pretrained writes

    def stored_dtype(name, dtype):  # float tensors keep the file's dtype, each its own
        stem, part = name.rsplit(".", 1)
        hf = floats[name][0] if name in floats else f"{quantized[stem]}.bias" if part == "bias" else None
        return source.specs[hf][0] if hf else dtype

    specs = [(n, stored_dtype(n, d), s) for n, d, s in checkpoint_tensors(model_type, dims, float_dtype, quant)]
    check_tie = spec.tied(dims) and archs.HF_HEAD in source.specs and not source.same_storage(embed_hf, archs.HF_HEAD)
    with atomic_dir(dst) as tmp:
        with safetensors_writer(tmp / "model.safetensors", specs) as write:
            for name, _, _ in tqdm(specs, desc=f"importing GPTQ-{quant.bits}", unit="tensor", disable=None):
                stem, part = name.rsplit(".", 1)
                if name in floats:
                    hf, transpose = floats[name]
                    array = source.read(hf)
                    if check_tie and name == spec.embedding:
                        embedding = _fingerprint(array)
                    write(name, array.T if transpose else array)
                elif part == "bias":  # a quantized Linear's bias, stored beside its codes
                    write(name, source.read(f"{quantized[stem]}.bias"))
                else:
                    _write_quantized(write, source, quantized[stem], stem, part, quant)
        if check_tie and _fingerprint(source.read(archs.HF_HEAD)) != embedding:
            raise CheckpointError(f"{src}: {archs.HF_HEAD} differs from {embed_hf}, but the config ties them")
        out_config = {**dims, "dtype": dtype_name(np.dtype(float_dtype)), "quantization_config": quant.to_dict()}
        write_json(tmp / "config.json", out_config)
        if any((config_dir / n).is_file() for n in ("tokenizer.json", "vocab.json", "tokenizer.model",
                                                     "sentencepiece.bpe.model")):
            write_paddle_tokenizer(config_dir, tmp, model_type)
        for name in COPIED:
            if (config_dir / name).is_file():
                shutil.copyfile(config_dir / name, tmp / name)
    return dst


def _fingerprint(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def _write_quantized(write, source: _Source, hf: str, stem: str, part: str, config: QuantConfig) -> None:
    """Our ``part`` (qweight, scales, zeros or perm) of one quantized Linear, from the GPTQ tensors of ``hf``."""
    bits, order = config.bits, None
    if config.act_order and f"{hf}.g_idx" in source.specs:  # rows of a group together, in file order (_plan checked)
        order = np.argsort(source.read(f"{hf}.g_idx"), kind="stable")
    if part == "qweight":
        codes = unpack_words(source.read(f"{hf}.qweight"), bits, axis=0)
        write(f"{stem}.qweight", pack(codes if order is None else codes[order], bits))
    elif part == "scales":
        write(f"{stem}.scales", source.read(f"{hf}.scales").astype(np.float32))
    elif part == "zeros":
        zeros = _zeros(source, hf, bits)
        if zeros.max() > 255:
            # pack() stores a zero point of 0 as -1, whose sign bits overwrite the higher zeros of the word; the
            # kernels then use 2^bits, which an 8-bit file cannot express in our uint8 zeros.
            raise CheckpointError(f"{source.path}: {hf}.qzeros holds zero point {zeros.max()}, beyond 8 bits "
                                  "(GPTQ-for-LLaMa's packing of a zero of 0); this file cannot be imported exactly")
        write(f"{stem}.zeros", zeros.astype(np.uint8))
    elif part == "perm":
        rows = source.specs[f"{hf}.qweight"][1][0] * 32 // bits
        write(f"{stem}.perm", (np.arange(rows) if order is None else order).astype(np.int32))

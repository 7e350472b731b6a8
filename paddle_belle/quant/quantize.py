"""Quantize a model block by block (GPTQ or round-to-nearest) and save the quantized checkpoint.

Quantizing a checkpoint never builds the whole model. RTN (``stream_rtn``) reads the source one tensor at a time and
writes it, packed or as it was, into the new checkpoint, so memory holds one tensor. GPTQ (``stream_gptq``) holds
one decoder block's float weights (read from the source when its turn comes, released when it is written) plus the
calibration activations.

GPTQ runs the way the reference (IST-DASLab/gptq llama.py ``llama_sequential``) does, so that memory holds one
block's calibration activations, never the whole model's: the inputs of block 0 are captured by stopping the
forward pass at it; for each block, each calibration window makes one pass through it, paused before each group of
Linears until the group's Hessian (quant/gptq.py) has every window's input and the group is quantized; the
passes' outputs, through the now-quantized block, are the next block's inputs. Everything else the
block needs (RoPE cos/sin, or BLOOM's ALiBi + causal bias) is captured with the inputs and passed along unchanged.
``quantize_model`` does the same to a model already in memory.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import paddle
import paddle.nn as nn
from tqdm.auto import tqdm

from paddle_belle import arch
from paddle_belle.checkpoint import TOKENIZER_FILES, CheckpointError, as_numpy, atomic_dir, read_config, \
    safetensors_writer, to_paddle, write_json
from paddle_belle.cpu import set_cpu_threads
from paddle_belle.quant.format import TIED_HEAD_ERROR, QuantConfig, pack, quantize_rtn, token_tables
from paddle_belle.quant.gptq import Hessian, quantize_linears
from paddle_belle.quant.linear import BLOCK_ELEMENTS, QuantEmbedding, QuantLinear, block_linears, decoder_blocks, \
    quantizable

# Files of a checkpoint directory that travel unchanged into the quantized one (tokenizers of both layouts).
COPIED = (*TOKENIZER_FILES, "generation_config.json")


class _Captured(Exception):
    """Raised by a hook once a calibration pass has what it came for: the rest of the forward pass is not needed."""


def calibration_windows(ids, nsamples: int, seqlen: int, source: str = "calibration data") -> np.ndarray:
    """``nsamples`` consecutive, disjoint windows of ``seqlen`` tokens [nsamples, seqlen] from the token ids."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if nsamples < 1 or seqlen < 2:
        raise ValueError(f"nsamples must be >= 1 and seqlen >= 2 (got {nsamples} and {seqlen})")
    need = nsamples * seqlen
    if ids.size < need:
        raise ValueError(f"{source}: {ids.size} tokens, too short for nsamples × seqlen = {nsamples} × {seqlen} = "
                         f"{need}; give more text or lower --nsamples/--seqlen")
    return ids[:need].reshape(nsamples, seqlen)


def _rtn_layer(linear, config: QuantConfig) -> QuantLinear:
    codes, scales, zeros = quantize_rtn(linear.weight, config)
    return QuantLinear.from_codes(codes, scales, zeros, config, bias=linear.bias)


def rtn_tensors(weight: np.ndarray, config: QuantConfig, transpose: bool = False) -> dict[str, np.ndarray]:
    """Round-to-nearest of the [in, out] weight (``transpose``: of ``weight.T``, an embedding [vocab, hidden] stored
    as its head) as the checkpoint's tensors {qweight, scales[, zeros][, perm]} (quant/format.py). A slice of output
    columns at a time: each column has its own grid, so the result is the same as quantize_rtn on the whole weight,
    while memory holds the packed result plus one slice in float32 (a 7B BLOOM's embedding is 4 GB in float32)."""
    rows, cols = weight.shape[::-1] if transpose else weight.shape
    out = {"qweight": np.empty([-(-rows // config.per_byte), cols], np.uint8),
           "scales": np.empty([config.groups(rows), cols], np.float32)}
    if not config.sym:
        out["zeros"] = np.empty([config.groups(rows), cols], np.uint8)
    width = max(1, BLOCK_ELEMENTS // rows)
    for c0 in range(0, cols, width):
        part = weight[c0 : c0 + width].T if transpose else weight[:, c0 : c0 + width]
        codes, scales, zeros = quantize_rtn(to_paddle(np.ascontiguousarray(part), "float32"), config)
        out["qweight"][:, c0 : c0 + width] = pack(codes, config.bits)
        out["scales"][:, c0 : c0 + width] = scales
        if not config.sym:
            out["zeros"][:, c0 : c0 + width] = zeros
    if config.act_order:  # RTN keeps the input order
        out["perm"] = np.arange(rows, dtype=np.int32)
    return out


def quantize_token_tables(model, config: QuantConfig) -> None:
    """RTN of the embedding (into a QuantEmbedding) and of a head of its own that ``config.quantize_lm_head`` leaves
    alone, with the token tables' grid (config.embedding), in place; nothing when they are kept."""
    tables = token_tables(model.arch, model.config, config)
    if not tables:
        return
    embedding = model.get_input_embeddings()
    dtype = str(embedding.weight.dtype).replace("paddle.", "")
    targets = [(QuantEmbedding, embedding.weight, model.set_input_embeddings)]
    if model.arch.head in tables:
        targets.append((QuantLinear, model.lm_head.weight, lambda layer: setattr(model, "lm_head", layer)))
    for (cls, weight, put), transpose in zip(targets, tables.values()):
        rows, cols = weight.shape[::-1] if transpose else weight.shape
        layer = cls(rows, cols, config.embedding_config(), dtype=dtype)
        for name, array in rtn_tensors(as_numpy(weight), config.embedding_config(), transpose).items():
            getattr(layer, name).set_value(paddle.to_tensor(array))
        put(layer)


@paddle.no_grad()
def quantize_model(model, config: QuantConfig, calibration: np.ndarray | None = None, progress: bool = True):
    """Replace the model's Linears (decoder blocks; the head when asked) by QuantLinears, in place.

    ``calibration`` [nsamples, seqlen] token ids are needed by GPTQ, ignored by RTN. Returns the model."""
    model.eval()
    quantizable(model, config)  # checks --quantize-lm-head before any work
    blocks = decoder_blocks(model)
    bar = tqdm(total=len(blocks) + int(config.quantize_lm_head), desc=f"{config.method}-{config.bits}",
               unit="block", disable=None if progress else True)
    if config.method == "rtn":
        for block in blocks:
            for _, parent, attr, linear in block_linears(model, block):
                setattr(parent, attr, _rtn_layer(linear, config))
            bar.update()
        if config.quantize_lm_head:
            model.lm_head = _rtn_layer(model.lm_head, config)
            bar.update()
        bar.close()
        quantize_token_tables(model, config)
        model.quantization = config
        return model
    if calibration is None:
        raise ValueError("GPTQ needs calibration data")
    inputs, extra = _block_inputs(model, calibration)
    for i, block in enumerate(blocks):
        quantized, inputs = _gptq_block(model, block, i, inputs, extra, config)
        for _, parent, attr, linear in block_linears(model, block):
            q = quantized[id(linear)]
            setattr(parent, attr, QuantLinear.from_codes(q.codes, q.scales, q.zeros, config, perm=q.perm,
                                                         bias=linear.bias))
        bar.update()
    if config.quantize_lm_head:
        q = _gptq_head(model, inputs, config)
        model.lm_head = QuantLinear.from_codes(q.codes, q.scales, q.zeros, config, perm=q.perm)
        bar.update()
    bar.close()
    quantize_token_tables(model, config)
    model.quantization = config
    return model


def _block_inputs(model, calibration: np.ndarray) -> tuple[list, list]:
    """The inputs of block 0 for each calibration window, and the block's other arguments (the same for every
    window: RoPE cos/sin, or BLOOM's ALiBi + causal bias), captured by stopping the forward pass at block 0."""
    inputs, extra = [], []

    def catch(layer, args):
        inputs.append(args[0])
        extra[:] = args[1:]
        raise _Captured

    hook = decoder_blocks(model)[0].register_forward_pre_hook(catch)
    try:
        for window in calibration:
            ids = paddle.to_tensor(window[None], dtype="int64")
            try:
                model.base_model(ids, paddle.ones_like(ids), None, None)
            except _Captured:
                pass
    finally:
        hook.remove()
    return inputs, extra


class _BlasLinear(nn.Layer):
    """A float32 Linear whose product runs through numpy's BLAS, in place of the block's Linear during its
    calibration passes: Paddle 3.3.1's CPU matmul (MKL's AVX2 path on Zen 4) took ~2.5x as long as numpy's
    OpenBLAS on a window (SmolLM2-135M's [512, 576] x [576, 1536]: 24-54 vs 8-21 ms), the largest part of the
    passes. The weight is read at each call: GPTQ writes each group's dequantized weight back into the Linear
    before the passes go on through it."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        y = x.numpy() @ self.linear.weight.numpy()
        if self.linear.bias is not None:
            y += self.linear.bias.numpy()
        return paddle.to_tensor(y)


def _gptq_block(model, block, i: int, inputs: list, extra: list, config: QuantConfig) -> tuple[dict, list]:
    """GPTQ of block ``i``'s Linears on its calibration ``inputs`` (emptied: the passes own them now): ({id(Linear):
    QuantizedWeight}, the next block's inputs). The block's Linears are left holding the dequantized weights GPTQ
    writes back (the same numbers a QuantLinear computes with, without unpacking the integers on every pass).

    Within a block the Linears go group by group (arch.py linear_groups, "true sequential" in the GPTQ reference):
    a later group's Hessian comes from the outputs of the groups already quantized, so it can correct their error.
    Each window makes one pass through the block (the block's ``stages``), paused at each group's input until every
    window's input has been added to the group's Hessian and the group is quantized; the paused passes hold their
    activations meanwhile (96 windows of 512 tokens at SmolLM2-135M's down_proj: residual + input, 415 MB). The
    reference (IST-DASLab/gptq llama.py ``llama_sequential``) instead runs each window from the block's input once
    per group, four passes instead of one for LLaMA; the same ops on the same values, so the same codes
    (tests/quant/test_gptq.py), up to float32 rounding: the products go through numpy's BLAS here (_BlasLinear),
    and on real models act-order can turn that rounding into another column order (README "Quantizing"). The
    Linears of a group read the same input, so they share one Hessian (the
    reference accumulates the same matrix once per Linear) and its inverse's factor."""
    args = tuple(extra[:-2]) + (i,)  # our blocks' last arguments: the KV cache (None here) and the layer index
    blas = inputs[0].place.is_cpu_place()  # (a GPU multiplies faster where the tensors are)
    passes = [block.stages(x, *args) for x in inputs]
    inputs.clear()
    linears, quantized = block_linears(model, block), {}
    for _, parent, attr, linear in linears:
        setattr(parent, attr, _BlasLinear(linear) if blas else linear)
    try:
        for group in model.arch.linear_groups:
            members = [linear for path, _, _, linear in linears if path in group]
            hessian = Hessian(members[0].weight.shape[0])
            for p in passes:
                hessian.add(next(p))
            quantized.update(zip(map(id, members), quantize_linears(members, hessian.matrix(), config)))
        return quantized, [next(p) for p in passes]
    finally:
        for _, parent, attr, linear in linears:
            setattr(parent, attr, linear)


def _gptq_head(model, inputs: list, config: QuantConfig):
    """GPTQ of a separate LM head on the last block's outputs (after the final norm)."""
    hessian = Hessian(model.lm_head.weight.shape[0])
    for x in inputs:
        hessian.add(model.base_model.norm(x))  # (only LLaMA has a head of its own)
    return quantize_linears([model.lm_head], hessian.matrix(), config)[0]


# -------------------------------------------------------------------------------------------- end to end
def quantize_checkpoint(model_dir, out_dir, config: QuantConfig, calib: str | None = None, nsamples: int = 128,
                        seqlen: int = 2048, threads: int | None = None) -> dict:
    """Quantize the checkpoint ``model_dir`` and write the quantized checkpoint (weights, config, tokenizer files) to
    ``out_dir``, which must not exist; it is built beside and renamed into place when complete. Neither method
    builds the whole model (stream_rtn, stream_gptq). Returns {"seconds": quantization time, "bytes": size of the
    weight files}."""
    from paddle_belle.evaluate.perplexity import load_encoder

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; give a new directory")
    if "quantization_config" in read_config(model_dir):
        raise ValueError(f"{model_dir} is already quantized")
    calibration = None
    if config.method == "gptq":
        if calib is None:
            raise ValueError("--method gptq needs --calib (a text file)")
        encode = load_encoder(model_dir)
        calibration = calibration_windows(encode(_read_text(calib)), nsamples, seqlen, source=calib)
        if paddle.get_device() == "cpu":
            set_cpu_threads(threads)
    start = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        if calibration is None:
            stream_rtn(model_dir, tmp, config)
        else:
            stream_gptq(model_dir, tmp, config, calibration)
        seconds = time.perf_counter() - start
        _copy_side_files(model_dir, tmp)
    return {"seconds": seconds, "bytes": _weight_bytes(out_dir)}


def _copy_side_files(model_dir, out: Path) -> None:
    for name in COPIED:
        if (Path(model_dir) / name).is_file():
            shutil.copyfile(Path(model_dir) / name, out / name)


def _weight_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.suffix in (".safetensors", ".pdparams"))


def _plan(model_dir, config: QuantConfig):
    """What streaming quantization reads and writes: (the PaddleNLP-field config, the architecture, the source
    tensors in the model's order (embeddings, blocks 0.., final norm and head), {name: (grid, stored transposed)}
    of the tensors stored packed, the writer's (name, dtype, shape) in that order)."""
    from paddle_belle.convert.engine import paddle_outputs

    model_dir, source = Path(model_dir), read_config(model_dir)
    model_type = arch.model_type_of(source, f"{model_dir}/config.json")
    spec, dims = arch.get(model_type), arch.paddle_config(model_type, source)  # PaddleNLP's field names
    plan = {name: (config, False) for name in spec.linear_weights(dims)}  # name -> (grid, stored transposed)
    if config.quantize_lm_head:
        if spec.tied(dims):
            raise ValueError(TIED_HEAD_ERROR)
        plan[spec.head] = (config, False)
    plan.update({name: (config.embedding_config(), transpose)
                 for name, transpose in token_tables(spec, dims, config).items()})
    expected = spec.model_shapes(dims)  # a tied head's PaddleNLP copy is not written quantized (models/loading.py)
    tensors = [t for t in paddle_outputs(model_dir, dims)[0] if t.name not in spec.tied_copies(dims)]
    for t in tensors:
        if expected.get(t.name) != t.shape:
            raise CheckpointError(f"{t.source.file}: tensor {t.name} " + (f"has shape {t.shape}, the config implies "
                                  f"{expected[t.name]}" if t.name in expected else f"is not a {model_type} weight"))
    missing = sorted(set(expected) - {t.name for t in tensors})
    if missing:
        raise CheckpointError(f"{model_dir}: lacks {len(missing)} tensor(s) the config implies, e.g. {missing[0]}")
    order = {name: i for i, name in enumerate(expected)}
    tensors.sort(key=lambda t: order[t.name])
    specs = []
    for t in tensors:
        if t.name not in plan:
            specs.append((t.name, t.dtype, t.shape))
            continue
        grid, transpose = plan[t.name]
        (rows, cols), stem = t.shape[::-1] if transpose else t.shape, t.name[: -len(".weight")]
        specs += [(f"{stem}.qweight", np.dtype("uint8"), [-(-rows // grid.per_byte), cols]),
                  (f"{stem}.scales", np.dtype("float32"), [grid.groups(rows), cols])]
        specs += [(f"{stem}.zeros", np.dtype("uint8"), [grid.groups(rows), cols])] if not grid.sym else []
        specs += [(f"{stem}.perm", np.dtype("int32"), [rows])] if grid.act_order else []
    return dims, spec, tensors, plan, specs


def _write_rtn(write, name: str, array: np.ndarray, plan: dict) -> None:
    """Write the source tensor ``name``: round-to-nearest and packed where the plan says, else as it is."""
    if name not in plan:
        write(name, array)
        return
    for suffix, packed in rtn_tensors(array, *plan[name]).items():
        write(f"{name[: -len('.weight')]}.{suffix}", packed)


def stream_rtn(model_dir, out: Path, config: QuantConfig) -> None:
    """Round-to-nearest of the checkpoint ``model_dir`` (PaddleNLP's layout or HF's, mapped as ``convert`` maps
    it) into ``out`` (model.safetensors + config.json), one tensor in memory at a time. The packed tensors are those
    ``quantize_model`` makes (the same quantize_rtn on the same float32 values); every other tensor keeps the
    source's dtype."""
    from paddle_belle.convert.engine import Reader

    dims, _, tensors, plan, specs = _plan(model_dir, config)
    reader = Reader()
    with safetensors_writer(out / "model.safetensors", specs) as write:
        for t in tqdm(tensors, desc=f"rtn-{config.bits}", unit="tensor", disable=None):
            _write_rtn(write, t.name, reader.output(t), plan)
    write_json(out / "config.json", {**dims, "quantization_config": config.to_dict()})


class _Rows(nn.Layer):
    """The input embedding as the source stores it (numpy), looked up row by row: block 0's calibration inputs
    need the rows of the calibration tokens only, not the whole table in float32 (4.1 GB for BELLE-7B)."""

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.table = table

    def forward(self, ids):
        return to_paddle(np.ascontiguousarray(self.table[ids.numpy()]), "float32")


@paddle.no_grad()
def stream_gptq(model_dir, out: Path, config: QuantConfig, calibration: np.ndarray, progress: bool = True) -> None:
    """GPTQ of the checkpoint ``model_dir`` (either layout) into ``out`` (model.safetensors + config.json) with the
    calibration windows [nsamples, seqlen], holding one decoder block's float32 weights at a time, plus the
    calibration activations: the model is built without memory (paddle.LazyGuard); block i's tensors are read
    from the source into it, its Linears quantized (_gptq_block, exactly as quantize_model does), written, and its
    memory released before block i+1 is read. The embedding is read once, in the source's dtype, for the rows the
    calibration needs and for its own (round-to-nearest) token table. Other tensors keep the source's dtype."""
    from paddlenlp.transformers.model_utils import dtype_guard, no_init_weights

    from paddle_belle.convert.engine import Reader
    from paddle_belle.models import MODELS

    dims, spec, tensors, plan, specs = _plan(model_dir, config)
    cls = MODELS[spec.model_type]
    with no_init_weights(), dtype_guard("float32"), paddle.LazyGuard():
        model = cls(cls.config_class.from_dict(dict(dims)))
    model.eval()
    params, reader = model.state_dict(), Reader()
    first_shapes, _, last_shapes = spec.shapes(dims)
    prefix, blocks = f"{spec.body}.{spec.blocks}.", decoder_blocks(model)
    by_block = [[] for _ in blocks]
    for t in tensors:
        if t.name.startswith(prefix):
            by_block[int(t.name[len(prefix):].split(".")[0])].append(t)

    def load(t, array):  # into the parameter of the model built without memory, in float32
        to_paddle(array, "float32")._share_underline_tensor_to(params[t.name])

    bar = tqdm(total=len(blocks) + int(config.quantize_lm_head), desc=f"gptq-{config.bits}", unit="block",
               disable=None if progress else True)
    with safetensors_writer(out / "model.safetensors", specs) as write:
        for t in (t for t in tensors if t.name in first_shapes):  # the embedding (+ BLOOM's embedding LayerNorm)
            array = reader.output(t)
            _write_rtn(write, t.name, array, plan)
            if t.name == spec.embedding:
                model.set_input_embeddings(_Rows(array))
            else:
                load(t, array)
        inputs, extra = _block_inputs(model, calibration)
        model.set_input_embeddings(None)  # lets the table go
        for i, (block, block_tensors) in enumerate(zip(blocks, by_block)):
            kept = {}  # the tensors written as stored (norms, biases), in the source's dtype
            for t in block_tensors:
                array = reader.output(t)
                load(t, array)
                if t.name not in plan:
                    kept[t.name] = array
            quantized, inputs = _gptq_block(model, block, i, inputs, extra, config)
            linears = {f"{prefix}{i}.{path}.weight": linear for path, _, _, linear in block_linears(model, block)}
            for t in block_tensors:
                if t.name in plan:
                    _write_packed(write, t.name, quantized[id(linears[t.name])], config)
                else:
                    write(t.name, kept[t.name])
            for param in block.parameters():  # the block is done: its float32 weights go
                param._clear_data()
            bar.update()
        for t in (t for t in tensors if t.name in last_shapes):  # the final norm, a head of its own
            array = reader.output(t)
            if config.quantize_lm_head and t.name == spec.head:
                load(t, array)
                _write_packed(write, t.name, _gptq_head(model, inputs, config), config)
                bar.update()
            else:
                _write_rtn(write, t.name, array, plan)
                if t.name not in plan:
                    load(t, array)
    bar.close()
    write_json(out / "config.json", {**dims, "quantization_config": config.to_dict()})


def _write_packed(write, name: str, q, config: QuantConfig) -> None:
    stem = name[: -len(".weight")]
    write(f"{stem}.qweight", pack(q.codes, config.bits))
    write(f"{stem}.scales", q.scales)
    if not config.sym:
        write(f"{stem}.zeros", q.zeros)
    if config.act_order:
        write(f"{stem}.perm", q.perm)


def _read_text(path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None

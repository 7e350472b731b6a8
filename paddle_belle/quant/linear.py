"""Linears whose weights stay resident in compact form -- packed integers (QuantLinear) or, on the CPU, bfloat16 /
float16 (HalfLinear) -- and swapping them into a model.

Paddle's weight-only kernels (``paddle.nn.quant.weight_only_linear``) exist only for GPUs; on CPU there is no kernel
that reads integer weights (Paddle 3.3.1, python/paddle/nn/quant/quantized_linear.py), so the CPU path is ours: the
native kernel of paddle_belle/kernels (float32 inputs, when it could be built), else a pure-Paddle path that
dequantizes a block of whole groups at a time into float32 and accumulates ``x[:, rows] @ W[rows]``. Memory holds
the packed codes plus (on the Paddle path) one block, never the whole float weight.
"""
from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn as nn

from paddle_belle import kernels
from paddle_belle.quant.format import TIED_HEAD_ERROR, QuantConfig, dequantize, pack, token_tables, unpack

# A dequantized block holds at most this many weights (16 MB in float32) before its matmul.
BLOCK_ELEMENTS = 1 << 22


class KernelOrder:
    """For a layer whose weight the CPU kernels read fastest in an order of their own (kernels/cpu_matmul.cc,
    belle_retile: packed codes 64-column tiles of each chunk of rows; a dense weight its transpose): the first kernel
    call puts the weight in that order, in place (the same bytes and memory), and everything that reads it as
    the checkpoint's [in, out] puts it back first: the attribute (``layer.qweight`` / ``layer.weight``), the state
    dict (saving; loading reads it first too), moving or copying the layer, and the layer's other paths. The order
    belongs to the tensor's memory (its data pointer): a tensor given new memory holds the checkpoint's order."""

    ORDERED = ""  # the buffer or parameter kept in kernel order
    _tiles = None  # its data pointer while in kernel order

    def _ordered(self):
        return self._buffers[self.ORDERED] if self.ORDERED in self._buffers else self._parameters[self.ORDERED]

    def _retile(self, tensor, to_tiles: bool):
        raise NotImplementedError

    def _kernel_order(self):
        tensor = self._ordered()
        if self._tiles != tensor.data_ptr():
            self._retile(tensor.detach(), True)  # (detach: the same memory, which an in-place op may write)
            self._tiles = tensor.data_ptr()
        return tensor

    def _plain_order(self):
        tensor = self._ordered()
        if self._tiles is not None and self._tiles == tensor.data_ptr():
            self._retile(tensor.detach(), False)
        self._tiles = None
        return tensor

    def __getattr__(self, name):
        if name == self.ORDERED and self.__dict__.get("_tiles") is not None:  # (forward reads the dicts directly)
            return self._plain_order()
        return super().__getattr__(name)

    def _state_dict_impl(self, *args, **kwargs):
        self._plain_order()
        return super()._state_dict_impl(*args, **kwargs)

    def _apply(self, *args, **kwargs):
        self._plain_order()
        return super()._apply(*args, **kwargs)

    def __getstate__(self):  # copy.deepcopy, pickle: the copy's memory is new
        self._plain_order()
        return super().__getstate__()


class QuantLinear(KernelOrder, nn.Layer):
    """y = x @ dequant(qweight) + bias, with the buffers of the checkpoint format (quant/format.py)."""

    ORDERED = "qweight"

    def __init__(self, in_features: int, out_features: int, config: QuantConfig, bias: bool = False,
                 dtype: str = "float32"):
        super().__init__()
        self.in_features, self.out_features, self.config = in_features, out_features, config
        self.group_size = config.group_size_for(in_features)
        n_groups = config.groups(in_features)
        rows = -(-in_features // config.per_byte)
        # Uninitialised (never touched, so never resident) until loading hands over the checkpoint's tensors:
        # zeros here would hold a second copy of the packed model while it loads.
        self.register_buffer("qweight", paddle.empty([rows, out_features], "uint8"))
        self.register_buffer("scales", paddle.empty([n_groups, out_features], "float32"))
        # None buffers are absent from the state dict: symmetric layers have no zeros, plain ones no perm.
        self.register_buffer("zeros", None if config.sym else paddle.empty([n_groups, out_features], "uint8"))
        self.register_buffer("perm", paddle.arange(in_features, dtype="int32") if config.act_order else None)
        self.bias = self.create_parameter([out_features], dtype=dtype, is_bias=True) if bias else None
        self._weight_only = None  # GPU: (weight, scale, algo) prepared for weight_only_linear, False if unusable

    @classmethod
    def from_codes(cls, codes, scales, zeros, config: QuantConfig, perm=None, bias=None) -> "QuantLinear":
        """Build from unpacked codes [in, out] (rows in ``perm`` order when given), scales/zeros [groups, out]."""
        codes = codes.numpy() if isinstance(codes, paddle.Tensor) else codes
        layer = cls(codes.shape[0], codes.shape[1], config, bias is not None,
                    str(bias.dtype).replace("paddle.", "") if bias is not None else "float32")
        layer.qweight.set_value(paddle.to_tensor(pack(codes, config.bits)))
        layer.scales.set_value(paddle.to_tensor(scales).astype("float32"))
        if layer.zeros is not None:
            layer.zeros.set_value(paddle.to_tensor(zeros).astype("uint8"))
        if layer.perm is not None and perm is not None:  # else the identity (RTN keeps the input order)
            layer.perm.set_value(paddle.to_tensor(perm).astype("int32"))
        if bias is not None:
            layer.bias.set_value(bias)
        return layer

    def extra_repr(self):
        c = self.config
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={c.bits}, "
                f"group_size={c.group_size}, sym={c.sym}, act_order={c.act_order}")

    def _retile(self, tensor, to_tiles):
        kernels.retile(tensor, self.in_features, self.config.bits, self.group_size, to_tiles)

    # ------------------------------------------------------------------------------------------ weights
    def codes(self, start: int = 0, stop: int | None = None, columns=None) -> paddle.Tensor:
        """Unpacked codes (int32) of stored rows [start, stop); ``start`` is a multiple of per_byte. ``columns``
        (int64 indices): those output columns only, in that order, read without touching the others."""
        stop = self.in_features if stop is None else stop
        per, bits = self.config.per_byte, self.config.storage_bits
        packed = self._plain_order()[start // per : -(-stop // per)]
        if columns is not None:
            packed = paddle.gather(packed, columns, axis=1)  # (index_select has no uint8 kernel on CPU)
        packed = packed.astype("int32")
        if per == 1:
            return packed
        parts = [paddle.bitwise_and(paddle.bitwise_right_shift(packed, paddle.to_tensor(bits * j, "int32")),
                                    paddle.to_tensor((1 << bits) - 1, "int32")) for j in range(per)]
        return paddle.stack(parts, axis=1).reshape([-1, packed.shape[1]])[: stop - start]

    def dequantize(self, start: int = 0, stop: int | None = None, dtype: str = "float32",
                   columns=None, scaled: bool = True) -> paddle.Tensor:
        """The float weight of stored rows [start, stop) (``start`` on a whole byte), [rows, out]; or of the given
        ``columns`` only, [rows, len(columns)]. ``scaled=False``: code - zero only (exact integers)."""
        stop = self.in_features if stop is None else stop
        g0, g1 = start // self.group_size, -(-stop // self.group_size)
        index = paddle.arange(start, stop) // self.group_size - g0  # group of each row, within the block
        pick = (lambda t: t) if columns is None else (lambda t: paddle.gather(t, columns, axis=1))
        if self.zeros is not None:
            zero = pick(self.zeros[g0:g1]).astype("float32").index_select(index, axis=0)
        else:
            zero = float(1 << (self.config.bits - 1))
        weight = self.codes(start, stop, columns).astype("float32") - zero
        if scaled:
            weight = weight * pick(self.scales[g0:g1]).index_select(index, axis=0)
        return weight.astype(dtype)

    def weight(self) -> paddle.Tensor:
        """The whole dequantized weight [in, out] in the input's original row order (for tests and export)."""
        w = self.dequantize()
        if self.perm is not None:
            w = paddle.zeros_like(w).scatter(self.perm.astype("int64"), w)
        return w

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, x):
        # The buffers straight from their dict: self.qweight etc. each go through Paddle's Layer.__getattr__ (0.7 us;
        # a decoding step calls this for every Linear: 96 times in bloom-560m)
        buffers = self._buffers
        if buffers["perm"] is not None:  # act-order: rows are stored in GPTQ's order, so read the input in that order
            # gather, not index_select: on the CPU index_select took 130 us for a 4096-row x at decode, gather 13
            # (benchmarks/cpu_kernels.py "act-ord" rows); int32 indices as stored, no cast per call.
            x = paddle.gather(x, buffers["perm"], axis=-1)
        if paddle.is_compiled_with_cuda() and x.place.is_gpu_place():
            out = self._gpu_forward(x)
            if out is not None:
                return out
        elif kernels.usable(x):  # the native CPU kernel reads the packed codes directly, every bit width
            return kernels.quant_matmul(x, self._kernel_order(), buffers["scales"], buffers["zeros"], self.config.bits,
                                        self.group_size, self._parameters.get("bias"), tiled=True)
        if kernels.int8_activations(self.config.bits) and kernels.cpu_inference(x):  # what the kernel would compute
            return self._int8_blockwise_forward(x)
        return self._blockwise_forward(x)

    def _blockwise_forward(self, x):
        """Dequantize whole groups a block at a time and accumulate their matmuls (any device, any dtype)."""
        rows = max(1, BLOCK_ELEMENTS // (self.group_size * self.out_features)) * self.group_size
        out = None
        for start in range(0, self.in_features, rows):
            stop = min(start + rows, self.in_features)
            part = paddle.matmul(x[..., start:stop], self.dequantize(start, stop, dtype=x.dtype))
            out = part if out is None else out + part
        return out if self.bias is None else out + self.bias

    def _int8_blockwise_forward(self, x):
        """The native kernel's integer path in Paddle (kernels/cpu_matmul.cc, "int8 activations"), with the same
        integers: x quantized per row in blocks of at most 32 inputs within a group (scale max|x| / 127, round half
        to even), and each block's dot q . (code - zero), an integer below 2^24 that a float32 matmul computes
        exactly; then y += scale * (x's scale * dot). A batch of blocks at a time, at most BLOCK_ELEMENTS weights
        and BLOCK_ELEMENTS products, so memory stays bounded."""
        shape, K, N = x.shape, self.in_features, self.out_features
        x = x.reshape([-1, K])
        M = x.shape[0]
        # Blocks (first row, rows): at most 32 rows, never across a group; rows padded with zeros to 32.
        blocks = [(k, min(k + 32, g + self.group_size, K)) for g in range(0, K, self.group_size)
                  for k in range(g, min(g + self.group_size, K), 32)]
        index = paddle.to_tensor([[k if k < k1 else K for k in range(k0, k0 + 32)] for k0, k1 in blocks], "int64")
        xb = paddle.gather(paddle.concat([x, paddle.zeros([M, 1], x.dtype)], axis=1), index.reshape([-1]), axis=1)
        xb = xb.reshape([M, len(blocks), 32]).transpose([1, 0, 2])  # [blocks, M, 32]
        finite = paddle.isfinite(xb).all(axis=-1, keepdim=True)
        scale = xb.abs().max(axis=-1, keepdim=True) / 127.0
        # + - 1.5 * 2^23: round half to even in float32, as the kernel does (paddle.round rounds half away from 0)
        q = (xb / scale + 12582912.0) - 12582912.0
        q = paddle.where(finite & (scale > 0), q, paddle.zeros_like(q))
        scale = paddle.where(finite, scale, paddle.full_like(scale, float("nan")))  # inf/NaN in x: NaN, as the kernel
        per_batch = max(1, min(BLOCK_ELEMENTS // (32 * N), BLOCK_ELEMENTS // (M * N)))
        out = None
        for b0 in range(0, len(blocks), per_batch):
            b1 = min(b0 + per_batch, len(blocks))
            start, stop = blocks[b0][0], blocks[b1 - 1][1]
            weight = paddle.concat([self.dequantize(start, stop, scaled=False), paddle.zeros([1, N])])
            local = (index[b0:b1] - start).clip(max=stop - start)  # padding -> the zero row
            weight = paddle.gather(weight, local.reshape([-1]), axis=0).reshape([b1 - b0, 32, N])
            groups = paddle.to_tensor([k0 // self.group_size for k0, _ in blocks[b0:b1]], "int64")
            scales = paddle.gather(self.scales, groups, axis=0).unsqueeze(1)  # [blocks, 1, N]
            part = (scales * (scale[b0:b1] * paddle.matmul(q[b0:b1], weight))).sum(axis=0)
            out = part if out is None else out + part
        out = out.reshape([*shape[:-1], N])
        return out if self.bias is None else out + self.bias

    def _gpu_forward(self, x):
        """Paddle's weight-only kernel where its layout holds our integers exactly: symmetric 4/8-bit with group
        size -1, 64 or 128. weight_quantize re-derives its own scales (max|w| / qmax per group); it is used only
        if dequantizing its result reproduces our weight, which holds unless GPTQ clipped a group to -2^(bits-1).
        Otherwise (and for 2/3-bit, asymmetric, other group sizes) the block-wise path runs on the GPU."""
        if self._weight_only is None:
            self._weight_only = False
            c = self.config
            if c.sym and c.bits in (4, 8) and c.group_size in (-1, 64, 128) and x.dtype in (paddle.float16, paddle.bfloat16):
                algo = f"weight_only_int{c.bits}"
                arch = paddle.device.cuda.get_device_capability()
                arch = arch[0] * 10 + arch[1]
                w = self.dequantize(dtype=x.dtype)
                try:
                    qw, scale = paddle.nn.quant.weight_quantize(w, algo=algo, arch=arch, group_size=c.group_size)
                    back = paddle.nn.quant.weight_dequantize(qw, scale, algo=algo, out_dtype=x.dtype,
                                                             group_size=c.group_size)
                except (RuntimeError, ValueError, NotImplementedError):  # e.g. an arch without these kernels
                    return None
                # Exact up to half-precision rounding: no code may move by a step (a quarter step is the margin).
                step = self.scales.index_select(paddle.arange(self.in_features) // self.group_size, axis=0)
                w, back = w.astype("float32"), back.astype("float32")
                if bool(((back - w).abs() <= 0.25 * step + 1e-3 * w.abs()).all()):
                    self._weight_only = (qw, scale, algo, arch)
        if not self._weight_only:
            return None
        qw, scale, algo, arch = self._weight_only
        return paddle.nn.quant.weight_only_linear(x, qw, bias=self.bias, weight_scale=scale,
                                                  weight_dtype=algo.replace("weight_only_", ""), arch=arch,
                                                  group_size=self.config.group_size)


class QuantEmbedding(QuantLinear):
    """A token embedding E [vocab, hidden] stored as the LM head tied to it, the QuantLinear E^T [hidden, vocab]
    (quant/format.py): ``logits(x)`` is that QuantLinear (the native kernel on CPU), and a lookup dequantizes only
    the columns of the tokens it reads."""

    def __init__(self, in_features: int, out_features: int, config: QuantConfig, bias: bool = False,
                 dtype: str = "float32"):  # in_features: the hidden size, out_features: the vocabulary
        super().__init__(in_features, out_features, config, bias, dtype)
        self.dtype_name = dtype  # what lookups return: the model's activations

    def forward(self, ids):
        if ids.place.is_cpu_place() and self._buffers["qweight"].place.is_cpu_place():
            return self._cpu_lookup(ids)
        flat = ids.reshape([-1]).astype("int64")
        return self.dequantize(dtype=self.dtype_name, columns=flat).t().reshape([*ids.shape, self.in_features])

    def _cpu_lookup(self, ids):
        """``dequantize(columns=ids)`` in numpy on zero-copy views of the buffers, with the same float32 arithmetic
        (quant/format.py unpack, dequantize), where Paddle's path is a dozen small ops (gathers, casts,
        index_selects). belle-7b-2m's int8 table, one token: 375-490 -> 180-240 us, most of it now the column's
        4096 reads one table row apart (a cache and TLB miss each; 16 tokens: 2.5 -> 1.7 ms)."""
        flat = ids.numpy().reshape(-1)
        view = lambda name: np.from_dlpack(self._buffers[name].detach())[:, flat]  # noqa: E731
        scales = view("scales")
        zeros = view("zeros") if self.zeros is not None else np.full(scales.shape, 1 << (self.config.bits - 1))
        table = dequantize(unpack(self._code_columns(flat), self.config.bits, self.in_features), scales, zeros,
                           self.group_size)
        out = paddle.to_tensor(np.ascontiguousarray(table.T).reshape([*ids.shape, self.in_features]))
        return out if self.dtype_name == "float32" else out.astype(self.dtype_name)

    def logits(self, x):
        return super().forward(x)

    def _code_columns(self, flat):
        """The packed codes of columns ``flat`` [stored rows, len(flat)], read in whichever order qweight is: the
        head's kernel keeps it in tile order (KernelOrder), and every lookup putting it back would cost a pass over
        the table a token."""
        qweight = self._buffers["qweight"]
        codes = np.from_dlpack(qweight.detach())
        if self._tiles != qweight.data_ptr():
            return codes[:, flat]
        # The tile order (kernels/cpu_matmul.cc, Tiles: slabs of TILE_K = 128 inputs within a group, TILE = 64
        # columns; tests/quant/test_linear.py reads lookups in both orders). Each stored row's slab: first stored row,
        # rows.
        if getattr(self, "_slabs", None) is None:
            per, K, G = self.config.per_byte, self.in_features, self.group_size
            slabs = [(k, min(k + 128, g + G, K)) for g in range(0, K, G) for k in range(g, min(g + G, K), 128)]
            first = np.concatenate([np.full(-(-k1 // per) - k0 // per, k0 // per) for k0, k1 in slabs])
            rows = np.concatenate([np.full(-(-k1 // per) - k0 // per, -(-k1 // per) - k0 // per) for k0, k1 in slabs])
            self._slabs = first[:, None].astype(np.int64), rows[:, None].astype(np.int64)
        first, rows = self._slabs
        N, flat = codes.shape[1], flat.astype(np.int64)[None, :]
        tile = flat // 64 * 64
        width = np.minimum(64, N - tile)
        stored = np.arange(codes.shape[0], dtype=np.int64)[:, None]
        return codes.reshape(-1)[first * N + tile * rows + (stored - first) * width + flat - tile]


class Transposed(KernelOrder):
    """KernelOrder for a dense weight [in, out] (float32, bfloat16, float16): the kernels' order is its transpose."""

    ORDERED = "weight"

    def _retile(self, tensor, to_tiles):
        kernels.retile(tensor, tensor.shape[0], 0, 0, to_tiles)


class HalfLinear(Transposed, nn.Layer):
    """y = x @ weight + bias on the CPU with ``weight`` [in, out] kept in bfloat16 or float16 (Paddle's CPU matmul
    has neither): the native kernel reads it in float32 arithmetic, transposed in place (KernelOrder) so that each
    output is one dot product over a contiguous row; without the kernels (or with gradients) a block of rows at a
    time is widened to float32, never the whole weight at once."""

    def __init__(self, in_features: int, out_features: int, dtype: str, bias: bool = False):
        super().__init__()
        self.weight = self.create_parameter([in_features, out_features], dtype=dtype)
        self.bias = self.create_parameter([out_features], dtype="float32", is_bias=True) if bias else None

    def forward(self, x):
        if kernels.usable(x):  # (the bias straight from its dict, as in QuantLinear.forward)
            return kernels.dense_matmul(x, self._kernel_order(), self._parameters.get("bias"), transposed=True)
        rows = max(1, BLOCK_ELEMENTS // self.weight.shape[1])
        out = sum(paddle.matmul(x[..., k : k + rows], self.weight[k : k + rows].astype(x.dtype))
                  for k in range(0, self.weight.shape[0], rows))
        return out if self.bias is None else out + self.bias


class FloatLinear(Transposed, nn.Linear):
    """A float32 nn.Linear whose weight the CPU kernels read transposed in place, as HalfLinear's (KernelOrder): a
    plain nn.Linear becomes one at its first kernel call in CPU inference (linear(), kernel_weight(): the class
    changes, nothing else; it stays an nn.Linear to isinstance). Loading, calibration (hooks) and training
    (gradients) take no kernel, so they meet plain nn.Linears, the type PaddleSlim's GPTQ insists on. One row,
    2 threads, bloom-560m's Linears, weights rotated over 1 GB, in one process, ms, [in, out] -> transposed (stop 32,
    the Zen 5 guest): 1024 x 3072 0.316 -> 0.259, 1024 x 1024 0.116 -> 0.095, 1024 x 4096 0.431 -> 0.372, 4096 x
    1024 0.446 -> 0.351 (no count of rows read side by side, 1-8, did as well on [in, out])."""

    def forward(self, x):
        weight = self._parameters["weight"]
        if self._tiles == weight.data_ptr() and not paddle.is_grad_enabled():  # prompts: Paddle's matmul reads the
            out = paddle.matmul(x, weight.reshape(weight.shape[::-1]), transpose_y=True)  # order as it lies
            return out if self.bias is None else out + self.bias
        return super().forward(x)  # (self.weight: the checkpoint's order)


def float_kernel_order(layer):
    """The weight of a float32 nn.Linear (or FloatLinear) in kernel order, the layer a FloatLinear from then on."""
    if type(layer) is nn.Linear:
        layer.__class__ = FloatLinear
    return layer._kernel_order()


# Rows of x for which linear() takes the native kernel. benchmarks/cpu_kernels.py at bloom-560m's shapes, 2 threads:
# Paddle's matmul takes 2.4-3.0x the kernel's time at 4 rows, 1.2-1.8x at 8 and 16 (one thread: 1.4-1.6x up to 64
# rows); 2-3 rows were not timed apart (between 1 and 4). One row is bound by the weight's bytes, which Paddle's
# matmul streams at 14-19 GB/s where the kernel reads 18-36 (bloom-560m's and bloom-7b's shapes, weights beyond the
# L3 cache: benchmarks/cpu_kernels.py; cpu_matmul.cc, DENSE_CHUNK): bloom-560m float32 decoding, one process,
# alternating, 7.3 tok/s with Paddle's one-row Linears, 9.2 with the kernel's (the head on numpy in both).
FLOAT_KERNEL_ROWS = range(1, 65)


def linear(layer, x):
    """``layer(x)``; for a plain float32 nn.Linear in CPU inference on FLOAT_KERNEL_ROWS rows of x (continuous
    batching's decoding steps, and one decoded row) the same product through the native float32 kernel: at several
    rows the step is compute-bound, and Paddle 3.3.1's CPU matmul (MKL's AVX2 path, ~45 GFLOP/s a core on Zen 4)
    reaches ~2/3 of the kernel's speed at bloom-560m's shapes (benchmarks/cpu_kernels.py --m 8,16); at one row it
    reads the weight more slowly (FLOAT_KERNEL_ROWS). Prefill chunks and training (gradients) are Paddle's. The
    first kernel call makes the Linear a FloatLinear (its weight transposed in place); until then, and so for
    loading, calibration and training, a Linear stays exactly nn.Linear (PaddleSlim's GPTQ, the tests' reference,
    accepts no other type: paddleslim/quant/advanced/gptq.py). A layer with hooks is always called."""
    if layer._forward_pre_hooks or layer._forward_post_hooks:
        return layer(x)
    kind = type(layer)
    if kind in (QuantLinear, HalfLinear):  # ours: forward without Layer.__call__'s checks (models/base.py Layer)
        return layer.forward(x)
    if kind not in (nn.Linear, FloatLinear) or paddle.is_grad_enabled() or not x.place.is_cpu_place():
        return layer(x)
    rows = math.prod(x.shape[:-1])  # (not x.size: Paddle's Tensor.size takes numpy's prod, 8 us a call)
    weight, bias = layer._parameters["weight"], layer._parameters.get("bias")  # (the dicts: see FloatLinear)
    if rows in FLOAT_KERNEL_ROWS and weight.dtype == paddle.float32 and kernels.usable(x):
        return kernels.dense_matmul(x, float_kernel_order(layer), bias, transposed=True)
    if kind is FloatLinear:
        return layer.forward(x)
    # The op nn.Linear runs on the CPU (paddle/nn/functional/common.py linear), without the flag that function
    # looks up first on every call (paddle.get_flags: 7 us, as long as a decoding row's product in a small model)
    return paddle._C_ops.linear(x, weight, bias)


def kernel_weight(layer, rows: int):
    """What a native layer op (kernels/decoder_layer.cc) needs to compute ``linear(layer, x)`` for ``rows`` float32
    rows of CPU inference as linear() would through the kernels: the tensors (weight or packed codes, scales, zeros,
    perm, bias, those present; packed codes put in tile order, a dense weight transposed) and (bits, 0 for a dense
    weight; group_size; flags ZEROS 1 | PERM 2 | BIAS 4 | INT8_X 8 | TILED 16). None where linear() would not take
    a kernel: hooks, a non-float32 bias, a float32 Linear with gradients on or past FLOAT_KERNEL_ROWS, another layer
    type."""
    if layer._forward_pre_hooks or layer._forward_post_hooks:
        return None
    kind, parameters = type(layer), layer._parameters
    bias = parameters.get("bias")
    if bias is not None and bias.dtype != paddle.float32:
        return None
    flags = 4 if bias is not None else 0
    if kind is QuantLinear:
        buffers, bits = layer._buffers, layer.config.bits
        tensors = [layer._kernel_order(), buffers["scales"]]
        for name, flag in (("zeros", 1), ("perm", 2)):
            if buffers[name] is not None:
                tensors.append(buffers[name])
                flags |= flag
        layout = (bits, layer.group_size, flags | (8 if kernels.int8_activations(bits) else 0) | 16)
    elif kind is HalfLinear:
        tensors, layout = [layer._kernel_order()], (0, 0, flags | 16)
    elif (kind in (nn.Linear, FloatLinear) and rows in FLOAT_KERNEL_ROWS and not paddle.is_grad_enabled()
          and parameters["weight"].dtype == paddle.float32):
        tensors, layout = [float_kernel_order(layer)], (0, 0, flags | 16)
    else:
        return None
    return (tensors + [bias] if bias is not None else tensors), layout


# ----------------------------------------------------------------------------------------- model surgery
def decoder_blocks(model) -> nn.LayerList:
    """The transformer blocks of our BLOOM (``bloom.h``) or LLaMA (``llama.layers``)."""
    return getattr(model.base_model, model.arch.blocks)


def block_linears(model, block: nn.Layer) -> list[tuple[str, nn.Layer, str, nn.Linear]]:
    """(path in the block, parent, attribute, Linear) for each Linear of ``block``, in the order of the
    architecture's linear_groups (arch.py)."""
    found = []
    for group in model.arch.linear_groups:
        for path in group:
            *parents, attr = path.split(".")
            parent = block
            for name in parents:
                parent = getattr(parent, name)
            found.append((path, parent, attr, getattr(parent, attr)))
    return found


def quantizable(model, config: QuantConfig) -> list[tuple[str, nn.Layer, str, nn.Linear]]:
    """Every Linear quantization replaces: those of the decoder blocks, and the LM head when asked."""
    found = [item for block in decoder_blocks(model) for item in block_linears(model, block)]
    if config.quantize_lm_head:
        head = getattr(model, "lm_head", None)
        if head is None or model.arch.tied(model.config):
            raise ValueError(TIED_HEAD_ERROR)
        found.append(("lm_head", model, "lm_head", head))
    return found


def replace_linears(model, config: QuantConfig) -> None:
    """Swap every quantizable Linear for an (empty) QuantLinear of the same shape, and the token tables for their
    quantized forms when ``config.embedding`` asks, ready for load_weights."""
    for _, parent, attr, linear in quantizable(model, config):
        in_features, out_features = linear.weight.shape
        bias = linear.bias is not None
        dtype = str(linear.weight.dtype).replace("paddle.", "")
        setattr(parent, attr, QuantLinear(in_features, out_features, config, bias, dtype))
    tables = token_tables(model.arch, model.config, config)
    if tables:
        embedding = model.get_input_embeddings()
        dtype = str(embedding.weight.dtype).replace("paddle.", "")
        vocab, hidden = embedding.weight.shape
        model.set_input_embeddings(QuantEmbedding(hidden, vocab, config.embedding_config(), dtype=dtype))
        if model.arch.head in tables:
            model.lm_head = QuantLinear(*model.lm_head.weight.shape, config.embedding_config(), dtype=dtype)
    model.quantization = config


def keep_half(model, dtype: str) -> None:
    """Make ``model`` (built in float32, not yet loaded) hold its Linear weights and input embedding in ``dtype``
    (bfloat16 or float16) for the CPU: Linears become HalfLinears, the embedding's rows are widened as they are
    looked up, a tied head goes through the native kernel (cpu.tied_head); norms and biases stay float32."""
    for block in decoder_blocks(model):
        for _, parent, attr, linear in block_linears(model, block):
            if type(linear) is nn.Linear:  # a quantized checkpoint's Linears are QuantLinears already
                setattr(parent, attr, HalfLinear(*linear.weight.shape, dtype, linear.bias is not None))
    if not model.arch.tied(model.config) and type(model.lm_head) is nn.Linear:
        model.lm_head = HalfLinear(*model.lm_head.weight.shape, dtype)
    embedding = model.get_input_embeddings()
    if isinstance(embedding, QuantEmbedding):  # a quantized checkpoint's token tables are integers already
        return
    embedding.weight = embedding.create_parameter(embedding.weight.shape, dtype=dtype)
    embedding.register_forward_post_hook(lambda layer, inputs, out: out.astype("float32"))

"""GPTQ (Frantar et al. 2022, arXiv:2210.17323) through PaddleSlim's implementation.

PaddleSlim 2.6.0's ``paddleslim.quant.advanced.GPTQ`` is used as it is for the calibration pass: wrapped around a
Linear, its ``forward`` accumulates the Hessian 2/n Σ x xᵀ of the layer's inputs. Its ``fasterquant`` cannot be
used as shipped:

1. on paddle 3.3.1 it crashes at ``H[dead, dead] = 1`` whenever no input column is dead (Paddle rejects the empty
   index tensor; paddleslim/quant/advanced/gptq.py, ``fasterquant``), i.e. on nearly every real layer;
2. it writes fake-quantized floats back into the layer and throws the scales away: packing needs the integer codes
   and the per-group scales;
3. its grid is symmetric only (``--asym`` needs GPTQ's zero points), and it prints three lines per layer.

``gptq`` below is therefore PaddleSlim's ``fasterquant`` restated in numpy with those four changes and nothing else:
same block size, damping, act-order permutation, group boundaries (taken in processing order) and symmetric grid.
tests/quant/test_gptq.py runs the library's own ``fasterquant`` on a layer with a dead column (where it does
not crash) and checks that both write the same weights.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import paddle
import scipy.linalg
from paddleslim.quant.advanced import GPTQ as _PaddleSlimGPTQ

from paddle_belle.quant.format import QuantConfig, grid_params, quantize_codes


@dataclass
class QuantizedWeight:
    codes: np.ndarray  # uint8 [in, out], rows in ``perm`` order when act-order is on
    scales: np.ndarray  # float32 [groups, out]
    zeros: np.ndarray  # uint8 [groups, out]
    perm: np.ndarray | None  # int32 [in]: stored row i is input row perm[i]


class GPTQ(_PaddleSlimGPTQ):
    """PaddleSlim's GPTQ wrapper (Hessian accumulation in ``forward``), with a ``quantize`` that returns codes."""

    def add_batch(self, inp):
        """PaddleSlim's ``forward`` without the layer's own output, which a calibration pass that stops at this
        layer does not need: the running Hessian 2/n Σ x xᵀ, the same ops in the same order
        (paddleslim/quant/advanced/gptq.py ``GPTQ.forward``; named after the reference's ``add_batch``)."""
        inp = inp.cast("float32")
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape((-1, inp.shape[-1])).t()
        self.hessian *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = math.sqrt(2 / self.nsamples) * inp
        self.hessian += paddle.matmul(inp, inp.t())

    def quantize(self, config: QuantConfig, blocksize: int = 128, percdamp: float = 0.01) -> QuantizedWeight:
        H = self.hessian
        del self.hessian
        self.quantized = True
        return quantize_linear(self.layer, H, config, blocksize, percdamp)


def quantize_linear(linear, H, config: QuantConfig, blocksize: int = 128, percdamp: float = 0.01) -> QuantizedWeight:
    """GPTQ of ``linear`` with the Hessian ``H`` of its inputs; the Linear is left holding the dequantized weight,
    as PaddleSlim's fasterquant leaves it."""
    q, fake = gptq(linear.weight.astype("float32").numpy(), H.numpy(), config, blocksize, percdamp)
    paddle.assign(paddle.to_tensor(fake).astype(linear.weight.dtype), output=linear.weight)
    return q


def gptq(weight: np.ndarray, H: np.ndarray, config: QuantConfig, blocksize: int = 128,
         percdamp: float = 0.01) -> tuple[QuantizedWeight, np.ndarray]:
    """PaddleSlim's ``fasterquant`` (with the changes above) in numpy, on a Paddle-layout weight [in, out] and the
    Hessian [in, in] of its inputs. Returns the codes and the fake-quantized weight [in, out] (input order).

    numpy, not Paddle ops: the loop over the input columns runs ~10 small ops per column, and a Paddle op's
    dispatch (tens of microseconds on the CPU) cost more than its arithmetic (SmolLM2-135M: README "Quantizing").
    The column loop is float32, as the reference; the damped Hessian's inverse and its Cholesky factor are float64
    (two O(in^3) steps per layer, cheap beside the calibration passes), so a float32-indefinite Hessian needs the
    extra damping less often. Rows of W here are the reference's columns: [in, out] makes each one contiguous."""
    bits, sym = config.bits, config.sym
    W = np.array(weight, np.float32)  # a copy: updated in place below
    columns = W.shape[0]
    size = config.group_size_for(columns)
    H = np.array(H, np.float64)
    whole = grid_params(W, bits, sym) if config.group_size == -1 else None  # before dead columns, as PaddleSlim

    dead = np.diag(H) == 0  # change 1: PaddleSlim's H[dead, dead] = 1 crashes on an empty index
    H[dead, dead] = 1
    W[dead] = 0
    perm = None
    if config.act_order:  # quantize columns in order of decreasing Hessian diagonal
        perm = np.argsort(-np.diag(H), kind="stable")
        W, H = W[perm], H[perm][:, perm]

    diagonal = np.diag(H).copy()
    damp = percdamp * np.mean(diagonal)
    for _ in range(4):
        try:
            H[np.arange(columns), np.arange(columns)] = diagonal + damp  # in place: at 7B, H is 2 GB in float64
            Hinv = _upper_cholesky_of_inverse(H).astype(np.float32)
            break
        except np.linalg.LinAlgError:  # not positive definite: damp more
            damp = damp * 10
            warnings.warn(f"GPTQ: Hessian of a {list(W.shape[::-1])} weight not positive definite; damping x10")
    else:
        raise ValueError(f"GPTQ: the Hessian of a {list(W.shape[::-1])} weight is not positive definite even with "
                         f"{damp / 10:.3g} on its diagonal; try more or other calibration text")

    Q, codes = np.zeros_like(W), np.zeros(W.shape, np.uint8)
    scale, zero = whole if whole is not None else (None, None)
    scales, zeros = ([scale], [zero]) if whole is not None else ([], [])
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        Err1 = np.zeros((i2 - i1, W.shape[1]), np.float32)
        for i in range(i1, i2):
            if config.group_size != -1 and i % size == 0:  # group boundaries in processing order, as PaddleSlim
                scale, zero = grid_params(W[i : i + size], bits, sym)
                scales.append(scale)
                zeros.append(zero)
            w = W[i]
            codes[i] = quantize_codes(w, scale, zero, bits)  # change 2: keep the codes
            Q[i] = (codes[i] - zero) * scale
            Err1[i - i1] = (w - Q[i]) / Hinv[i, i]
            W[i:i2] -= np.outer(Hinv[i, i:i2], Err1[i - i1])  # W[i1:i2] is the block in place: later groups see it
        W[i2:] -= Hinv[i1:i2, i2:].T @ Err1

    if perm is not None:
        Q = Q[np.argsort(perm)]
    return QuantizedWeight(codes=codes, scales=np.stack(scales).astype(np.float32),
                           zeros=np.stack(zeros).astype(np.uint8),
                           perm=None if perm is None else perm.astype(np.int32)), Q


def _upper_cholesky_of_inverse(H: np.ndarray) -> np.ndarray:
    """U upper with U^T U = H^-1: the reference's cholesky(cholesky_inverse(cholesky(H)), upper=True), in half its
    work. With J the reversal, J H J = M M^T (M lower) gives H^-1 = (J M^-1 J)^T (J M^-1 J), and J M^-1 J is upper
    with a positive diagonal, so it is U: one Cholesky and one triangular inverse instead of an inverse and two
    Cholesky factorisations (SmolLM2's down_proj, 1536^2: 1.9 s instead of 3.4 s in float64 on a busy machine)."""
    M = np.linalg.cholesky(H[::-1, ::-1])  # raises LinAlgError when H is not positive definite
    inverse, info = scipy.linalg.lapack.dtrtri(M, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"triangular inverse failed (info {info})")
    return inverse[::-1, ::-1]

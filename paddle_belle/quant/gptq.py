"""GPTQ (Frantar et al. 2022, arXiv:2210.17323) as PaddleSlim implements it, restated in numpy.

PaddleSlim 2.6.0's ``paddleslim.quant.advanced.GPTQ`` wraps a Linear: its ``forward`` accumulates the Hessian
2/n Σ x xᵀ of the layer's inputs, its ``fasterquant`` quantizes the weight. Neither is used as shipped:

1. on paddle 3.3.1 ``fasterquant`` crashes at ``H[dead, dead] = 1`` whenever no input column is dead (Paddle
   rejects the empty index tensor; paddleslim/quant/advanced/gptq.py, ``fasterquant``), i.e. on nearly every real
   layer;
2. it writes fake-quantized floats back into the layer and throws the scales away: packing needs the integer codes
   and the per-group scales;
3. its grid is symmetric only (``--asym`` needs GPTQ's zero points), and it prints three lines per layer;
4. its Hessian runs the layer's own output too and a Paddle matmul 3-7x slower than numpy's here (``Hessian``).

``Hessian`` and ``gptq`` below are therefore PaddleSlim's matrix and ``fasterquant`` restated in numpy with those
changes and nothing else: same block size, damping, act-order permutation, group boundaries (taken in processing
order) and symmetric grid. tests/quant/test_gptq.py runs the library's own ``forward`` and ``fasterquant`` on a
layer with a dead column (where it does not crash) and checks that both give the same Hessian and weights.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import paddle
import scipy.linalg
import threadpoolctl

from paddle_belle.quant.format import QuantConfig, grid_params, quantize_codes


@dataclass
class QuantizedWeight:
    codes: np.ndarray  # uint8 [in, out], rows in ``perm`` order when act-order is on
    scales: np.ndarray  # float32 [groups, out]
    zeros: np.ndarray  # uint8 [groups, out]
    perm: np.ndarray | None  # int32 [in]: stored row i is input row perm[i]


class Hessian:
    """The Hessian 2/n Σ X_iᵀ X_i of a Linear's inputs over n calibration windows X_i [tokens, in]: the matrix
    PaddleSlim's GPTQ.forward accumulates (paddleslim/quant/advanced/gptq.py), summed in numpy rather than with its
    Paddle ops: numpy computes ``x.T @ x`` as one BLAS syrk (half a matmul's work), and Paddle 3.3.1's CPU matmul
    (MKL's AVX2 path on Zen 4) took 3-7x as long (SmolLM2-135M's down_proj input, [512, 1536] a window: 87-150 ms
    vs 25-36 ms), a third of GPTQ's calibration passes. A float32 sum scaled once at the end where PaddleSlim keeps
    a running mean: equal to its matrix within float32 rounding (tests/quant/test_gptq.py)."""

    def __init__(self, columns: int):
        self.sum, self.n = np.zeros((columns, columns), np.float32), 0

    def add(self, x) -> None:
        """One window's inputs (a Paddle tensor [1, tokens, in]; [tokens, in] counts as one window too)."""
        self.n += x.shape[0] if len(x.shape) == 3 else 1
        x = x.reshape([-1, x.shape[-1]]).numpy().astype(np.float32, copy=False)
        self.sum += x.T @ x

    def matrix(self) -> np.ndarray:
        return self.sum * np.float32(2 / self.n)


def quantize_linears(linears, H: np.ndarray, config: QuantConfig, blocksize: int = 128,
                     percdamp: float = 0.01) -> list[QuantizedWeight]:
    """GPTQ of Linears that read the same input, with the Hessian ``H`` of that input; the inverse Hessian's factor
    is computed once for all of them (q/k/v, gate/up). Each Linear is left holding its dequantized weight, as
    PaddleSlim's fasterquant leaves it."""
    factor = inverse_factor(H, config.act_order, percdamp)
    out = []
    for linear in linears:
        q, fake = gptq(linear.weight.astype("float32").numpy(), H, config, blocksize, percdamp, factor)
        paddle.assign(paddle.to_tensor(fake).astype(linear.weight.dtype), output=linear.weight)
        out.append(q)
    return out


def inverse_factor(H: np.ndarray, act_order: bool, percdamp: float = 0.01):
    """What GPTQ needs of the Hessian [in, in] alone: (its dead inputs (a zero diagonal), the act-order permutation
    or None, the upper Cholesky factor of the damped inverse in processing order, float32)."""
    H = np.array(H, np.float64)
    columns = H.shape[0]
    dead = np.diag(H) == 0  # change 1: PaddleSlim's H[dead, dead] = 1 crashes on an empty index
    H[dead, dead] = 1
    perm = None
    if act_order:  # quantize the columns in order of decreasing Hessian diagonal
        perm = np.argsort(-np.diag(H), kind="stable")
        H = H[perm][:, perm]
    diagonal = np.diag(H).copy()
    damp = percdamp * np.mean(diagonal)
    for _ in range(4):
        try:
            H[np.arange(columns), np.arange(columns)] = diagonal + damp  # in place: at 7B, H is 2 GB in float64
            return dead, perm, _upper_cholesky_of_inverse(H).astype(np.float32)
        except np.linalg.LinAlgError:  # not positive definite: damp more
            damp = damp * 10
            warnings.warn(f"GPTQ: Hessian of a {columns}-input Linear not positive definite; damping x10")
    raise ValueError(f"GPTQ: the Hessian of a {columns}-input Linear is not positive definite even with "
                     f"{damp / 10:.3g} on its diagonal; try more or other calibration text")


def gptq(weight: np.ndarray, H: np.ndarray, config: QuantConfig, blocksize: int = 128, percdamp: float = 0.01,
         factor=None) -> tuple[QuantizedWeight, np.ndarray]:
    """PaddleSlim's ``fasterquant`` (with the changes above) in numpy, on a Paddle-layout weight [in, out] and the
    Hessian [in, in] of its inputs (or ``factor``, inverse_factor's result for it). Returns the codes and the
    fake-quantized weight [in, out] (input order).

    numpy, not Paddle ops: the loop over the input columns runs ~10 small ops per column, and a Paddle op's
    dispatch (tens of microseconds on the CPU) cost more than its arithmetic (SmolLM2-135M: README "Quantizing").
    The column loop is float32, as the reference; the damped Hessian's inverse and its Cholesky factor are float64
    (two O(in^3) steps per Hessian, cheap beside the calibration passes), so a float32-indefinite Hessian needs the
    extra damping less often. Rows of W here are the reference's columns: [in, out] makes each one contiguous."""
    bits, sym = config.bits, config.sym
    W = np.array(weight, np.float32)  # a copy: updated in place below
    columns = W.shape[0]
    size = config.group_size_for(columns)
    whole = grid_params(W, bits, sym) if config.group_size == -1 else None  # before dead columns, as PaddleSlim
    dead, perm, Hinv = factor or inverse_factor(H, config.act_order, percdamp)
    W[dead] = 0
    if perm is not None:
        W = W[perm]

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
    Cholesky factorisations. The triangular inverse runs on one thread: scipy's OpenBLAS dtrtri on two threads of a
    busy 2-core machine took 10-20x as long as on one (SmolLM2's 576^2: 250 vs 12 ms; 1536^2: 1.1 s vs 0.12 s)."""
    M = np.linalg.cholesky(H[::-1, ::-1])  # raises LinAlgError when H is not positive definite
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        inverse, info = scipy.linalg.lapack.dtrtri(M, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"triangular inverse failed (info {info})")
    return inverse[::-1, ::-1]

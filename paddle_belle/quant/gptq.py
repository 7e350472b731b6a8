"""GPTQ (Frantar et al. 2022, arXiv:2210.17323) through PaddleSlim's implementation.

PaddleSlim 2.6.0's ``paddleslim.quant.advanced.GPTQ`` is used as it is for the calibration pass: wrapped around a
Linear, its ``forward`` accumulates the Hessian 2/n Σ x xᵀ of the layer's inputs. Its ``fasterquant`` cannot be
used as shipped:

1. on paddle 3.3.1 it crashes at ``H[dead, dead] = 1`` whenever no input column is dead (Paddle rejects the empty
   index tensor; paddleslim/quant/advanced/gptq.py, ``fasterquant``), i.e. on nearly every real layer;
2. it writes fake-quantized floats back into the layer and throws the scales away: packing needs the integer codes
   and the per-group scales;
3. its grid is symmetric only (``--asym`` needs GPTQ's zero points), and it prints three lines per layer.

``GPTQ.quantize`` below is therefore PaddleSlim's ``fasterquant`` restated with those four changes and nothing else:
same block size, damping, act-order permutation, group boundaries (taken in processing order) and symmetric grid.
tests/quant/test_gptq.py runs the library's own ``fasterquant`` on a layer with a dead column (where it does
not crash) and checks that both write the same weights.
"""
from __future__ import annotations

import warnings

from dataclasses import dataclass

import numpy as np
import paddle
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

    def quantize(self, config: QuantConfig, blocksize: int = 128, percdamp: float = 0.01) -> QuantizedWeight:
        bits, sym = config.bits, config.sym
        # [out, in], the orientation of the reference code, as a contiguous copy: on paddle 3.3.1 ``astype`` to the
        # same dtype returns the transposed view itself (PaddleSlim's ``cast`` copies), and index assignment into
        # that strided view (W[:, dead] = 0 below) writes the wrong elements, into the layer's own weight.
        W = self.layer.weight.t().astype("float32").contiguous()
        columns = self.columns
        size = config.group_size_for(columns)
        H = self.hessian
        del self.hessian
        whole = grid_params(W, bits, sym) if config.group_size == -1 else None  # before dead columns, as PaddleSlim

        dead = paddle.diag(H) == 0
        if bool(dead.any()):  # change 1: index only when there is something to index (empty index crashes)
            index = paddle.nonzero(dead).flatten()
            H[index, index] = 1
            W[:, index] = 0
        perm = None
        if config.act_order:  # quantize columns in order of decreasing Hessian diagonal
            perm = paddle.argsort(paddle.diag(H), descending=True)
            W = W.transpose((1, 0))[perm].transpose((1, 0))
            H = H[perm].transpose((1, 0))[perm].transpose((1, 0))

        damp = percdamp * paddle.mean(paddle.diag(H))
        diag = paddle.arange(columns)
        for _ in range(4):
            try:
                damped = H.clone()
                damped[diag, diag] += damp
                Hinv = paddle.linalg.cholesky(paddle.inverse(damped), upper=True)
                break
            except ValueError:  # not positive definite in float32 (seen with 48 x 512 calibration tokens): damp more
                damp = damp * 10
                warnings.warn(f"GPTQ: Hessian of a {list(W.shape)} weight not positive definite; damping x10")
        else:
            raise ValueError(f"GPTQ: the Hessian of a {list(W.shape)} weight is not positive definite even with "
                             f"{damp / 10:.3g} on its diagonal; try more or other calibration text")

        Q = paddle.zeros_like(W)
        codes = paddle.zeros_like(W)
        scales, zeros = [], []
        scale, zero = whole if whole is not None else (None, None)
        if whole is not None:
            scales.append(scale)
            zeros.append(zero)
        for i1 in range(0, columns, blocksize):
            i2 = min(i1 + blocksize, columns)
            W1 = W[:, i1:i2]  # a view: updates below reach W, whose later columns the group scales read
            Q1 = paddle.zeros_like(W1)
            Err1 = paddle.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            for i in range(i2 - i1):
                if config.group_size != -1 and (i1 + i) % size == 0:
                    scale, zero = grid_params(W[:, i1 + i : i1 + i + size], bits, sym)
                    scales.append(scale)
                    zeros.append(zero)
                w = W1[:, i]
                d = Hinv1[i, i]
                c = quantize_codes(w, scale, zero, bits)  # change 2: keep the codes
                q = (c - zero) * scale
                codes[:, i1 + i] = c
                Q1[:, i] = q
                err1 = (w - q) / d
                W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
                Err1[:, i] = err1
            Q[:, i1:i2] = Q1
            if i2 < columns:
                W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

        if perm is not None:
            Q = Q.transpose((1, 0))[paddle.argsort(perm)].transpose((1, 0))
        paddle.assign(Q.t().astype(self.layer.weight.dtype), output=self.layer.weight)  # as PaddleSlim leaves it
        self.quantized = True
        return QuantizedWeight(
            codes=codes.t().astype("uint8").numpy(),
            scales=paddle.stack(scales).numpy().astype(np.float32),
            zeros=paddle.stack(zeros).astype("uint8").numpy(),
            perm=None if perm is None else perm.astype("int32").numpy(),
        )

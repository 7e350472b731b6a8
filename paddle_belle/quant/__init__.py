"""Low-bit weight quantization: GPTQ (PaddleSlim) and round-to-nearest, the packed checkpoint format, and the
QuantLinear that runs it."""
from paddle_belle.quant.format import QuantConfig, dequantize, pack, unpack
from paddle_belle.quant.linear import QuantLinear, replace_linears
from paddle_belle.quant.quantize import calibration_windows, quantize_checkpoint, quantize_model

__all__ = ["QuantConfig", "QuantLinear", "calibration_windows", "dequantize", "pack", "quantize_checkpoint",
           "quantize_model", "replace_linears", "unpack"]

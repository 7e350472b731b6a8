"""Low-bit weights at run time: the packed checkpoint format (format.py) and the QuantLinear that computes with it
(linear.py). Making them (GPTQ through PaddleSlim, or RTN) is quantize.py's job, imported on its own: loading a
quantized checkpoint needs neither PaddleSlim nor the quantizer."""
from paddle_belle.quant.format import QuantConfig, dequantize, pack, unpack
from paddle_belle.quant.linear import QuantEmbedding, QuantLinear, replace_linears

__all__ = ["QuantConfig", "QuantEmbedding", "QuantLinear", "dequantize", "pack", "replace_linears", "unpack"]

"""Weight-only quantisation: block-wise int4/int8 weights that ONNX Runtime executes natively
(MatMulNBits, GatherBlockQuantized) and torch simulates with the same rounding."""

from qtf_edge.quant.blockwise import BITS, DEFAULT_BLOCK, WeightQuant
from qtf_edge.quant.layers import (QuantizedEmbedding, QuantizedLinear, dequantized_copy,
                                   quantizable_layers, quantize_layers, quantized_layers,
                                   weight_bytes)

__all__ = ["BITS", "DEFAULT_BLOCK", "QuantizedEmbedding", "QuantizedLinear", "WeightQuant",
           "dequantized_copy", "quantizable_layers", "quantize_layers", "quantized_layers",
           "weight_bytes"]

"""Symmetric block-wise rounding of a weight matrix, exactly as ONNX Runtime stores it.

A weight W (out N, in K) is cut along K into blocks; each block keeps one float32 scale and
`bits`-bit integer codes, W ~= codes * scale. The rule is ONNX Runtime's symmetric one
(onnxruntime.quantization's quantize_matmul_{4,8}bits, which write MatMulNBits weights):

    m     = the block's entry of largest magnitude, with its sign
    scale = m / -2**(bits - 1)
    codes = clamp(round(W / scale), -2**(bits - 1), 2**(bits - 1) - 1)

so the largest entry is exact (code -2**(bits-1)) and rounding again gives the same codes:
a model trained or healed on these weights exports to the same integers. int4 uses blocks of
`block` inputs (32 by default, as llama.cpp's Q4 and ONNX Runtime's examples); int8 uses
one block per output channel (the whole row, padded to a power of two, MatMulNBits's rule;
at most 256 inputs a block, the most ONNX Runtime packs); rows that are not a power of two
may take smaller blocks (block_size).

torch does the rounding here, not ONNX Runtime's kernels, because training needs it on any
device and with a gradient (straight-through: the forward rounds, the backward passes the
gradient on as if it had not); tests/test_quant.py checks the codes against ONNX Runtime's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BITS = (4, 8)
DEFAULT_BLOCK = 32
MIN_BLOCK = 16        # MatMulNBits and GatherBlockQuantized take blocks of >= 16, powers of 2
MAX_BLOCK = 256       # and ONNX Runtime's quantiser (MLAS) packs blocks of at most 256
SCALE_BYTES = 4       # float32 scales (MatMulNBits's scales have the activations' type)


def is_block_size(block) -> bool:
    return (isinstance(block, int) and not isinstance(block, bool)
            and MIN_BLOCK <= block <= MAX_BLOCK and block & (block - 1) == 0)


def block_size(bits: int, block: int, in_features: int) -> int:
    """The block a layer of `in_features` inputs uses. int8: one scale per output channel
    (the row, rounded up to a power of two, MatMulNBits's rule; rows longer than MAX_BLOCK
    take blocks of MAX_BLOCK, a scale per 256 weights); int4: `block`. Either
    way, a smaller power of two where it stores the row in fewer bytes: padding costs more
    than scales when the row is not a power of two (a row of 96: three int8 blocks of 32,
    108 bytes, not one of 128, 132; a rank-48 factor: three int4 blocks of 16, not two of
    32 that are a quarter padding)."""
    row = min(MAX_BLOCK, max(MIN_BLOCK, 1 << (in_features - 1).bit_length()))
    largest = row if bits == 8 else min(block, row)
    sizes = [MIN_BLOCK << k for k in range((largest // MIN_BLOCK).bit_length())]
    return min(sizes, key=lambda size: (math.ceil(in_features / size)
                                        * (size * bits // 8 + SCALE_BYTES), -size))


@dataclass(frozen=True)
class WeightQuant:
    bits: int
    block: int  # inputs per scale

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ValueError(f"weight bits must be one of {BITS}, got {self.bits!r}")
        if not is_block_size(self.block):
            raise ValueError(f"block size must be a power of two in [{MIN_BLOCK}, {MAX_BLOCK}], "
                             f"got {self.block!r}")

    @property
    def levels(self) -> int:
        return 2 ** (self.bits - 1)

    def codes(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes (N, K) as floats in [-levels, levels - 1], scales (N, K / block))."""
        rows, cols = weight.shape
        n_blocks = math.ceil(cols / self.block)
        padded = torch.nn.functional.pad(weight.float(), (0, n_blocks * self.block - cols))
        blocks = padded.reshape(rows, n_blocks, self.block)
        high, low = blocks.amax(-1), blocks.amin(-1)
        scale = torch.where(high.abs() > low.abs(), high, low) / -self.levels
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)  # an all-zero block
        codes = (blocks / safe[..., None]).round().clamp(-self.levels, self.levels - 1)
        codes = torch.where(scale[..., None] == 0, torch.zeros_like(codes), codes)
        return codes.reshape(rows, -1)[:, :cols], scale

    def dequantize(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight the runtime computes with: codes * scales, in weight's dtype."""
        codes, scale = self.codes(weight)
        expanded = scale.repeat_interleave(self.block, dim=1)[:, :codes.shape[1]]
        return (codes * expanded).to(weight.dtype)

    def fake_quantize(self, weight: torch.Tensor) -> torch.Tensor:
        """dequantize(weight) forward, identity backward (straight-through estimator)."""
        return weight + (self.dequantize(weight) - weight).detach()

    def nbytes(self, rows: int, cols: int) -> int:
        """Bytes stored for a (rows, cols) weight: packed codes and float32 scales."""
        n_blocks = math.ceil(cols / self.block)
        return rows * n_blocks * (self.block * self.bits // 8 + SCALE_BYTES)

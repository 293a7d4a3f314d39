"""Compression: TT-SVD truncation with ranks allocated across layers to meet a budget.

    from qtf_edge.compress import compress_model
    from qtf_edge.train.budget import parse_budget
    result = compress_model(model, parse_budget("params=0.25x"), "rpi4")
"""

from qtf_edge.compress.allocate import (full_allocation, greedy_allocation, params_cost,
                                        total_cost, uniform_allocation)
from qtf_edge.compress.pipeline import METHODS, CompressResult, compress_model, target_config
from qtf_edge.compress.spectra import LayerSpectrum, layer_spectrum

__all__ = ["METHODS", "CompressResult", "LayerSpectrum", "compress_model", "full_allocation",
           "greedy_allocation", "layer_spectrum", "params_cost", "target_config", "total_cost",
           "uniform_allocation"]

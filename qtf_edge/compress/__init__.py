"""Compression: activation-aware TT-SVD / low-rank truncation with ranks allocated across
layers to meet a budget, healed by distillation from the uncompressed model.

    from qtf_edge.compress import compress_model
    from qtf_edge.train.budget import parse_budget
    result = compress_model(model, parse_budget("params=0.25x"), "rpi4")
"""

from qtf_edge.compress.allocate import (full_allocation, greedy_allocation, params_cost,
                                        total_cost, uniform_allocation)
from qtf_edge.compress.pipeline import (ALLOCATORS, METHODS, CompressResult, compress_model,
                                        target_config)
from qtf_edge.compress.spectra import LayerSpectrum, layer_spectrum

__all__ = ["ALLOCATORS", "METHODS", "CompressResult", "LayerSpectrum", "compress_model",
           "full_allocation", "greedy_allocation", "layer_spectrum", "params_cost",
           "target_config", "total_cost", "uniform_allocation"]

"""Classical B-spline KAN activations (pykan's layout) and their fits to other activations."""

from qtf_edge.kan.bspline import GRID_SIZE_RANGE, ORDER_RANGE, BSplineActivation
from qtf_edge.kan.fit import FitError, fit_bspline
from qtf_edge.kan.pykan_layout import pykan_state_dict

__all__ = ["GRID_SIZE_RANGE", "ORDER_RANGE", "BSplineActivation", "FitError", "fit_bspline",
           "pykan_state_dict"]

"""Distillation into the deploy form: circuits folded, DARUAN activations fitted by B-splines.

    from qtf_edge.distill import DistillOptions, distill_run
    report = distill_run("runs/tiny-qtf", "runs/tiny-deploy", DistillOptions(grid=16))
"""

from qtf_edge.distill.agreement import TIE_TOLERANCE, Agreement, LogitAgreement, compare
from qtf_edge.distill.calibration import daruan_input_ranges
from qtf_edge.distill.deploy import (
                                     FittedActivation,
                                     deploy_model,
                                     fit_activations,
                                     has_simulation,
                                     widened,
)
from qtf_edge.distill.pipeline import (
                                     REPORT_FILE,
                                     DistillOptions,
                                     DistillReport,
                                     distill_model,
                                     distill_run,
)

__all__ = ["REPORT_FILE", "TIE_TOLERANCE", "Agreement", "DistillOptions", "DistillReport",
           "FittedActivation", "LogitAgreement", "compare",
           "daruan_input_ranges", "deploy_model", "distill_model", "distill_run", "fit_activations",
           "has_simulation", "widened"]

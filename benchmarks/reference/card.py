"""The reference model card's claims under test, and the tolerances of the verdicts."""

from __future__ import annotations

# ---------------------------------------------------------------------------- the card

# The figures under test: the reference Q-TensorFormer v4 model card as quoted in issue 9.
# They are claims, not results of this project; nothing else in this file is a number to
# report. The card gives no per-row numbers for its ablation or for medium/xl.
CARD = {
    "source": "reference Q-TensorFormer v4 model card, as quoted in issue 9",
    "params": {"small": {"dense": 1.55e6, "qtf": 0.79e6},     # d=128
               "large": {"dense": 10.76e6, "qtf": 1.33e6}},   # d=512
    "perplexity": {"dense": 65.0, "qtf_low": 68.0, "qtf_high": 72.0},
    "energy_uj": {"cpu_xeon": {"dense": 120.0, "qtf": 60.0},      # the card's "CPU"
                  "edge_mobile": {"dense": 350.0, "qtf": 95.0}},  # the card's "mobile"
    "quantum_path_usage": 0.20,
    "cpu_latency_ratio": 2.04,  # "+104% CPU latency against dense"
    "scale": {"small": (128, 3), "medium": (256, 4), "large": (512, 6), "xl": (768, 12)},
}
# When a measured figure counts as reproducing a claim (see REFERENCE.md, "Verdicts").
COMPRESSION_TOLERANCE = 0.9      # our dense/QTF parameter ratio >= 0.9 x the card's
ENERGY_TOLERANCE = 1.1           # our QTF/dense energy ratio <= 1.1 x the card's
QUANTUM_USAGE_TOLERANCE = 0.03   # |routed share - 0.20| <= 0.03
LATENCY_BAND = (0.8, 1.25)       # our QTF/dense decode ratio within this x the card's 2.04

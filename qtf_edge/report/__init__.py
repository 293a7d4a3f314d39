"""qtf-edge report: one self-contained HTML page about a run or a bundle."""

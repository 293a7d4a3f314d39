"""qtf-edge profile: measured latency on this machine, labelled energy, predictions for
devices that are not here."""

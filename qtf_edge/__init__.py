"""qtf-edge: compressed, quantum-inspired language models for small devices.

"Quantum" in this package always means an exact classical simulation of a few qubits
(statevectors in float32); no quantum hardware is used or implied.
"""

__version__ = "0.1.0"

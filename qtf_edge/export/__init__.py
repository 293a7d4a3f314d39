"""Export passes: a run folder -> ONNX graphs (float, int8) -> a self-checking bundle.

The recipes that drive them live in the top-level `export/` folder (one YAML per target).
"""

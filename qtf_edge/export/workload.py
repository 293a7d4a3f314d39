"""A generation step's workload as the exported graphs run it: FLOPs and bytes per model
part (cost.counts.model_cost) with the TT lowerings the export chose for that graph.

Export writes the decode step's workload into the bundle's manifest (`decode_workload`),
where the device-side run.py, which has no torch and no qtf_edge, reads it to put its
measured decode time against its own roofline (`run.py --calibrate`). `qtf-edge profile`
computes the same figures from the source run for its predictions. Both call
`step_workload`, so the device's efficiency and the host's are taken against the same
count.
"""

from __future__ import annotations

from qtf_edge.cost.counts import model_cost
from qtf_edge.export.lowering import apply_lowering

MANIFEST_KEY = "decode_workload"
# A query as `qtf-edge profile` and `run.py --calibrate` time it, where the context allows:
# a prompt of PROMPT_TOKENS, then NEW_TOKENS generated (one prefill, NEW_TOKENS - 1 decode
# steps).
PROMPT_TOKENS = 32
NEW_TOKENS = 16

Workload = dict[str, tuple[float, float]]  # part -> (FLOPs, bytes)


def step_workload(model, tokens: int, context: int, lowering: list[dict] | None = None
                  ) -> Workload:
    """{part: (FLOPs, bytes)} of one call of `tokens` new tokens attending over `context`
    tokens (decode: 1 token; prefill: tokens == context). `lowering`: the rows export's
    lower_tt pass chose for the graph (set on `model`); None keeps the model's own, as
    eager PyTorch runs it."""
    if lowering:
        apply_lowering(model, lowering)
    return {part: (cost.flops, cost.bytes_moved)
            for part, cost in model_cost(model, tokens, context).items()}


def graph_lowering(manifest: dict, graph: str) -> list[dict] | None:
    """The lower_tt pass's rows for `graph` ("prefill" or "decode") from a bundle's
    manifest (its export report), or None when the export lowered nothing."""
    report = manifest.get("extra", {}).get("export", {})
    layers = next((p["details"]["layers"] for p in report.get("passes", [])
                   if p.get("pass") == "lower_tt"), None)
    return layers.get(graph) if layers else None


def query_lengths(context_length: int) -> tuple[int, int]:
    """(prompt tokens, new tokens) of the query timed on a model of this context: the
    defaults where they fit below it, else half and a quarter of it."""
    if PROMPT_TOKENS + NEW_TOKENS < context_length:
        return PROMPT_TOKENS, NEW_TOKENS
    return max(1, context_length // 2), max(2, context_length // 4)


def decode_context(prompt_tokens: int, new_tokens: int) -> int:
    """The context of the mean decode step of a query: the prompt plus half the new
    tokens."""
    return prompt_tokens + new_tokens // 2


def manifest_entry(model, context_length: int, decode_lowering: list[dict] | None) -> dict:
    """The manifest's `decode_workload`: the mean decode step of the default query (see
    query_lengths) on the decode graph's lowerings."""
    prompt_tokens, new_tokens = query_lengths(context_length)
    context = decode_context(prompt_tokens, new_tokens)
    parts = step_workload(model, 1, context, decode_lowering)
    return {"context": context, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "parts": {part: {"flops": flops, "bytes": moved}
                      for part, (flops, moved) in parts.items()},
            "method": "qtf_edge.cost.counts.model_cost of one decode step at `context` "
                      "tokens, with the decode graph's TT lowerings; bytes are float32 DRAM "
                      "traffic of a cache-less machine (an upper bound)"}

"""Where an eager PyTorch decode step's time goes, by model part.

The graphs' breakdown comes from onnxruntime's profiler (operators.py); a run folder has
no graph, so this times the same parts in eager PyTorch: a forward pre-hook and hook on
every part module (embeddings, each block's encoder/router/attention/FFN and their norms,
the final norm, an untied head) read the clock around it. The step's time outside those
modules is the model's own code: the tied vocabulary projection (x @ E.T, the bulk of it)
and the residual adds, reported under "head" when the head is tied and "other" when not.
"""

from __future__ import annotations

import time

import torch

from qtf_edge.profile.measure import TorchGenerator
from qtf_edge.profile.operators import group_by_part

TOP_LEVEL = ("token_embedding", "position_embedding", "ln_final", "head")
IN_BLOCK = ("ln_encoder", "encoder", "router", "ln_attention", "attention", "ln_ffn", "ffn")


def part_modules(model) -> dict[str, torch.nn.Module]:
    """{module path: module} of the modules whose time is a part's time."""
    named = dict(model.named_modules())
    paths = [p for p in TOP_LEVEL if named.get(p) is not None]
    paths += [f"blocks.{i}.{child}" for i, block in enumerate(model.blocks)
              for child in IN_BLOCK if getattr(block, child, None) is not None]
    return {path: named[path] for path in paths}


class _PartClock:
    """Accumulates microseconds per module path while its hooks are installed, from the
    model's second forward on: the first is the prompt's prefill, not a decode step."""

    def __init__(self, model, modules: dict[str, torch.nn.Module]):
        self.us = dict.fromkeys(modules, 0.0)
        self.forwards = 0
        self._started: dict[str, float] = {}
        self._handles = [model.register_forward_pre_hook(self._count)]
        for path, module in modules.items():
            self._handles.append(module.register_forward_pre_hook(self._start(path)))
            self._handles.append(module.register_forward_hook(self._stop(path)))

    def _count(self, module, args):
        self.forwards += 1

    def _start(self, path):
        def hook(module, args):
            self._started[path] = time.perf_counter()
        return hook

    def _stop(self, path):
        def hook(module, args, output):
            seconds = time.perf_counter() - self._started.pop(path)
            if self.forwards > 1:
                self.us[path] += seconds * 1e6
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def torch_decode_breakdown(model, prompt_ids: list[int], steps: int, threads: int) -> dict:
    """Prefill the prompt, then time `steps` greedy decode steps with the KV cache (the
    torch row's own generator), per part; the same shape as operators.decode_breakdown's
    result (no kernel counts)."""
    model = model.eval()
    clock = _PartClock(model, part_modules(model))
    timings: list[float] = []
    try:
        TorchGenerator(model, threads)(prompt_ids, steps + 1, timings=timings)
    finally:
        clock.remove()
    total_us = sum(timings[1:]) * 1e6  # timings[0] is the prefill
    timed = [(f"{path}/forward", "", us) for path, us in clock.us.items()]
    # the model-level remainder: the tied head's product when there is no head module
    remainder_op = "MatMul" if getattr(model, "head", None) is None else ""
    timed.append(("model/forward", remainder_op, max(0.0, total_us - sum(clock.us.values()))))
    parts = group_by_part(timed, steps)
    for row in parts.values():
        del row["kernels_per_step"]  # hooks, not kernels
    return {"graph": "torch eager", "steps": steps, "threads": threads,
            "method": "forward hooks around each part's modules",
            "ms_per_step": total_us / steps / 1e3, "parts": parts}

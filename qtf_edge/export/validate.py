"""Do the ONNX graphs compute what the torch model computes? Run both on token windows.

    float_result = validate_graphs(model, "out/prefill.onnx", "out/decode.onnx", windows)
    check_thresholds(float_result, "float")
    int8_result = validate_graphs(model, "out/prefill_int8.onnx", "out/decode_int8.onnx",
                                  windows, reference=float_result)
    check_thresholds(int8_result, "int8")

Windows are lists of context_length + 1 token ids (inputs window[:-1], targets window[1:]),
as `qtf_edge.derived.calibration_windows` cuts them. Per graph the result gives the max and
mean |logit difference| against torch, the share of positions whose most likely next token
is the same (top-1 agreement), and the perplexity per token of the graph's logits and of
torch's, both computed here in float64 numpy from the logits, so they differ only by the
logits.

prefill.onnx is run on whole windows. decode.onnx is run as the on-device runner runs it:
prefill.onnx on a prefix, then one token per call with every present.X fed back as
past_key_values.X, against torch's full forward pass at the decoded positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from qtf_edge.evaluate import window_batches
from qtf_edge.logit_agreement import LogitAgreement

FLOAT_TOP1_AGREEMENT = 0.999   # float graph vs torch: only float32 near-ties may flip
INT8_PERPLEXITY_RATIO = 1.03   # int8 graph vs the float graph
KINDS = ("float", "int8")
PAST, PRESENT = "past_key_values.", "present."


class ValidationError(ValueError):
    """A graph missed its threshold (one line with the numbers)."""


def session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with `threads` intra-op threads (0: one per core)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an integer >= 0, got {threads!r}")
    if not Path(path).is_file():
        raise ValueError(f"no ONNX graph at {path}; expected a .onnx file (run the export first)")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def token_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed cross-entropy (nats, float64) of logits (..., V) at integer targets (...)."""
    logits = logits.astype(np.float64)
    top = logits.max(-1, keepdims=True)
    log_normaliser = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    picked = np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    return float((log_normaliser - picked).sum())


def perplexity(nll: float, positions: int) -> float:
    """exp(mean NLL); inf rather than OverflowError for a graph whose logits blew up."""
    mean = nll / max(positions, 1)
    return math.exp(mean) if mean < math.log(np.finfo(np.float64).max) else math.inf


@dataclass
class LogitComparison(LogitAgreement):
    """LogitAgreement of a graph with torch, plus both perplexities at the targets."""
    nll: float = 0.0
    torch_nll: float = 0.0

    def add(self, logits: np.ndarray, reference: np.ndarray, targets: np.ndarray) -> None:
        """logits, reference (B, T, V) float; targets (B, T) int."""
        super().add(logits, reference)
        self.nll += token_nll(logits, targets)
        self.torch_nll += token_nll(reference, targets)

    def to_dict(self, graph: str, windows: int) -> dict:
        return {"graph": graph, "windows": windows, **super().to_dict(),
                "perplexity": perplexity(self.nll, self.positions),
                "torch_perplexity": perplexity(self.torch_nll, self.positions)}


def run_graph(graph: ort.InferenceSession, feeds: dict) -> tuple[np.ndarray, dict]:
    """(logits, the next call's past_key_values.X feeds from this call's present.X)."""
    names = [o.name for o in graph.get_outputs()]
    values = dict(zip(names, graph.run(names, feeds)))
    past = {PAST + name[len(PRESENT):]: value for name, value in values.items()
            if name.startswith(PRESENT)}
    return values["logits"], past


@torch.inference_mode()
def _torch_logits(model, ids: torch.Tensor) -> np.ndarray:
    return model(ids.to(next(model.parameters()).device)).float().cpu().numpy()


def validate_prefill(model, prefill: ort.InferenceSession, windows: list[list[int]],
                     batch_size: int = 8) -> LogitComparison:
    """prefill.onnx against torch on every window, batched as evaluation batches them."""
    comparison = LogitComparison()
    for ids in window_batches(windows, batch_size, "cpu"):
        inputs = ids[:, :-1]
        logits, _ = run_graph(prefill, {"input_ids": inputs.numpy()})
        comparison.add(logits, _torch_logits(model, inputs), ids[:, 1:].numpy())
    return comparison


def prefill_then_decode(prefill: ort.InferenceSession, decode: ort.InferenceSession,
                        ids: np.ndarray, prefix: int) -> np.ndarray:
    """Logits (B, T - prefix, V) at positions prefix .. T - 1 of ids (B, T): prefill.onnx
    on ids[:, :prefix], then decode.onnx one token per call with the cache fed back."""
    _, past = run_graph(prefill, {"input_ids": ids[:, :prefix]})
    logits = []
    for t in range(prefix, ids.shape[1]):
        step, past = run_graph(decode, {"input_ids": ids[:, t:t + 1], **past})
        logits.append(step)
    return np.concatenate(logits, axis=1)


def validate_decode(model, prefill: ort.InferenceSession, decode: ort.InferenceSession,
                    windows: list[list[int]], n_windows: int = 4, steps: int = 32
                    ) -> tuple[LogitComparison, int]:
    """Prefill-then-decode against torch's full forward on the first n_windows full-length
    windows: the last `steps` input positions of each are decoded (at least one token is
    prefilled). Returns the comparison and the number of windows used."""
    length = max(len(w) for w in windows)
    chosen = np.asarray([w for w in windows if len(w) == length][:n_windows], dtype=np.int64)
    inputs = chosen[:, :-1]
    prefix = max(1, inputs.shape[1] - steps)
    comparison = LogitComparison()
    reference = _torch_logits(model, torch.from_numpy(inputs))[:, prefix:]
    comparison.add(prefill_then_decode(prefill, decode, inputs, prefix), reference,
                   chosen[:, prefix + 1:])
    return comparison, len(chosen)


def validate_graphs(model, prefill_path: str | Path, decode_path: str | Path,
                    windows: list[list[int]], *, threads: int = 1, batch_size: int = 8,
                    decode_windows: int = 4, decode_steps: int = 32,
                    reference: dict | None = None) -> dict:
    """{"prefill": {...}, "decode": {...}} (see the module docstring for the fields).

    reference: the float graphs' result, when these are their int8 forms; each graph's
    entry then also carries "float_perplexity", which check_thresholds(..., "int8") needs.
    """
    if not windows:
        raise ValueError("no calibration windows to validate on; expected at least one")
    for name, value in (("decode_windows", decode_windows), ("decode_steps", decode_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    model.eval()
    prefill, decode = session(prefill_path, threads), session(decode_path, threads)
    prefilled = validate_prefill(model, prefill, windows, batch_size)
    decoded, used = validate_decode(model, prefill, decode, windows, decode_windows, decode_steps)
    result = {"prefill": prefilled.to_dict(Path(prefill_path).name, len(windows)),
              "decode": decoded.to_dict(Path(decode_path).name, used)}
    if reference is not None:
        for name, entry in result.items():
            entry["float_perplexity"] = reference[name]["perplexity"]
    return result


def check_thresholds(result: dict, kind: str, *, top1: float = FLOAT_TOP1_AGREEMENT,
                     perplexity_ratio: float = INT8_PERPLEXITY_RATIO) -> None:
    """ValidationError unless every graph of `result` meets the thresholds of `kind`:
    "float": top-1 agreement with torch >= top1; "int8": perplexity <= perplexity_ratio x
    the float graph's."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    for name, entry in result.items():
        where = f"{entry['graph']} ({entry['positions']} positions)"
        if kind == "float" and not entry["top1_agreement"] >= top1:
            raise ValidationError(
                f"{where}: top-1 agreement with torch {entry['top1_agreement']:.4f} < {top1}; "
                f"max |logit difference| {entry['max_abs_diff']:.3g}, mean "
                f"{entry['mean_abs_diff']:.3g}")
        if kind == "int8":
            if "float_perplexity" not in entry:
                raise ValueError(f"{name}: no float_perplexity to compare with; expected a "
                                 f"result from validate_graphs(..., reference=float_result)")
            bound = perplexity_ratio * entry["float_perplexity"]
            if not entry["perplexity"] <= bound:
                raise ValidationError(
                    f"{where}: perplexity {entry['perplexity']:.4f} > {perplexity_ratio} x "
                    f"the float graph's {entry['float_perplexity']:.4f} (= {bound:.4f})")

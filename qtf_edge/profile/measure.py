"""Measure a bundle's graphs on this machine, each through the bundle's own run.py.

Every artifact runs in its own process (`run.py BUNDLE --bench N --json --runtime R
[--int8]`): the runner a device uses, and a peak RSS that belongs to that artifact alone.
A run folder (or a bundle's source run) is timed in eager PyTorch by the same bench.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from qtf_edge.export.bundle import runner_module
from qtf_edge.runs import MODEL_FILE, load_run, sha256_file

# artifact -> (its files, the first marking it present; runtime; int8)
ARTIFACTS = {"onnx": (("prefill.onnx", "decode.onnx"), "onnxruntime", False),
             "onnx_int8": (("prefill_int8.onnx", "decode_int8.onnx"), "onnxruntime", True),
             "tflite": (("model.tflite",), "ai-edge-litert", False),
             "tflite_int8": (("model_int8.tflite",), "ai-edge-litert", True)}


def measure_artifact(bundle: Path, manifest: dict, artifact: str, prompt: str,
                     new_tokens: int, runs: int, threads: int) -> dict:
    """run.py --bench for one artifact; its JSON plus the artifact's size."""
    files, runtime, int8 = ARTIFACTS[artifact]
    command = [sys.executable, str(bundle / "run.py"), str(bundle), "--prompt", prompt,
               "--bench", str(runs), "--max-new-tokens", str(new_tokens), "--threads",
               str(threads), "--runtime", runtime, "--json", "--quiet"] + (
        ["--int8"] if int8 else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise ValueError(f"{bundle}/run.py --bench failed for {artifact}: "
                         f"{done.stderr.strip().splitlines()[-1] if done.stderr else done.returncode}")
    sizes = {entry["path"]: entry["bytes"] for entry in manifest["files"]}
    return {"artifact": artifact, "file_mb": sum(sizes[f] for f in files) / 1e6,
            **json.loads(done.stdout)}


class TorchGenerator:
    """The source run in eager PyTorch behind run.py's generator interface (greedy, with
    the KV cache), so run.py's own `bench` times it like the graphs."""

    runtime = "torch (eager)"

    def __init__(self, model: torch.nn.Module, threads: int):
        self.model, self.threads = model.eval(), threads

    def __call__(self, prompt_ids, max_new_tokens, timings=None) -> list[int]:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        clock, new = time.perf_counter, []
        try:
            with torch.inference_mode():
                cache = self.model.new_cache()
                start = clock()
                logits = self.model(torch.tensor([list(prompt_ids)]), cache)[0, -1]
                while True:
                    if timings is not None:
                        timings.append(clock() - start)
                    new.append(int(logits.argmax()))
                    if len(new) >= max_new_tokens:
                        return new
                    start = clock()
                    logits = self.model(torch.tensor([[new[-1]]]), cache)[0, -1]
        finally:
            torch.set_num_threads(previous)


def measure_torch(run, prompt_ids: list[int], new_tokens: int, runs: int,
                  threads: int) -> dict:
    """run.py's bench of a run in eager PyTorch. Its peak RSS is this process's, torch
    included."""
    result = runner_module().bench(TorchGenerator(run.model, threads), prompt_ids,
                                   new_tokens, runs)
    return {"artifact": "torch", "file_mb": (run.path / MODEL_FILE).stat().st_size / 1e6,
            **result}


def source_run(manifest: dict):
    """The run the bundle was exported from, if it is still there unchanged; else None."""
    source = manifest["source"]
    model_path = Path(source["path"]) / source.get("model_file", MODEL_FILE)
    if not model_path.is_file() or sha256_file(model_path) != source["model_sha256"]:
        return None
    return load_run(source["path"])


def present_artifacts(manifest: dict) -> list[str]:
    files = {entry["path"] for entry in manifest["files"]}
    return [name for name, (artifact_files, _, _) in ARTIFACTS.items()
            if artifact_files[0] in files]


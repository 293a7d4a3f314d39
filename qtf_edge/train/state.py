"""train_state.safetensors: everything besides the weights that a resumed run needs.

One safetensors file (no pickle, so loading runs no code):

    optimizer.<param name>.exp_avg      AdamW's moments, per parameter
    optimizer.<param name>.exp_avg_sq
    optimizer.<param name>.step         AdamW's step count (a 0-d float tensor, as torch keeps it)
    rng.torch_cpu                       torch's CPU generator state (uint8)
    rng.torch_cuda                      the current CUDA generator's state, when training on CUDA

and, as JSON in the metadata key "train_state", the scalars: step, learning-rate scale
(halved by the NaN guard), elapsed time and tokens seen, plus the settings the run was
started with (train config, arch, preset, data hashes) so that a resume can check them.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from qtf_edge.runs import RunError

STATE_FORMAT = "qtf-edge-train-state"
STATE_VERSION = 1
METADATA_KEY = "train_state"
OPTIMIZER_PREFIX = "optimizer."
ADAMW_KEYS = ("exp_avg", "exp_avg_sq", "step")
CPU_RNG_KEY = "rng.torch_cpu"
CUDA_RNG_KEY = "rng.torch_cuda"


@dataclass
class TrainState:
    """Progress of a run: optimizer steps taken (0-based index of the next step), the
    learning-rate scale, and totals across sessions."""
    step: int = 0
    lr_scale: float = 1.0
    elapsed_s: float = 0.0
    tokens_seen: int = 0


def _fail(path, what: str) -> RunError:
    return RunError(" ".join(f"{path}: {what}".split()))


def train_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
                      settings: dict, device: torch.device) -> bytes:
    """The train_state.safetensors bytes. settings: JSON-able run settings to keep."""
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if key not in ADAMW_KEYS:
                    raise ValueError(f"optimizer state {key!r} is not AdamW's; expected "
                                     f"{ADAMW_KEYS}")
                tensors[f"{OPTIMIZER_PREFIX}{names[id(param)]}.{key}"] = \
                    value.detach().to("cpu").contiguous().clone()
    tensors[CPU_RNG_KEY] = torch.get_rng_state()
    if device.type == "cuda":
        tensors[CUDA_RNG_KEY] = torch.cuda.get_rng_state(device)
    doc = {"format": STATE_FORMAT, "format_version": STATE_VERSION, **asdict(state),
           "settings": settings}
    metadata = {METADATA_KEY: json.dumps(doc, sort_keys=True, allow_nan=False)}
    return safetensors.torch.save(tensors, metadata=metadata)


def read_train_state(path: str | os.PathLike) -> tuple[dict, TrainState, dict]:
    """(tensors, state, settings) from a train_state.safetensors; RunError naming the
    file if it is missing, unreadable or not a qtf-edge train state."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "missing; a run that can be resumed has its training state here")
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise _fail(path, f"not a readable safetensors file ({e})")
    try:
        doc = json.loads(metadata[METADATA_KEY])
        if doc["format"] != STATE_FORMAT or doc["format_version"] != STATE_VERSION:
            raise ValueError(f"format {doc['format']!r} version {doc['format_version']!r}")
        state = TrainState(step=int(doc["step"]), lr_scale=float(doc["lr_scale"]),
                           elapsed_s=float(doc["elapsed_s"]), tokens_seen=int(doc["tokens_seen"]))
        settings = doc["settings"]
        if not isinstance(settings, dict) or state.step < 0 or not state.lr_scale > 0:
            raise ValueError("settings, step or lr_scale out of range")
    except (KeyError, TypeError, ValueError) as e:
        raise _fail(path, f"expected {STATE_FORMAT} version {STATE_VERSION} metadata with "
                          f"step, lr_scale, elapsed_s, tokens_seen and settings ({e})")
    return tensors, state, settings


def apply_train_state(tensors: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
                      path: str | os.PathLike, device: torch.device) -> None:
    """Put the saved AdamW state and RNG states back; RunError naming the file if the
    optimizer entries do not fit the model's parameters."""
    params = dict(model.named_parameters())
    per_param: dict[str, dict] = {}
    for key, value in tensors.items():
        if not key.startswith(OPTIMIZER_PREFIX):
            continue
        name, _, field = key[len(OPTIMIZER_PREFIX):].rpartition(".")
        if name not in params or field not in ADAMW_KEYS:
            raise _fail(path, f"entry {key!r} does not fit the model's parameters")
        if field != "step" and value.shape != params[name].shape:
            raise _fail(path, f"entry {key!r} has shape {tuple(value.shape)}, expected "
                              f"{tuple(params[name].shape)}")
        per_param.setdefault(name, {})[field] = value
    incomplete = sorted(n for n, s in per_param.items() if set(s) != set(ADAMW_KEYS))
    if incomplete:
        raise _fail(path, f"optimizer state of {incomplete[0]} lacks some of {ADAMW_KEYS}")

    optimizer.state.clear()
    for name, saved in per_param.items():
        param = params[name]
        # AdamW keeps `step` on the CPU unless capturable/fused; the moments live with
        # the parameter.
        optimizer.state[param] = {
            "step": saved["step"].clone(),
            "exp_avg": saved["exp_avg"].to(param.device, param.dtype).clone(),
            "exp_avg_sq": saved["exp_avg_sq"].to(param.device, param.dtype).clone(),
        }
    if CPU_RNG_KEY in tensors:
        torch.set_rng_state(tensors[CPU_RNG_KEY])
    if CUDA_RNG_KEY in tensors and device.type == "cuda":
        torch.cuda.set_rng_state(tensors[CUDA_RNG_KEY], device)

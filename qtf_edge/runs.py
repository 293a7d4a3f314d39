"""Run folders: the checkpoint every qtf-edge command reads and writes.

A run folder holds

    config.json              {"format": "qtf-edge-run", "format_version": 1,
                              "form": "simulated" | "deploy", "model": ModelConfig.to_dict()}
    model.safetensors        the state dict (safetensors: no code runs on load)
    tokenizer.json           copied from the tokenizer given to save_run
    lineage.json             command, UTC time, package version, parent model sha256,
                             and sha256 + size of every file above (and of extra files)
    metrics.jsonl            optional, append-only (so it is not hashed)
    train_state.safetensors  optional (training only), written as an extra file

Loading reads JSON and safetensors only (nothing that can run code) and checks, in
order: the folder, each required file, config.json, every hash in lineage.json, the
safetensors file, and that its keys and shapes fit the model config.json builds. Each
failure is one `RunError` line naming the file and what was expected.

lineage.json is the commit mark: a folder is a complete run exactly when every file it
lists has the listed sha256. `save_run` stages the whole folder and renames it into
place; `save_checkpoint` updates a run in place, data files first and lineage.json last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

import qtf_edge
from qtf_edge.atomic import staged_directory, write_bytes_atomic, write_json_atomic
from qtf_edge.config import FORMS, ModelConfig
from qtf_edge.tt import TTLinear

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
LINEAGE_FILE = "lineage.json"
METRICS_FILE = "metrics.jsonl"
TRAIN_STATE_FILE = "train_state.safetensors"

RUN_FORMAT = "qtf-edge-run"
LINEAGE_FORMAT = "qtf-edge-lineage"
FORMAT_VERSION = 1
KNOWN_FORMS = FORMS  # simulated (trainable circuits) or deploy (folded, splines): see config.py
REQUIRED_FILES = (CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, LINEAGE_FILE)
UNHASHED_FILES = (METRICS_FILE,)  # append-only: a hash would be stale after each append
PREVIOUS_SUFFIX = ".prev"  # save_checkpoint keeps the last complete file under this name

__all__ = [
    "CONFIG_FILE", "LINEAGE_FILE", "METRICS_FILE", "MODEL_FILE", "TOKENIZER_FILE",
    "TRAIN_STATE_FILE", "Run", "RunError", "append_metrics", "check_new_run_dir", "load_run",
    "read_lineage", "read_metrics", "resize_tt_cores_to", "restore_previous_checkpoint", "save_checkpoint",
    "save_run", "sha256_file",
]


class RunError(ValueError):
    """A run folder (or a file in it) is missing, malformed or inconsistent.

    The message is one line naming the file and what was expected; the CLI prints it and
    exits with status 2.
    """


def _fail(path, what) -> RunError:
    """RunError '<path>: <what>' squeezed onto one line."""
    return RunError(" ".join(f"{path}: {what}".split()))


def _reason(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@dataclass(frozen=True)
class Run:
    path: Path
    config: ModelConfig
    model: nn.Module  # QTensorFormer, in eval mode, on the requested device
    tokenizer_path: Path
    lineage: dict
    form: str


# ---------------------------------------------------------------------------- hashing

def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_entry(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


# ---------------------------------------------------------------------------- writing

def _state_dict_bytes(model: nn.Module) -> bytes:
    """The state dict as safetensors bytes: contiguous CPU tensors, no shared storage."""
    tensors, seen = {}, set()
    for name, value in model.state_dict().items():
        t = value.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # safetensors refuses tensors sharing (or viewing into) storage
        seen.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        tensors[name] = t
    metadata = {"format": RUN_FORMAT, "format_version": str(FORMAT_VERSION),
                "package_version": qtf_edge.__version__}
    return safetensors.torch.save(tensors, metadata=metadata)


def _config_bytes(config: ModelConfig) -> bytes:
    doc = {"format": RUN_FORMAT, "format_version": FORMAT_VERSION, "form": config.form,
           "model": config.to_dict()}
    return (json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def _tokenizer_bytes(tokenizer) -> bytes:
    """tokenizer: a path to a tokenizer JSON file, a dict (serialised), or JSON bytes."""
    if isinstance(tokenizer, dict):
        return (json.dumps(tokenizer, ensure_ascii=False, allow_nan=False) + "\n").encode()
    if isinstance(tokenizer, (bytes, bytearray, memoryview)):
        data, source = bytes(tokenizer), "tokenizer bytes"
    elif isinstance(tokenizer, (str, os.PathLike)):
        source = Path(tokenizer)
        if not source.is_file():
            raise _fail(source, "tokenizer file not found (expected a tokenizer JSON file)")
        data = source.read_bytes()
    else:
        raise TypeError(f"tokenizer must be a path, a dict or JSON bytes, got {type(tokenizer)}")
    try:
        json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail(source, f"not valid JSON ({_reason(e)}); expected a tokenizer JSON file")
    return data


def _check_model(model) -> ModelConfig:
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not isinstance(config, ModelConfig):
        raise TypeError(f"model must be a QTensorFormer (an nn.Module with a ModelConfig "
                        f".config), got {type(model).__name__}")
    return config


def _check_extra_files(extra_files: dict) -> dict[str, bytes]:
    out = {}
    for name, data in extra_files.items():
        if (not isinstance(name, str) or Path(name).name != name or name.startswith(".")
                or name in REQUIRED_FILES or name.endswith(PREVIOUS_SUFFIX)):
            raise ValueError(f"extra file name {name!r} must be a plain file name, not hidden, "
                             f"not ending in {PREVIOUS_SUFFIX!r} and not one of {REQUIRED_FILES}")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"extra file {name!r} must be bytes, got {type(data).__name__}")
        out[name] = bytes(data)
    return out


def _now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_new_run_dir(run_dir: str | os.PathLike, overwrite: bool) -> None:
    """RunError unless run_dir is free (or may be replaced): passes that compute for a
    while call it first, so that a taken --out fails before the work, not after it."""
    if Path(run_dir).exists() and not overwrite:
        raise _fail(Path(run_dir), "already exists; expected a new run folder (choose another "
                                   "path or pass overwrite)")


def save_run(run_dir: str | os.PathLike, model: nn.Module, tokenizer, *, command: str,
             parent: str | os.PathLike | None = None, extra_files: dict | None = None,
             overwrite: bool = False) -> Path:
    """Write a complete new run folder; returns its path.

    tokenizer: path to a tokenizer JSON file (copied), or a dict, or JSON bytes.
    command: what produced the run (e.g. "train --budget 10m"), recorded in lineage.json.
    parent: the run this one was derived from; its model.safetensors sha256 is recorded.
    extra_files: {name: bytes} written and hashed too (e.g. train_state.safetensors);
        metrics.jsonl may be given but is not hashed (it is append-only).
    overwrite: replace an existing run_dir (only once the new one is fully written).

    The folder is staged beside run_dir and renamed into place when whole, so run_dir
    is either absent (or the old run) or complete. Raises RunError if run_dir exists and
    overwrite is False, or if the tokenizer or parent cannot be read.
    """
    run_dir = Path(run_dir)
    config = _check_model(model)
    if not isinstance(command, str) or not command.strip():
        raise ValueError("command must be a non-empty string")
    extras = _check_extra_files(extra_files or {})
    check_new_run_dir(run_dir, overwrite)
    parent_entry = None
    if parent is not None:
        parent_model = Path(parent) / MODEL_FILE
        if not parent_model.is_file():
            raise _fail(parent_model, "missing; expected the parent run's model file")
        parent_entry = {"path": str(Path(parent).resolve()),
                        "model_sha256": sha256_file(parent_model)}
    files = {CONFIG_FILE: _config_bytes(config), MODEL_FILE: _state_dict_bytes(model),
             TOKENIZER_FILE: _tokenizer_bytes(tokenizer), **extras}
    lineage = {
        "format": LINEAGE_FORMAT, "format_version": FORMAT_VERSION,
        "command": command, "created_utc": _now_utc(),
        "package_version": qtf_edge.__version__, "parent": parent_entry,
        "files": {name: _file_entry(data) for name, data in files.items()
                  if name not in UNHASHED_FILES},
    }
    try:
        with staged_directory(run_dir, overwrite=overwrite) as tmp:
            for name, data in files.items():
                (tmp / name).write_bytes(data)  # fsynced by staged_directory before the rename
            write_json_atomic(tmp / LINEAGE_FILE, lineage)
    except FileExistsError as e:
        raise _fail(run_dir, f"already exists; expected a new run folder ({_reason(e)})")
    return run_dir


def save_checkpoint(run_dir: str | os.PathLike, model: nn.Module, *, command: str,
                    extra_files: dict | None = None) -> Path:
    """Update an existing run in place with the model's current weights (training).

    Writes model.safetensors and each extra file (e.g. train_state.safetensors), then
    lineage.json. config.json and tokenizer.json are kept; the model's config must equal
    the run's config.json (RunError otherwise).

    Ordering, and why a kill at any moment is safe:
      1. Each file about to be replaced is first hard-linked (copied where links fail) to
         `<name>.prev` if it is the one lineage.json vouches for: the previous complete
         checkpoint's bytes stay on disk under that name (a `.prev` that an earlier
         interrupted checkpoint left, and that matches lineage.json, is kept instead).
      2. Each data file is replaced atomically (temp + fsync + rename).
      3. lineage.json is replaced atomically with the new hashes: THIS is the commit.
      4. The `.prev` files are removed.
    Killed before 3: lineage.json still lists the previous checkpoint's hashes, so the new
    model.safetensors does not match it and `load_run` refuses the folder ("incomplete");
    the `.prev` files are exactly the previous complete checkpoint, and
    `restore_previous_checkpoint` puts them back (it checks their hashes first).
    Killed after 3: the new checkpoint is complete; stray `.prev` files are ignored and
    cleared by the next checkpoint.
    Never does the folder load as a mix of old and new files.

    Resume (the train command) should call `load_run`; on the "incomplete" RunError it
    must refuse, not guess, and tell the user the two ways out: restore the previous
    checkpoint (`restore_previous_checkpoint`, then resume from it) or start a new run.
    """
    run_dir = Path(run_dir)
    config = _check_model(model)
    if not isinstance(command, str) or not command.strip():
        raise ValueError("command must be a non-empty string")
    extras = _check_extra_files(extra_files or {})
    if not run_dir.is_dir():
        raise _fail(run_dir, "not found; expected an existing run folder (create it with save_run)")
    lineage = read_lineage(run_dir)
    saved_config = _read_config(run_dir)[0]
    if saved_config != config:
        raise _fail(run_dir / CONFIG_FILE, "differs from the model's config; a checkpoint must "
                                           "keep the run's config (save a new run instead)")
    files = {MODEL_FILE: _state_dict_bytes(model), **extras}
    # 1. keep the previous complete files under <name>.prev: the file lineage.json vouches
    #    for, i.e. the current one, unless an earlier interrupted checkpoint already left
    #    the good one in .prev (then the current file is the unvouched one and is dropped).
    for name in files:
        entry = lineage["files"].get(name)
        current, previous = run_dir / name, run_dir / (name + PREVIOUS_SUFFIX)
        if entry is None or _matches(previous, entry):
            continue
        if _matches(current, entry):
            _link_or_copy(current, previous)
    # 2. the data files, each atomically
    for name, data in files.items():
        write_bytes_atomic(run_dir / name, data)
    # 3. the commit: lineage.json with the new hashes
    lineage = dict(lineage, command=command, updated_utc=_now_utc(),
                   package_version=qtf_edge.__version__,
                   files={**lineage["files"],
                          **{n: _file_entry(d) for n, d in files.items()
                             if n not in UNHASHED_FILES}})
    write_json_atomic(run_dir / LINEAGE_FILE, lineage)
    # 4. the previous checkpoint is no longer needed
    for name in files:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(run_dir / (name + PREVIOUS_SUFFIX))
    return run_dir


def _matches(path: Path, entry: dict) -> bool:
    """Whether the file exists with the size and sha256 of a lineage.json entry."""
    return (path.is_file() and path.stat().st_size == entry["bytes"]
            and sha256_file(path) == entry["sha256"])


def _link_or_copy(source: Path, target: Path) -> None:
    """target = source's bytes, atomically (hard link where possible: no copy)."""
    tmp = target.with_name(f".{target.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, target)


def restore_previous_checkpoint(run_dir: str | os.PathLike) -> list[str]:
    """After an interrupted `save_checkpoint`: move each `<name>.prev` back over `<name>`
    if its hash is the one lineage.json lists. Returns the names restored.

    Raises RunError if nothing can be restored or the folder still does not match
    lineage.json afterwards (then the run cannot be repaired: start a new one).
    """
    run_dir = Path(run_dir)
    lineage = read_lineage(run_dir)
    restored = []
    for name, entry in lineage["files"].items():
        previous = run_dir / (name + PREVIOUS_SUFFIX)
        if previous.is_file() and sha256_file(previous) == entry["sha256"]:
            os.replace(previous, run_dir / name)
            restored.append(name)
    if not restored:
        raise _fail(run_dir, f"no {PREVIOUS_SUFFIX} file matches lineage.json; nothing to "
                             f"restore (start a new run)")
    _verify_hashes(run_dir, lineage)
    return restored


# ---------------------------------------------------------------------------- reading

def _read_json(path: Path, expected: str):
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail(path, f"not valid JSON ({_reason(e)}); expected {expected}")


def _check_header(path: Path, doc, fmt: str) -> None:
    if not isinstance(doc, dict):
        raise _fail(path, f"expected a JSON object, got {type(doc).__name__}")
    if doc.get("format") != fmt:
        raise _fail(path, f"expected format {fmt!r}, got {doc.get('format')!r}")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise _fail(path, f"format_version {version!r} is not supported (this qtf-edge "
                          f"{qtf_edge.__version__} reads {FORMAT_VERSION})")


def _read_config(run_dir: Path) -> tuple[ModelConfig, str]:
    path = run_dir / CONFIG_FILE
    doc = _read_json(path, "a qtf-edge run config")
    _check_header(path, doc, RUN_FORMAT)
    form = doc.get("form")
    if form not in KNOWN_FORMS:
        raise _fail(path, f"form {form!r} is not one of {list(KNOWN_FORMS)}")
    model = doc.get("model")
    if not isinstance(model, dict):
        raise _fail(path, "expected a 'model' object with the ModelConfig fields")
    # The top-level form mirrors model.form for readers of the file; runs written before
    # model.form existed have only the top-level one.
    model = {"form": form, **model}
    if model["form"] != form:
        raise _fail(path, f"form {form!r} disagrees with model.form {model['form']!r}")
    try:
        return ModelConfig.from_dict(model), form
    except (TypeError, ValueError) as e:
        raise _fail(path, f"invalid model config: {_reason(e)}")


_SHA256 = re.compile(r"[0-9a-f]{64}")


def read_lineage(run_dir: str | os.PathLike) -> dict:
    """lineage.json, checked: format, version and a well-formed 'files' table whose
    entries are plain file names with {"sha256", "bytes"} and include the required files."""
    path = Path(run_dir) / LINEAGE_FILE
    if not path.is_file():
        raise _fail(path, "missing; expected the run's lineage (file hashes)")
    doc = _read_json(path, "the run's lineage")
    _check_header(path, doc, LINEAGE_FORMAT)
    files = doc.get("files")
    if not isinstance(files, dict):
        raise _fail(path, "expected a 'files' object mapping file names to sha256 and size")
    for name, entry in files.items():
        ok = (Path(name).name == name and name not in ("", ".", "..")
              and isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
              and _SHA256.fullmatch(entry["sha256"]) is not None
              and isinstance(entry.get("bytes"), int) and entry["bytes"] >= 0)
        if not ok:
            raise _fail(path, f"files entry {name!r} must be a plain file name with "
                              f"{{'sha256': <64 hex>, 'bytes': <int>}}, got {entry!r}")
    absent = [n for n in REQUIRED_FILES if n != LINEAGE_FILE and n not in files]
    if absent:
        raise _fail(path, f"'files' does not list {absent}; expected hashes of "
                          f"{list(REQUIRED_FILES[:3])}")
    return doc


def _verify_hashes(run_dir: Path, lineage: dict) -> None:
    for name, entry in lineage["files"].items():
        path = run_dir / name
        if not path.is_file():
            raise _fail(path, f"missing, but {LINEAGE_FILE} lists it: the run is incomplete")
        size = path.stat().st_size
        actual = sha256_file(path) if size == entry["bytes"] else None
        if actual != entry["sha256"]:
            found = f"sha256 {actual[:12]}" if actual else f"{size} bytes"
            expected = (f"sha256 {entry['sha256'][:12]}" if actual
                        else f"{entry['bytes']} bytes")
            hint = ""
            previous = run_dir / (name + PREVIOUS_SUFFIX)
            if previous.is_file():
                hint = (f"; {previous.name} holds the previous checkpoint "
                        f"(qtf_edge.runs.restore_previous_checkpoint restores it)")
            raise RunError(f"{path} does not match {LINEAGE_FILE} ({found}, expected "
                           f"{expected}): the checkpoint is incomplete or was modified{hint}")


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """safetensors only (a format that cannot run code); metadata must name a qtf-edge run."""
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise _fail(path, f"not a readable safetensors file ({_reason(e)})")
    if (metadata.get("format") != RUN_FORMAT
            or metadata.get("format_version") != str(FORMAT_VERSION)):
        raise _fail(path, f"expected safetensors metadata format={RUN_FORMAT!r}, "
                          f"format_version='{FORMAT_VERSION}', got {metadata!r}")
    return tensors


def _first(names, n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def resize_tt_cores_to(model: nn.Module, tensors: dict[str, torch.Tensor]) -> list[str]:
    """Give every TTLinear in `model` the core shapes saved in `tensors` (a state dict).

    A built model has the ranks its config asks for; after TT rounding or compression a
    saved layer's ranks can be lower. For each TTLinear (including the one inside a
    TTEmbedding) whose saved cores `<prefix>.cores.<k>` differ in shape from the built
    ones, the saved shapes are checked to be a valid TT matrix for that layer's modes,
    (r_k, m_k, n_k, r_{k+1}) chained, r_0 = r_K = 1, each r_k within its full rank,
    and the ParameterList is replaced by uninitialised cores of those shapes (values come
    from load_state_dict next). Cached contraction plans and dense weights are reset.
    Layers whose saved cores are absent or numbered differently are left alone (the
    key check reports them). Returns the prefixes of the layers resized; ValueError if a
    saved shape cannot belong to the layer.
    """
    resized = []
    for prefix, layer in model.named_modules():
        if not isinstance(layer, TTLinear):
            continue
        K = len(layer.cores)
        keys = [f"{prefix}.cores.{k}" if prefix else f"cores.{k}" for k in range(K)]
        pattern = re.compile(re.escape(keys[0][:-1]) + r"\d+")
        saved_keys = [k for k in tensors if pattern.fullmatch(k)]
        if sorted(saved_keys) != sorted(keys):
            continue
        shapes = [tuple(tensors[k].shape) for k in keys]
        if shapes == [tuple(c.shape) for c in layer.cores]:
            continue
        where = prefix or "<root>"
        expect = (f"TT cores (r_k, m_k, n_k, r_k+1) for in_modes {layer.in_modes}, "
                  f"out_modes {layer.out_modes}")
        if any(len(s) != 4 for s in shapes):
            raise ValueError(f"layer {where}: saved cores have shapes {shapes}; expected {expect}")
        for k, (s, m, n) in enumerate(zip(shapes, layer.in_modes, layer.out_modes)):
            if s[1:3] != (m, n) or (k + 1 < K and s[3] != shapes[k + 1][0]):
                raise ValueError(f"layer {where}: saved cores have shapes {shapes}; "
                                 f"expected {expect}")
        try:
            layer.set_empty_cores([s[0] for s in shapes] + [shapes[-1][3]])
        except ValueError as e:
            raise ValueError(f"layer {where}: saved cores have shapes {shapes}: {e}") from None
        resized.append(prefix)
    return resized


def _fit_tensors(model: nn.Module, tensors: dict, path: Path) -> None:
    """Resize TT cores, check keys and shapes, then load_state_dict(strict=True)."""
    try:
        resize_tt_cores_to(model, tensors)
    except ValueError as e:
        raise _fail(path, f"does not fit config.json: {_reason(e)}")
    expected = model.state_dict()
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or unexpected:
        parts = [f"{what} {len(keys)} key(s): {_first(keys)}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise _fail(path, f"keys do not fit the model config.json builds: {'; '.join(parts)}")
    wrong = [f"{k} {tuple(tensors[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if tuple(tensors[k].shape) != tuple(v.shape)]
    if wrong:
        raise _fail(path, f"tensor shapes do not fit the model config.json builds: "
                          f"{_first(wrong)}")
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise _fail(path, f"non-finite values (NaN/inf) in {_first(bad)}; expected finite weights")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise _fail(path, f"does not fit the model config.json builds ({_reason(e)})")


def load_run(run_dir: str | os.PathLike, *, device: str | torch.device = "cpu") -> Run:
    """Read and check a run folder; the model comes back in eval mode on `device`.

    Checks, in order (each failure a one-line RunError naming the file): the folder
    exists; config.json, model.safetensors, tokenizer.json and lineage.json exist;
    config.json is a supported run config that ModelConfig accepts; every file listed in
    lineage.json has its sha256 (a mismatch means an interrupted checkpoint or an edit);
    model.safetensors is readable safetensors whose keys and shapes fit the model built
    from config.json (TT ranks changed by rounding are adopted from the file).
    """
    from qtf_edge.model.qtensorformer import QTensorFormer  # the model pulls in much

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise _fail(run_dir, "not found; expected a run folder")
    if not run_dir.is_dir():
        raise _fail(run_dir, "is not a folder; expected a run folder")
    for name in REQUIRED_FILES:
        if not (run_dir / name).is_file():
            raise _fail(run_dir / name, f"missing; a run folder needs {', '.join(REQUIRED_FILES)}")
    config, form = _read_config(run_dir)
    lineage = read_lineage(run_dir)
    _verify_hashes(run_dir, lineage)
    model_path = run_dir / MODEL_FILE
    tensors = _load_tensors(model_path)
    model = QTensorFormer(config)
    _fit_tensors(model, tensors, model_path)
    model.to(device).eval()
    return Run(path=run_dir, config=config, model=model, tokenizer_path=run_dir / TOKENIZER_FILE,
               lineage=lineage, form=form)


# ---------------------------------------------------------------------------- metrics

def append_metrics(run_dir: str | os.PathLike, record: dict) -> None:
    """Append `record` as one JSON line to metrics.jsonl (created if absent), fsynced.

    Appending is not atomic: a kill mid-write can leave a partial last line, which
    `read_metrics` skips (and reports). If the file does not end in a newline (such a
    torn line), a newline is written first so the new record starts its own line.
    NaN and infinities are written as Python's json does (NaN, Infinity).
    """
    if not isinstance(record, dict):
        raise TypeError(f"record must be a dict, got {type(record).__name__}")
    line = json.dumps(record, sort_keys=True) + "\n"
    path = Path(run_dir) / METRICS_FILE
    if not Path(run_dir).is_dir():
        raise _fail(run_dir, "not found; expected a run folder")
    with open(path, "ab+") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def read_metrics(run_dir: str | os.PathLike) -> tuple[list[dict], bool]:
    """(records, torn): every record of metrics.jsonl in order, and whether a partial
    final line (an interrupted append) was skipped. No file: ([], False).

    A line that is not a JSON object anywhere else raises RunError naming the line.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return [], False
    lines = path.read_bytes().split(b"\n")
    # A complete file ends in "\n", so the last element is b"". Anything else is an
    # unfinished final line: kept if it parses (only the newline was lost), else skipped.
    tail = lines.pop()
    records, torn = [], False
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        records.append(_metrics_line(path, number, raw))
    if tail.strip():
        try:
            records.append(_metrics_line(path, len(lines) + 1, tail))
        except RunError:
            torn = True
    return records, torn


def _metrics_line(path: Path, number: int, raw: bytes) -> dict:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as e:
        raise _fail(path, f"line {number} is not valid JSON ({_reason(e)}); expected one "
                          f"JSON object per line")
    if not isinstance(value, dict):
        raise _fail(path, f"line {number} is {type(value).__name__}; expected a JSON object")
    return value

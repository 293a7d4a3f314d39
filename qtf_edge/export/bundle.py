"""Write and verify bundles: the folder that goes onto the device.

A bundle holds

    prefill.onnx, decode.onnx          the float graphs (the I/O contract is in runtimes/run.py)
    prefill_int8.onnx, decode_int8.onnx  optional int8 graphs (later also *.tflite)
    tokenizer.json                     the run's tokenizer
    config.json                        the model config
    generation.json                    default generation settings (max_new_tokens,
                                       temperature (0 = greedy), top_k, top_p, seed,
                                       threads, stop_token_ids)
    run.py                             a copy of runtimes/run.py: the torch-free runner
    byte_bpe.py                        its tokenizer where the `tokenizers` wheel is absent
    calibrate.py                       its --calibrate measurements (a device's profile)
    README.txt                         the command to run on the device
    requirements.txt                   what the device installs (runtimes/requirements-*.txt)
    manifest.json                      written last: sha256 and size of every file above,
                                       graph I/O, context length, vocabulary size, source
                                       checkpoint, validation results, tool versions, the
                                       decode step's workload (run.py --calibrate)

`write_bundle` stages the folder beside `out` and renames it into place when whole, so
`out` is absent (or the old bundle) or complete. `verify_bundle` checks a folder against
its manifest; it is the function in runtimes/run.py, loaded from that file (see
`runner_module`), so the host and the device run the very same check. The calibration
(runtimes/calibrate.py) is loaded the way the device loads it, by the runner (see
`calibration_module`).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import platform
import shutil
import sys
import textwrap
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

from qtf_edge.atomic import staged_directory, write_json_atomic, write_text_atomic
from qtf_edge.resources import data_dir

__all__ = [
    "BUNDLE_FORMAT",
    "FORMAT_VERSION",
    "GENERATION_DEFAULTS",
    "MANIFEST_FILE",
    "QUANTUM_NOTE",
    "BundleError",
    "BundleExistsError",
    "calibration_module",
    "check_bundle_out",
    "graph_io",
    "runner_module",
    "verify_bundle",
    "write_bundle",
]

MANIFEST_FILE = "manifest.json"
RUNNER_FILE = "run.py"
README_FILE = "README.txt"
GENERATION_FILE = "generation.json"
# Written by write_bundle itself; a caller may not pass files with these names.
TOKENIZER_FALLBACK_FILE = "byte_bpe.py"  # run.py's tokenizer where `tokenizers` is absent
CALIBRATION_FILE = "calibrate.py"  # run.py --calibrate's measurements
# runtimes/ files copied into every bundle as they are: the runner and what it loads beside it
RUNNER_FILES = (RUNNER_FILE, TOKENIZER_FALLBACK_FILE, CALIBRATION_FILE)
REQUIREMENTS_FILE = "requirements.txt"  # runtimes/requirements-<runtime>.txt, for pip
GENERATED_FILES = (*RUNNER_FILES, README_FILE, GENERATION_FILE, REQUIREMENTS_FILE,
                   MANIFEST_FILE)
TOOL_DISTRIBUTIONS = ("torch", "onnx", "onnxruntime", "onnxscript", "onnxslim", "numpy",
                      "tokenizers", "litert-torch", "ai-edge-quantizer", "ai-edge-litert",
                      "qtf-edge")
QUANTUM_NOTE = ("The 'quantum' parts of the model (few-qubit circuits) were simulated exactly "
                "on a classical computer and folded into constant weights before export; the "
                "graphs contain ordinary tensor operations and need no quantum hardware or "
                "simulator.")
_MANIFEST_KEYS_REQUIRED = ("target", "runtime", "graphs", "context_length", "vocab_size",
                           "source")
_MANIFEST_KEYS_OPTIONAL = ("validation", "generation", "recipe", "compiler_command",
                           "decode_workload", "extra")
_END_OF_TEXT = "<|endoftext|>"


# ---------------------------------------------------------------------------- the runner

@functools.lru_cache(maxsize=1)
def runner_module() -> ModuleType:
    """runtimes/run.py loaded as a module (once per process).

    Bundle verification has one implementation, in the device-side runner: the runner is the
    single source of truth of what a device accepts, and it cannot import qtf_edge (the
    device has no torch and no qtf_edge), so the host loads the runner's file instead of
    keeping a second copy of the check that could drift from it. It is registered in
    sys.modules (as importing would), where the runner finds itself to hand to calibrate.py.
    """
    path = data_dir("runtimes") / RUNNER_FILE
    spec = importlib.util.spec_from_file_location("qtf_edge_bundle_runner", path)
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has one
        raise ImportError(f"cannot load the bundle runner {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def calibration_module() -> ModuleType:
    """runtimes/calibrate.py (run.py --calibrate's measurements and the profile it writes),
    loaded once by the runner from beside it (its `calibration()`), as on the device: it
    runs against `runner_module()`, so there is one loader and one runner."""
    return runner_module().calibration()


BundleError = runner_module().BundleError  # a ValueError; one line naming the bad file
GENERATION_DEFAULTS = dict(runner_module().GENERATION_DEFAULTS)
BUNDLE_FORMAT = runner_module().BUNDLE_FORMAT
FORMAT_VERSION = runner_module().FORMAT_VERSION


def requirements_file(runtime: str) -> Path:
    """runtimes/requirements-<runtime>.txt: what a device installs to run a bundle."""
    path = data_dir("runtimes") / f"requirements-{runtime}.txt"
    if not path.is_file():
        raise ValueError(f"runtime {runtime!r} has no {path.name} in {path.parent}")
    return path


def verify_bundle(folder: str | os.PathLike) -> dict:
    """Check a bundle against its manifest.json (runtimes/run.py's verify_bundle); returns the
    manifest. BundleError (one line naming the file) if a listed file is missing, has the
    wrong size or sha256, or a model file is not listed."""
    return runner_module().verify_bundle(str(folder))


class BundleExistsError(FileExistsError, ValueError):
    """The bundle folder already exists and force was not given."""


# ---------------------------------------------------------------------------- graph I/O

def graph_io(path: str | os.PathLike) -> dict:
    """Inputs and outputs of an ONNX file, for the manifest's `graphs` entries:

        {"inputs": [{"name", "dtype", "shape"}], "outputs": [...]}

    dtype is the ONNX element type in lower case ("float", "int64"); each shape entry is an
    int or the symbolic dimension's name (None if unnamed). Weights are not loaded.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values) -> list[dict]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in t.shape.dim]
            out.append({"name": v.name,
                        "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower(),
                        "shape": dims})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


# ---------------------------------------------------------------------------- checking

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_files(files: Mapping) -> dict[str, Path]:
    if not isinstance(files, Mapping) or not files:
        raise ValueError("files must be a non-empty mapping of bundle file name to source path")
    runner = runner_module()
    out = {}
    for name, source in files.items():
        if (not isinstance(name, str) or not name or os.path.basename(name) != name
                or name.startswith(".") or "\\" in name):
            raise ValueError(f"bundle file name {name!r} must be a plain, non-hidden file name")
        if name in GENERATED_FILES:
            raise ValueError(f"bundle file {name!r} is written by write_bundle; do not pass it "
                             f"(generated: {', '.join(GENERATED_FILES)})")
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError(f"source of bundle file {name!r} must be a path, got "
                            f"{type(source).__name__}")
        source = Path(source)
        if not source.is_file():
            raise ValueError(f"{source}: not found; expected the file to bundle as {name}")
        out[name] = source
    needed = [n for n in runner.REQUIRED_FILES if n not in GENERATED_FILES]
    absent = [n for n in needed if n not in out]
    if absent:
        raise ValueError(f"files lacks {', '.join(absent)}; a bundle needs {', '.join(needed)} "
                         f"and at least one model file")
    if not any(runner.is_model_file(n) for n in out):
        raise ValueError(f"files lists no model file ({', '.join(runner.MODEL_SUFFIXES)})")
    return out


def _check_fields(fields: Mapping, files: dict[str, Path]) -> None:
    if not isinstance(fields, Mapping):
        raise TypeError(f"manifest_fields must be a mapping, got {type(fields).__name__}")
    missing = [k for k in _MANIFEST_KEYS_REQUIRED if k not in fields]
    if missing:
        raise ValueError(f"manifest_fields lacks {', '.join(missing)} (expected "
                         f"{', '.join(_MANIFEST_KEYS_REQUIRED)})")
    unknown = sorted(set(fields) - set(_MANIFEST_KEYS_REQUIRED) - set(_MANIFEST_KEYS_OPTIONAL),
                     key=str)
    if unknown:
        raise ValueError(f"manifest_fields has the unknown key {unknown[0]!r} (known: "
                         f"{', '.join(_MANIFEST_KEYS_REQUIRED + _MANIFEST_KEYS_OPTIONAL)}; "
                         f"put anything else under 'extra')")
    for key in ("target", "runtime"):
        if not isinstance(fields[key], str) or not fields[key].strip():
            raise ValueError(f"manifest_fields[{key!r}] must be a non-empty string, got "
                             f"{fields[key]!r}")
    for key in ("context_length", "vocab_size"):
        if not _is_int(fields[key]) or fields[key] < 1:
            raise ValueError(f"manifest_fields[{key!r}] must be a positive integer, got "
                             f"{fields[key]!r}")
    graphs = fields["graphs"]
    if not isinstance(graphs, Mapping) or not graphs:
        raise ValueError("manifest_fields['graphs'] must map artifact names to "
                         "{file, inputs, outputs}")
    for name, graph in graphs.items():
        ok = (isinstance(graph, Mapping) and isinstance(graph.get("file"), str)
              and isinstance(graph.get("inputs"), list) and isinstance(graph.get("outputs"), list))
        if not ok:
            raise ValueError(f"manifest_fields['graphs'][{name!r}] must be {{'file': str, "
                             f"'inputs': list, 'outputs': list}}, got {graph!r}")
        if graph["file"] not in files:
            raise ValueError(f"manifest_fields['graphs'][{name!r}] names {graph['file']!r}, "
                             f"which is not among the bundled files")
    for key in ("validation", "decode_workload", "extra"):
        if fields.get(key) is not None and not isinstance(fields[key], Mapping):
            raise ValueError(f"manifest_fields[{key!r}] must be a mapping, got {fields[key]!r}")
    for key, what in (("recipe", "the recipe's name or path"),
                      ("compiler_command", "the command that compiles a bundled file")):
        if fields.get(key) is not None and not isinstance(fields[key], str):
            raise ValueError(f"manifest_fields[{key!r}] must be a string ({what}), got "
                             f"{fields[key]!r}")
    for key in ("graphs", "validation", "decode_workload", "extra"):
        _check_json(fields.get(key), f"manifest_fields[{key!r}]")


def _source_entry(source) -> dict:
    """{"path", "model_sha256"} of the run folder the bundle was exported from."""
    from qtf_edge.runs import (  # torch comes with runs; import late
        MODEL_FILE,
        sha256_file,
    )

    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"manifest_fields['source'] must be the run folder's path, got "
                        f"{type(source).__name__}")
    model = Path(source) / MODEL_FILE
    if not model.is_file():
        raise ValueError(f"{model}: not found; manifest_fields['source'] must be the run folder "
                         f"the bundle was exported from")
    return {"path": str(Path(source).resolve()), "model_file": MODEL_FILE,
            "model_sha256": sha256_file(model)}


def _end_of_text_ids(tokenizer_path: Path) -> list[int]:
    """Id of <|endoftext|> in a tokenizer.json (as a list; empty if it has none)."""
    try:
        doc = json.loads(tokenizer_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{tokenizer_path}: not readable JSON ({e}); expected a "
                         f"tokenizer.json") from None
    for token in doc.get("added_tokens") or []:
        if isinstance(token, dict) and token.get("content") == _END_OF_TEXT \
                and _is_int(token.get("id")):
            return [token["id"]]
    return []


def _generation(given, tokenizer_path: Path, vocab_size: int) -> dict:
    settings = dict(GENERATION_DEFAULTS)
    settings["stop_token_ids"] = _end_of_text_ids(tokenizer_path)
    given = {} if given is None else given
    if not isinstance(given, Mapping):
        raise TypeError(f"manifest_fields['generation'] must be a mapping, got {given!r}")
    unknown = sorted(set(given) - set(GENERATION_DEFAULTS), key=str)
    if unknown:
        raise ValueError(f"manifest_fields['generation'] has the unknown key {unknown[0]!r} "
                         f"(known: {', '.join(GENERATION_DEFAULTS)})")
    settings.update(given)
    if settings["temperature"] is not None and _is_int(settings["temperature"]):
        settings["temperature"] = float(settings["temperature"])
    try:
        runner_module().check_generation_settings(*(settings[k] for k in (
            "max_new_tokens", "temperature", "top_k", "top_p", "seed", "threads")))
    except ValueError as e:
        raise ValueError(f"manifest_fields['generation']: {e}") from None
    stops = settings["stop_token_ids"]
    if not isinstance(stops, (list, tuple)) or not all(
            _is_int(t) and 0 <= t < vocab_size for t in stops):
        raise ValueError(f"manifest_fields['generation']['stop_token_ids'] must be a list of "
                         f"token ids below {vocab_size}, got {stops!r}")
    settings["stop_token_ids"] = list(stops)
    return settings


def _tool_versions() -> dict:
    """Installed versions of the export tool chain (distribution metadata; nothing imported)."""
    from importlib.metadata import PackageNotFoundError, version

    tools = {"python": platform.python_version()}
    for dist in TOOL_DISTRIBUTIONS:
        try:
            tools[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return tools


def _readme(target: str, runtime: str, created: str, int8: bool,
            compiler_command: str | None) -> str:
    lines = [
        f"qtf-edge bundle for target '{target}' (runtime: {runtime}), created {created}.",
        "",
        "On the device, in this folder (Python 3.8 or newer; no torch needed):",
        "",
        f"    pip install -r {REQUIREMENTS_FILE}      # numpy, {runtime}, tokenizers",
        '    python3 run.py . --prompt "The castle was"',
        "",
        "Options: --max-new-tokens N, --temperature T (0 = greedy), --top-k K, --top-p P,",
        "--seed S, --threads N, --json, --quiet" + (", --int8 (the int8 graphs)" if int8 else "")
        + ". Defaults are in generation.json.",
        "",
        "run.py first checks every file against manifest.json (size and sha256) and refuses a",
        "bundle that is incomplete or was modified.",
        "",
        *(["This target needs a compiled model: in this folder, on a machine with the",
           "compiler installed, run",
           "",
           f"    {compiler_command}",
           ""] if compiler_command else []),
        *textwrap.wrap(QUANTUM_NOTE, width=88),
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- writing

def check_bundle_out(out: str | os.PathLike, force: bool) -> None:
    """BundleExistsError unless `out` is free, or (force) an old bundle or empty folder."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not force:
            raise BundleExistsError(f"{out} already exists; choose another folder or pass "
                                    f"--force to replace it")
        if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).is_file()):
            raise BundleExistsError(f"{out} exists and is not a bundle folder (no "
                                    f"{MANIFEST_FILE}); refusing to replace it even with --force")


def write_bundle(out: str | os.PathLike, files: dict[str, Path], manifest_fields: dict, *,
                 force: bool = False) -> Path:
    """Write a complete bundle folder at `out`; returns its path.

    files: bundle file name -> source path, copied as they are: the model files
        (prefill.onnx, decode.onnx, optional *_int8.onnx or *.tflite), tokenizer.json and
        config.json. run.py, byte_bpe.py, calibrate.py, README.txt, generation.json,
        requirements.txt and manifest.json are written here.
    manifest_fields:
        target, runtime (str); context_length, vocab_size (int);
        graphs: artifact name -> {"file", "inputs", "outputs"} (see `graph_io`);
        source: the run folder exported from (its model.safetensors sha256 is recorded);
        optional: validation (dict of results), generation (overrides of
        GENERATION_DEFAULTS; stop_token_ids defaults to the tokenizer's <|endoftext|>),
        recipe (str: the recipe's name or path), compiler_command (str: the command a
        target's compiler is run with in the bundle folder), decode_workload (dict: one
        decode step's FLOPs and bytes per part, export/workload.py; run.py --calibrate
        reads it), extra (dict, copied as is).
    force: replace an existing `out` (only once the new bundle is complete; `out` must then
        be a bundle folder or empty, so a mistyped path cannot delete unrelated files).

    Everything is written into a hidden staging folder beside `out` (manifest.json last),
    verified with `verify_bundle`, and renamed into place. On any error the staging folder
    is removed and `out` is untouched. An existing `out` without force raises
    BundleExistsError (a FileExistsError and a ValueError) before any work.
    """
    out = Path(out)
    check_bundle_out(out, force)
    sources = _check_files(files)
    _check_fields(manifest_fields, sources)
    fields = dict(manifest_fields)
    generation = _generation(fields.get("generation"), sources["tokenizer.json"],
                             fields["vocab_size"])
    source = _source_entry(fields["source"])
    created = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    int8 = any("_int8" in name for name in sources)

    with staged_directory(out, overwrite=force) as tmp:
        for name, path in sources.items():
            shutil.copyfile(path, tmp / name)
        for name in RUNNER_FILES:
            shutil.copyfile(data_dir("runtimes") / name, tmp / name)
        shutil.copyfile(requirements_file(fields["runtime"]), tmp / REQUIREMENTS_FILE)
        write_json_atomic(tmp / GENERATION_FILE, generation)
        write_text_atomic(tmp / README_FILE,
                          _readme(fields["target"], fields["runtime"], created, int8,
                                  fields.get("compiler_command")))
        manifest = _manifest(tmp, fields, source, created)
        write_json_atomic(tmp / MANIFEST_FILE, manifest)  # last: it marks the bundle complete
        verify_bundle(tmp)  # the device-side check must accept what was just written
    return out


def _manifest(folder: Path, fields: Mapping, source: dict, created: str) -> dict:
    from qtf_edge.runs import sha256_file

    entries = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name == MANIFEST_FILE:
            continue
        entries.append({"path": path.name, "sha256": sha256_file(path),
                        "bytes": path.stat().st_size})
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": FORMAT_VERSION,
        "target": fields["target"],
        "runtime": fields["runtime"],
        "recipe": fields.get("recipe"),
        "compiler_command": fields.get("compiler_command"),
        "created": created,
        "context_length": fields["context_length"],
        "vocab_size": fields["vocab_size"],
        "files": entries,
        "graphs": {name: dict(graph) for name, graph in fields["graphs"].items()},
        "source": source,
        "validation": dict(fields.get("validation") or {}),
        "tools": _tool_versions(),
        "note": QUANTUM_NOTE,
    }
    if fields.get("decode_workload"):
        manifest["decode_workload"] = dict(fields["decode_workload"])
    if fields.get("extra"):
        manifest["extra"] = dict(fields["extra"])
    _check_json(manifest)
    return manifest


def _check_json(value, where: str = "manifest") -> None:
    """ValueError (NaN, infinities) or TypeError (other types) naming the first value JSON
    cannot hold."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} is {value!r}; JSON has no NaN or infinity")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has the non-string key {key!r}")
            _check_json(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise TypeError(f"{where} is a {type(value).__name__}; expected JSON values only")


#!/usr/bin/env python3
"""Run a qtf-edge bundle on the device: verify it, then generate text.

    pip install numpy onnxruntime tokenizers      (or ai-edge-litert, or tflite-runtime)
    python3 run.py BUNDLE --prompt "The castle was"

This file is copied into every bundle and is all the device needs besides numpy,
tokenizers and one inference runtime, with the two files that travel beside it: byte_bpe.py
(its tokenizer without the `tokenizers` wheel) and calibrate.py (--calibrate's
measurements). None of them imports torch or qtf_edge. This file is also the single
implementation of bundle verification (`verify_bundle`); qtf_edge loads this file to check
the bundles it writes, so the host and the device accept exactly the same bundles.

Runtimes (--runtime, default: the bundle's own runtime if installed, else another that
runs one of its formats):
  onnxruntime                  prefill.onnx + decode.onnx: one small step per new token
  ai-edge-litert, tflite-runtime
                               model.tflite, a fixed window (1, context) graph: each new
                               token re-runs the window (TFLite has no KV cache here). An
                               Edge TPU bundle with --int8 runs edgetpu/model_int8_edgetpu.tflite
                               (the compiler's output) through the libedgetpu delegate when
                               both are present, and says why when it cannot.

ONNX graph I/O contract (both prefill.onnx and decode.onnx, and their _int8 variants):
  inputs   input_ids                                   int64   (batch, seq)
           past_key_values.{i}.key|value|key_state     float32 (batch, heads, past_seq, dim)
  outputs  logits                                      float32 (batch, seq, vocab)
           present.{i}.key|value|key_state             float32 (batch, heads, past_seq+seq, dim)
Every present.X output is fed back as the past_key_values.X input of the next decode step.
A prefill graph takes input_ids only. Names come from the sessions, so the number of layers
and state kinds is not fixed here. TFLite window graph: input_ids int32 (1, context) ->
logits (1, context, vocab), float or int8 with its quantisation parameters; ids are padded
on the right, which a causal model's earlier positions never see.

Calibration (`python3 run.py BUNDLE --calibrate my-device.yaml --calibrate-base rpi4`):
measures this device's peak FLOP/s, memory bandwidth, the bundle's decode efficiency and,
where RAPL counters are readable, its power, and writes a hardware profile for
`qtf-edge profile BUNDLE --target my-device.yaml`. The measuring is in calibrate.py, which
this file loads from its own folder for --calibrate (see `calibration()`).

Exit status: 0 on success, 2 on bad input or a bad bundle (one line on stderr).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
import types

try:
    import numpy as np
except ImportError:  # reported by main() as one line
    np = None

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "qtf-edge-bundle"
FORMAT_VERSION = 1
# Files that must be listed in every bundle's manifest (besides at least one model file).
REQUIRED_FILES = ("tokenizer.json", "config.json", "generation.json")
# A file with one of these suffixes is a model file: it must be listed in the manifest.
MODEL_SUFFIXES = (".onnx", ".ort", ".tflite", ".data")
INPUT_IDS, LOGITS = "input_ids", "logits"
PAST_PREFIX, PRESENT_PREFIX = "past_key_values.", "present."
GENERATION_DEFAULTS = {"max_new_tokens": 64, "temperature": 0.0, "top_k": 0, "top_p": 1.0,
                       "seed": 0, "threads": 0, "stop_token_ids": []}
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Where an Edge TPU bundle's compiler command writes the compiled model (made on the user's
# machine after export, so the manifest cannot list it).
EDGETPU_DIR = "edgetpu"
EDGETPU_MODEL = "model_int8_edgetpu.tflite"  # edgetpu_compiler names it <input>_edgetpu
# libedgetpu's file name per system (Coral docs, "Run inference with TensorFlow Lite in
# Python": load_delegate's argument on Linux, macOS and Windows).
EDGETPU_LIBRARIES = {"linux": "libedgetpu.so.1", "darwin": "libedgetpu.1.dylib",
                     "win32": "edgetpu.dll"}
RUNTIMES = ("onnxruntime", "ai-edge-litert", "tflite-runtime")
RAPL_ROOT = "/sys/class/powercap"  # Linux powercap: RAPL energy counters, where exposed
RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "ai-edge-litert": "ai_edge_litert.interpreter",
                   "tflite-runtime": "tflite_runtime.interpreter"}


class BundleError(ValueError):
    """A bundle is missing, incomplete, modified or malformed (one line naming the file)."""


def _one_line(text):
    return " ".join(str(text).split())


def _fail(path, what):
    return BundleError(_one_line(f"{path}: {what}"))


# ---------------------------------------------------------------------------- verification

def _sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_model_file(name):
    return name.endswith(MODEL_SUFFIXES)


def read_manifest(folder):
    """manifest.json of a bundle folder, checked for shape (not against the files)."""
    folder = str(folder)
    if not os.path.exists(folder):
        raise _fail(folder, "not found; expected a bundle folder")
    if not os.path.isdir(folder):
        raise _fail(folder, "is not a folder; expected a bundle folder")
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise _fail(path, "missing; expected the bundle manifest (is this a bundle folder?)")
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _fail(path, f"not readable JSON ({_one_line(e)}); expected the bundle manifest")
    if not isinstance(doc, dict) or doc.get("format") != BUNDLE_FORMAT:
        raise _fail(path, f"expected a JSON object with format {BUNDLE_FORMAT!r}")
    if doc.get("format_version") != FORMAT_VERSION:
        raise _fail(path, f"format_version {doc.get('format_version')!r} is not supported by "
                          f"this run.py (expected {FORMAT_VERSION})")
    files = doc.get("files")
    if not isinstance(files, list) or not files:
        raise _fail(path, "expected 'files': a list of {path, sha256, bytes}")
    seen = set()
    for entry in files:
        name = entry.get("path") if isinstance(entry, dict) else None
        ok = (isinstance(name, str) and os.path.basename(name) == name
              and name not in ("", ".", "..", MANIFEST) and "\\" not in name
              and isinstance(entry.get("sha256"), str)
              and _SHA256.fullmatch(entry["sha256"]) is not None
              and isinstance(entry.get("bytes"), int) and not isinstance(entry["bytes"], bool)
              and entry["bytes"] >= 0)
        if not ok:
            raise _fail(path, f"files entry {entry!r} must be {{'path': <plain file name>, "
                              f"'sha256': <64 hex>, 'bytes': <int>}}")
        if name in seen:
            raise _fail(path, f"files lists {name!r} twice")
        seen.add(name)
    absent = [n for n in REQUIRED_FILES if n not in seen]
    if absent:
        raise _fail(path, f"files does not list {', '.join(absent)}")
    if not any(is_model_file(n) for n in seen):
        raise _fail(path, f"files lists no model file ({', '.join(MODEL_SUFFIXES)})")
    for key in ("context_length", "vocab_size"):
        value = doc.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _fail(path, f"{key} must be a positive integer, got {value!r}")
    return doc


def verify_bundle(folder):
    """Check a bundle folder against its manifest.json; returns the manifest (a dict).

    Every listed file must exist with the listed size and sha256, and every model file in
    the folder must be listed. Raises BundleError, one line naming the bad file: missing,
    truncated or grown (size), tampered (sha256), or unlisted.
    """
    doc = read_manifest(folder)
    folder = str(folder)
    listed = set()
    for entry in doc["files"]:
        name = entry["path"]
        listed.add(name)
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise _fail(path, f"missing, but {MANIFEST} lists it: the bundle is incomplete")
        size = os.path.getsize(path)
        if size != entry["bytes"]:
            raise _fail(path, f"size is {size} bytes but {MANIFEST} says {entry['bytes']}: "
                              f"the file is truncated or was modified")
        actual = _sha256_file(path)
        if actual != entry["sha256"]:
            raise _fail(path, f"sha256 {actual[:16]}... does not match {MANIFEST} "
                              f"({entry['sha256'][:16]}...): the file was tampered with or "
                              f"corrupted")
    for name in sorted(os.listdir(folder)):
        if is_model_file(name) and name not in listed \
                and os.path.isfile(os.path.join(folder, name)):
            raise _fail(os.path.join(folder, name), f"model file not listed in {MANIFEST}; "
                                                    f"remove it or rebuild the bundle")
    return doc


# ---------------------------------------------------------------------------- generation

def _read_generation(folder):
    path = os.path.join(str(folder), "generation.json")
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise _fail(path, f"not readable JSON ({_one_line(e)}); expected generation settings")
    if not isinstance(doc, dict):
        raise _fail(path, "expected a JSON object of generation settings")
    settings = dict(GENERATION_DEFAULTS)
    settings.update({k: v for k, v in doc.items() if k in GENERATION_DEFAULTS})
    return settings


def check_generation_settings(max_new_tokens, temperature, top_k, top_p, seed, threads):
    """ValueError (one line) for an out-of-range generation setting."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be an integer >= 1, got {max_new_tokens!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not temperature >= 0 or temperature == float("inf"):
        raise ValueError(f"--temperature must be a finite number >= 0 (0 = greedy), "
                         f"got {temperature!r}")
    if not is_int(top_k) or top_k < 0:
        raise ValueError(f"--top-k must be an integer >= 0 (0 = off), got {top_k!r}")
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1] (1 = off), got {top_p!r}")
    if seed is not None and (not is_int(seed) or seed < 0):
        raise ValueError(f"--seed must be an integer >= 0, got {seed!r}")
    if threads is not None and (not is_int(threads) or threads < 0):
        raise ValueError(f"--threads must be an integer >= 0 (0 = the runtime's default), "
                         f"got {threads!r}")


def _session(ort, folder, name, threads, profile_prefix=None):
    path = os.path.join(str(folder), name)
    if not os.path.isfile(path):
        raise _fail(path, "missing; this bundle has no such graph (try without --int8?)")
    options = ort.SessionOptions()
    if profile_prefix is not None:  # onnxruntime's per-node trace (qtf-edge profile)
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if threads:
        options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: warnings would break the one-line output
    try:
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise _fail(path, f"onnxruntime cannot load it ({_one_line(e).splitlines()[0][:300]})")


class _Graphs:
    """The prefill and decode sessions of a bundle, with their I/O checked against the
    contract."""

    def __init__(self, ort, folder, int8=False, threads=0, profile_prefix=None):
        suffix = "_int8" if int8 else ""
        self.prefill = _session(ort, folder, f"prefill{suffix}.onnx", threads)
        self.decode = _session(ort, folder, f"decode{suffix}.onnx", threads, profile_prefix)
        for name, sess in (("prefill", self.prefill), ("decode", self.decode)):
            inputs = [i.name for i in sess.get_inputs()]
            outputs = [o.name for o in sess.get_outputs()]
            where = os.path.join(str(folder), f"{name}{suffix}.onnx")
            if INPUT_IDS not in inputs or LOGITS not in outputs:
                raise _fail(where, f"does not follow the I/O contract: expected input "
                                   f"{INPUT_IDS!r} and output {LOGITS!r}, got inputs {inputs} "
                                   f"and outputs {outputs}")
            odd = [n for n in inputs if n != INPUT_IDS and not n.startswith(PAST_PREFIX)]
            odd += [n for n in outputs if n != LOGITS and not n.startswith(PRESENT_PREFIX)]
            if odd:
                raise _fail(where, f"does not follow the I/O contract: unexpected "
                                   f"input/output {odd[0]!r}")
        prefill_inputs = [i.name for i in self.prefill.get_inputs()]
        if prefill_inputs != [INPUT_IDS]:
            raise _fail(os.path.join(str(folder), f"prefill{suffix}.onnx"),
                        f"does not follow the I/O contract: expected the input {INPUT_IDS!r} "
                        f"only, got {prefill_inputs}")
        self.decode_past = [i.name for i in self.decode.get_inputs() if i.name != INPUT_IDS]
        for name, sess in (("prefill", self.prefill), ("decode", self.decode)):
            present = sorted(PAST_PREFIX + o.name[len(PRESENT_PREFIX):]
                             for o in sess.get_outputs() if o.name != LOGITS)
            if present != sorted(self.decode_past):
                where = os.path.join(str(folder), f"{name}{suffix}.onnx")
                raise _fail(where, f"its present.* outputs do not match decode's "
                                   f"past_key_values.* inputs ({present} vs "
                                   f"{sorted(self.decode_past)})")

    def run_prefill(self, ids):
        return self._run(self.prefill, "prefill", {INPUT_IDS: np.asarray([ids], dtype=np.int64)})

    def run_decode(self, token, past):
        feeds = {INPUT_IDS: np.asarray([[token]], dtype=np.int64)}
        feeds.update(past)
        return self._run(self.decode, "decode", feeds)

    @staticmethod
    def _run(sess, name, feeds):
        try:
            values = sess.run(None, feeds)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise BundleError(f"the {name} graph failed to run ({_one_line(e)[:300]})") from None
        logits, past = None, {}
        for meta, value in zip(sess.get_outputs(), values):
            if meta.name == LOGITS:
                logits = value
            else:
                past[PAST_PREFIX + meta.name[len(PRESENT_PREFIX):]] = value
        return logits[0, -1], past


def _import_runtime(runtime):
    """The runtime's Python module, or None when it is not installed."""
    import importlib
    try:
        return importlib.import_module(RUNTIME_MODULES[runtime])
    except ImportError:
        return None


def _bundle_formats(manifest):
    names = {entry["path"] for entry in manifest["files"]}
    return {"onnxruntime": "prefill.onnx" in names,
            "ai-edge-litert": "model.tflite" in names, "tflite-runtime": "model.tflite" in names}


def choose_runtime(manifest, requested="auto"):
    """(runtime name, its module) for running this bundle; RuntimeError (one line) if the
    requested runtime, or with "auto" every runtime that runs the bundle, is missing."""
    runs = _bundle_formats(manifest)
    if requested != "auto":
        if requested not in RUNTIMES:
            raise ValueError(f"--runtime must be auto or one of {', '.join(RUNTIMES)}, got "
                             f"{requested!r}")
        if not runs[requested]:
            raise ValueError(f"--runtime {requested}: this bundle has no graph it runs "
                             f"(bundle runtime: {manifest.get('runtime')})")
        module = _import_runtime(requested)
        if module is None:
            raise RuntimeError(f"the '{requested}' package is missing: pip install {requested}")
        return requested, module
    own = manifest.get("runtime")
    order = ([own] if own in RUNTIMES else []) + [r for r in RUNTIMES if r != own]
    usable = [r for r in order if runs[r]]
    for runtime in usable:
        module = _import_runtime(runtime)
        if module is not None:
            return runtime, module
    raise RuntimeError(f"no runtime for this bundle is installed: pip install {usable[0]}"
                       + (f" (or {' or '.join(usable[1:])})" if usable[1:] else ""))


def _edgetpu_delegate(litert, folder, note):
    """(model path, delegates) for the Edge TPU, or None; note(line) says which and why."""
    compiled = os.path.join(str(folder), EDGETPU_DIR, EDGETPU_MODEL)
    if not os.path.isfile(compiled):
        note(f"{compiled} not found (compile the bundle with the command in README.txt); "
             f"running model_int8.tflite on the CPU")
        return None
    library = EDGETPU_LIBRARIES.get(sys.platform, EDGETPU_LIBRARIES["linux"])
    # A delegate that fails to load is freed half-built, and LiteRT's Delegate.__del__ then
    # raises AttributeError, which Python would print as "Exception ignored in ...": keep
    # that out of the one-line output while the failed attempt is cleaned up.
    hook, sys.unraisablehook = sys.unraisablehook, lambda unraisable: None
    try:
        delegate = litert.load_delegate(library)
    except (ValueError, OSError, RuntimeError) as e:
        note(f"the Edge TPU runtime ({library}) could not be loaded ({_one_line(e)[:120]}); "
             f"running model_int8.tflite on the CPU")
        return None
    finally:
        sys.unraisablehook = hook
    note(f"running {compiled} on the Edge TPU (compiled after export, so {MANIFEST} does "
         f"not cover it)")
    return compiled, [delegate]


class _QuietStderr:
    """Silences file descriptor 2 while LiteRT's C++ code loads a model: it logs an INFO
    line about its default delegate there, which would break one-line output. Errors
    still arrive as Python exceptions."""

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)

    def __exit__(self, *exc):
        os.dup2(self.saved, 2)
        os.close(self.saved)


class _Window:
    """The TFLite window graph behind the same prefill/decode calls as the ONNX graphs:
    the state is the ids so far, and every call runs the whole window."""

    def __init__(self, litert, folder, manifest, int8=False, threads=0, note=None):
        name = "model_int8.tflite" if int8 else "model.tflite"
        path = os.path.join(str(folder), name)
        if not os.path.isfile(path):
            raise _fail(path, "missing; this bundle has no such graph (try without --int8?)")
        delegates = []
        if int8 and manifest.get("target") == "edgetpu":
            found = _edgetpu_delegate(litert, folder, note or (lambda line: None))
            if found is not None:
                path, delegates = found
        try:
            with _QuietStderr():
                self.interpreter = litert.Interpreter(
                    model_path=path, num_threads=threads or None,
                    experimental_delegates=delegates or None)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise _fail(path, f"the TFLite interpreter cannot load it ({_one_line(e)[:300]})")
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0]["shape"]) != 2:
            raise _fail(path, f"does not follow the window contract: expected one input "
                              f"(1, context) and one output, got {len(inputs)} and "
                              f"{len(outputs)}")
        self.input, self.output = inputs[0], outputs[0]
        self.length = int(self.input["shape"][1])

    def _logits(self, ids):
        ids = ids[-self.length:]
        window = np.zeros((1, self.length), dtype=self.input["dtype"])
        window[0, :len(ids)] = ids
        try:
            self.interpreter.set_tensor(self.input["index"], window)
            self.interpreter.invoke()
        except (ValueError, RuntimeError) as e:
            raise BundleError(f"the window graph failed to run ({_one_line(e)[:300]})") \
                from None
        row = self.interpreter.get_tensor(self.output["index"])[0, len(ids) - 1]
        scale, zero_point = self.output.get("quantization", (0.0, 0))
        if scale:  # an int8 output: real = scale * (q - zero_point)
            return scale * (row.astype(np.float32) - zero_point)
        return row

    def run_prefill(self, ids):
        ids = list(ids)
        return self._logits(ids), ids

    def run_decode(self, token, past):
        ids = past + [token]
        return self._logits(ids), ids


def _pick(logits, temperature, top_k, top_p, rng):
    """Next token from one row of logits: argmax at temperature 0, else a sample from the
    temperature-scaled distribution restricted to the top_k tokens and the top_p nucleus."""
    logits = np.asarray(logits, dtype=np.float64)
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = logits / float(temperature)
    if 0 < top_k < scaled.size:
        kth = np.partition(scaled, -top_k)[-top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probs = np.exp(scaled - np.max(scaled))
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")
        cumulative = np.cumsum(probs[order])
        keep = int(np.searchsorted(cumulative, top_p)) + 1  # smallest set reaching top_p
        mask = np.zeros_like(probs)
        mask[order[:keep]] = 1.0
        probs = probs * mask
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


class Generator:
    """A bundle opened for generation: manifest checked, runtime chosen, graphs loaded once.

    verify: check the bundle against its manifest first (BundleError if it does not match).
    runtime: see choose_runtime. on_note(line) is told what the user should know (where an
    Edge TPU bundle runs).
    """

    def __init__(self, bundle, int8=False, threads=0, runtime="auto", verify=True,
                 on_note=None):
        if np is None:
            raise RuntimeError("the 'numpy' package is missing: pip install numpy")
        manifest = verify_bundle(bundle) if verify else read_manifest(bundle)
        self.runtime, module = choose_runtime(manifest, runtime)
        self.vocab, self.context = manifest["vocab_size"], manifest["context_length"]
        if self.runtime == "onnxruntime":
            self.graphs = _Graphs(module, bundle, int8=int8, threads=threads)
        else:
            self.graphs = _Window(module, bundle, manifest, int8=int8, threads=threads,
                                  note=on_note)

    def __call__(self, prompt_ids, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0,
                 seed=None, stop_token_ids=(), on_token=None, timings=None):
        """Up to max_new_tokens new token ids after prompt_ids (see `generate`); timings, a
        list, gets the seconds of each graph call (prefill first, then one per decode)."""
        check_generation_settings(max_new_tokens, temperature, top_k, top_p, seed, None)
        ids = [int(i) for i in prompt_ids]
        if not ids:
            raise ValueError("the prompt has no tokens")
        bad = [i for i in ids if not 0 <= i < self.vocab]
        if bad:
            raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary "
                             f"(0..{self.vocab - 1})")
        ids = ids[-(self.context - 1):] if self.context > 1 else ids[-1:]
        stops = {int(t) for t in stop_token_ids}
        rng = np.random.default_rng(seed)
        clock = time.perf_counter
        new = []
        start = clock()
        logits, past = self.graphs.run_prefill(ids)
        while True:
            if timings is not None:
                timings.append(clock() - start)
            token = _pick(logits, temperature, top_k, top_p, rng)
            if token in stops:
                break
            new.append(token)
            if on_token is not None:
                on_token(token)
            if len(new) >= max_new_tokens or len(ids) + len(new) >= self.context:
                break
            start = clock()
            logits, past = self.graphs.run_decode(token, past)
        return new


def generate(bundle, prompt_ids, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0,
             seed=None, int8=False, *, threads=0, stop_token_ids=(), on_token=None,
             verify=True, runtime="auto", on_note=None):
    """Generate up to max_new_tokens token ids after prompt_ids; returns only the new ids.

    temperature 0 is greedy (top_k, top_p and seed then do not matter); otherwise tokens
    are sampled with numpy's Generator(seed) (seed None: not reproducible). The prompt
    keeps its last context_length - 1 ids and generation stops when prompt + new ids reach
    the manifest's context_length, or at a token in stop_token_ids (not returned).
    on_token(id) is called for each new id as it comes. verify, runtime, on_note: see
    Generator.
    """
    check_generation_settings(max_new_tokens, temperature, top_k, top_p, seed, threads)
    generator = Generator(bundle, int8=int8, threads=threads, runtime=runtime, verify=verify,
                          on_note=on_note)
    return generator(prompt_ids, max_new_tokens, temperature, top_k, top_p, seed,
                     stop_token_ids=stop_token_ids, on_token=on_token)


# ---------------------------------------------------------------------------- benchmark

def read_rapl(root=RAPL_ROOT):
    """{zone: (energy_uj, max_energy_range_uj)} of the readable top-level RAPL zones
    (intel-rapl:N, one per CPU package; AMD CPUs appear under the same name) in the Linux
    powercap folder `root`; {} where there are none or they are not readable."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return {}
    zones = {}
    for name in names:
        if not re.fullmatch(r"intel-rapl:\d+", name):
            continue  # sub-zones (intel-rapl:0:1, core/dram) are inside their package
        try:
            with open(os.path.join(root, name, "energy_uj")) as f:
                energy = int(f.read())
            with open(os.path.join(root, name, "max_energy_range_uj")) as f:
                wrap = int(f.read())
        except (OSError, ValueError):
            continue
        zones[name] = (energy, wrap)
    return zones


def rapl_joules(before, after):
    """Joules the zones used between two read_rapl readings (a counter that wrapped
    around once is unwrapped); None unless both readings have the same zones."""
    if not before or set(before) != set(after):
        return None
    total = 0
    for zone, (start, wrap) in before.items():
        end = after[zone][0]
        total += end - start if end >= start else end + wrap - start
    return total / 1e6


def _stats(values_s):
    ordered = sorted(values_s)
    if not ordered:
        return None
    def at(q):  # nearest-rank percentile
        return ordered[min(len(ordered) - 1, max(0, int(-(-q * len(ordered) // 1)) - 1))]
    return {"median": 1e3 * at(0.5), "p90": 1e3 * at(0.9), "n": len(ordered)}


def _peak_rss_mb():
    """This process's peak resident memory. Linux: VmHWM, which starts afresh at exec;
    getrusage's ru_maxrss would also count the parent's memory when it was forked from a
    large process. Elsewhere ru_maxrss (None on Windows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes vs KiB


def rapl_energy(work, rapl_root=RAPL_ROOT):
    """(joules, seconds) over work(): the RAPL zones' energy (None where unreadable) and the
    wall-clock time."""
    before = read_rapl(rapl_root)
    start = time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    return rapl_joules(before, read_rapl(rapl_root)), seconds


def bench(generator, prompt_ids, max_new_tokens, runs, rapl_root=RAPL_ROOT):
    """Greedy generation `runs` times: prefill ms and decode ms per token (median, p90),
    new tokens per second of generation, peak RSS, and RAPL energy where readable."""
    prefill, decode, new_per_run = [], [], []
    generator(prompt_ids, 1)  # warm-up: first-call allocations are not the steady state

    def generations():
        for _ in range(runs):
            timings = []
            new_per_run.append(len(generator(prompt_ids, max_new_tokens, timings=timings)))
            prefill.append(timings[0])
            decode.extend(timings[1:])

    joules, elapsed = rapl_energy(generations, rapl_root)
    tokens = sum(new_per_run)
    if joules is None:
        energy = {"measured": False,
                  "reason": f"no readable RAPL counters under {rapl_root}"}
    else:
        energy = {"measured": True, "joules": joules,
                  "joules_per_token": joules / tokens if tokens else None,
                  "source": f"RAPL package counters ({rapl_root}): the whole CPU package "
                            f"while generating, other processes included"}
    return {"runtime": generator.runtime, "runs": runs, "prompt_tokens": len(prompt_ids),
            "new_tokens": tokens, "prefill_ms": _stats(prefill),
            "decode_ms_per_token": _stats(decode),
            "tokens_per_s": tokens / elapsed if elapsed > 0 else None,
            "peak_rss_mb": _peak_rss_mb(), "energy": energy}


def format_bench(result):
    """The bench result as lines of text."""
    def ms(stats):
        return "-" if stats is None else (f"{stats['median']:.2f} ms median, "
                                          f"{stats['p90']:.2f} ms p90 (n={stats['n']})")
    energy = result["energy"]
    rss = result["peak_rss_mb"]
    return "\n".join([
        f"runtime            {result['runtime']}, {result['runs']} runs, "
        f"{result['prompt_tokens']}-token prompt",
        f"prefill            {ms(result['prefill_ms'])}",
        f"decode per token   {ms(result['decode_ms_per_token'])}",
        f"tokens/s           {result['tokens_per_s']:.1f} ({result['new_tokens']} new tokens, "
        f"prefill included)",
        "peak RSS           " + ("-" if rss is None else f"{rss:.1f} MiB"),
        "energy per token   " + (f"{energy['joules_per_token']:.4f} J ({energy['source']})"
                                 if energy["measured"] else f"not measured: {energy['reason']}"),
    ])


# ---------------------------------------------------------------------------- calibration
#
# --calibrate's measurements and the profile it writes are in calibrate.py, which every
# bundle carries beside this file; `calibration()` loads it for --calibrate alone, so
# generating never reads it. What stays here is what the command line states.

# Only a CPU profile can be the base: numpy and onnxruntime's CPU provider measure the CPU.
# This file cannot read profiles/ (a device has no qtf_edge); a test keeps the list equal
# to the shipped profiles of kind cpu.
CALIBRATION_BASES = ("cpu_xeon", "edge_mobile", "rpi4", "rpi5")
CALIBRATION_RUNS = 10   # generations timed for the decode efficiency (--bench overrides)
CALIBRATION_THREADS = 1  # the decode's threads unless --threads: qtf-edge profile's default
CALIBRATION_FILE = "calibrate.py"
_calibration_module = None


def calibration():
    """calibrate.py as a module, loaded once from the folder this file is in, with this
    module set in it as `run` before it runs: it times this runner's Generator and bench
    and raises its BundleError rather than keeping copies. It is compiled from source and
    never cached as bytecode, so the bundle folder stays as it was shipped. This module
    must be in sys.modules under its name, as `python3 run.py`, runpy and qtf_edge's
    runner_module put it."""
    global _calibration_module
    if _calibration_module is None:
        runner = sys.modules.get(__name__)
        if runner is None or vars(runner) is not globals():
            raise RuntimeError(f"run.py is not in sys.modules as {__name__!r}: load it as a "
                               f"module there to calibrate")
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), CALIBRATION_FILE)
        try:
            with open(path, "rb") as f:
                source = f.read()
        except OSError:
            raise RuntimeError(f"{CALIBRATION_FILE} is not beside run.py ({path}); "
                               f"--calibrate needs it") from None
        module = types.ModuleType("qtf_edge_calibrate")
        module.__file__, module.run = path, runner
        exec(compile(source, path, "exec"), vars(module))
        _calibration_module = module
    return _calibration_module


# ---------------------------------------------------------------------------- command line

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse would also print the usage)
        sys.stderr.write(f"run.py: error: {_one_line(message)} (see --help)\n")
        sys.exit(2)


def _parser():
    p = _Parser(prog="run.py", description="Generate text with a qtf-edge bundle (numpy, "
                                           "tokenizers and onnxruntime, ai-edge-litert or "
                                           "tflite-runtime; no torch).")
    p.add_argument("bundle", help="the bundle folder (holds manifest.json)")
    p.add_argument("--prompt", default=None, help="text to continue")
    p.add_argument("--interactive", action="store_true",
                   help="read prompts from standard input, one per line (Ctrl-D ends)")
    p.add_argument("--bench", type=int, default=0, metavar="N",
                   help="time N greedy generations of --max-new-tokens after --prompt: "
                        "prefill and per-token decode ms (median, p90), tokens/s, peak "
                        "RSS, and energy per token where RAPL counters are readable (with "
                        f"--calibrate: the generations it times, default {CALIBRATION_RUNS})")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="tokens to generate (default: generation.json)")
    p.add_argument("--temperature", type=float, default=None,
                   help="0 = greedy (default: generation.json)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest "
                                                           "tokens; 0 = off")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass; 1 = off")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads of the runtime (0 = its default; with "
                        f"--calibrate, default {CALIBRATION_THREADS}, as qtf-edge profile's)")
    p.add_argument("--int8", action="store_true", help="use the int8 graphs")
    p.add_argument("--runtime", default="auto", choices=("auto",) + RUNTIMES,
                   help="inference runtime (auto: the bundle's own if installed, else "
                        "another that runs one of its formats)")
    p.add_argument("--calibrate", default=None, metavar="PROFILE.yaml",
                   help="measure this device instead of generating (peak FLOP/s by numpy "
                        "sgemm, memory bandwidth by a numpy copy, the bundle's decode "
                        "efficiency, power where RAPL is readable) and write a hardware "
                        "profile for `qtf-edge profile BUNDLE --target PROFILE.yaml`")
    p.add_argument("--calibrate-base", default=None, metavar="PROFILE",
                   help=f"the shipped profile whose figures fill what --calibrate does not "
                        f"measure: one of {', '.join(CALIBRATION_BASES)}")
    p.add_argument("--calibrate-name", default=None, metavar="NAME",
                   help="the calibrated profile's name (default: the file's stem)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object at the end instead of streaming text")
    p.add_argument("--quiet", action="store_true", help="no notes on stderr")
    return p


def _error(message):
    sys.stderr.write(f"run.py: error: {_one_line(message)}\n")
    return 2


class _Stream:
    """Prints the text delta of the full decoded string as tokens arrive (holds back a
    trailing partial UTF-8 character, which decodes as U+FFFD, until it completes). The
    prompt, as the tokenizer decodes it, is printed with the first token, so that a failure
    before any token prints nothing to stdout."""

    def __init__(self, tokenizer, prompt_ids, out):
        self.tokenizer, self.out = tokenizer, out
        self.ids, self.prompt_len = list(prompt_ids), len(prompt_ids)
        self.shown = None

    def __call__(self, token):
        self.ids.append(token)
        self._emit(final=False)

    def _emit(self, final):
        if self.shown is None:
            self.shown = self.tokenizer.decode(self.ids[:self.prompt_len])
            self.out.write(self.shown)
        text = self.tokenizer.decode(self.ids)
        if final or not text.endswith("\ufffd"):
            if text.startswith(self.shown):
                delta = text[len(self.shown):]
            else:  # an earlier piece decodes differently in context: print from where
                delta = text[len(os.path.commonprefix([text, self.shown])):]  # they part
            self.out.write(delta)
            self.shown = text
        self.out.flush()

    def finish(self):
        self._emit(final=True)
        self.out.write("\n")
        self.out.flush()


def _check_text(text, flag):
    """ValueError unless text is non-empty UTF-8 (argv undecodable as UTF-8 arrives holding
    lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{flag} is not valid UTF-8 text") from None
    if not text.strip():
        raise ValueError(f"{flag} is empty; expected text to continue")


def _tokenizer_class(note):
    """tokenizers.Tokenizer, or without that wheel the pure-Python byte-level BPE reader
    that travels beside this file (byte_bpe.py)."""
    try:
        from tokenizers import Tokenizer
        return Tokenizer
    except ImportError:
        pass
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        from byte_bpe import ByteLevelBPE
    except ImportError:
        raise RuntimeError("the 'tokenizers' package is missing (and byte_bpe.py is not "
                           "beside run.py): pip install tokenizers") from None
    note("the 'tokenizers' package is missing; using the pure-Python byte-level BPE reader "
         "(byte_bpe.py; same ids, slower): pip install tokenizers for speed")
    return ByteLevelBPE


def _load_tokenizer(folder, note=lambda line: None):
    tokenizer_class = _tokenizer_class(note)
    path = os.path.join(folder, "tokenizer.json")
    try:
        return tokenizer_class.from_file(path)
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception
        raise _fail(path, f"cannot be loaded ({_one_line(e)[:200]})") from None


def _settings(args, folder):
    settings = _read_generation(folder)
    for key in ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "threads"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    check_generation_settings(*(settings[k] for k in (
        "max_new_tokens", "temperature", "top_k", "top_p", "seed", "threads")))
    return settings


def main(argv=None):
    args = _parser().parse_args(argv)
    folder = args.bundle
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "not found"
        return _error(f"{folder}: {what}; expected a bundle folder")
    calibration_flags = [flag for flag, value in (("--calibrate-base", args.calibrate_base),
                                                  ("--calibrate-name", args.calibrate_name))
                         if value is not None]
    if args.calibrate is None and calibration_flags:
        return _error(f"{calibration_flags[0]} goes with --calibrate PROFILE.yaml")
    if args.calibrate is not None:
        if args.interactive or args.int8 or args.runtime not in ("auto", "onnxruntime"):
            return _error("--calibrate times the float ONNX graphs with onnxruntime; drop "
                          "--interactive, --int8 and --runtime")
    elif args.prompt is None and not args.interactive:
        return _error("give --prompt TEXT (or --interactive)")
    if args.interactive and args.bench:
        return _error("--bench and --interactive do not go together")
    if args.bench < 0:
        return _error(f"--bench must be a number of runs >= 1, got {args.bench}")
    note = (lambda line: None) if args.quiet else (
        lambda line: sys.stderr.write(f"run.py: note: {line}\n"))
    try:
        if args.prompt is not None:
            _check_text(args.prompt, "--prompt")
        if args.max_new_tokens is not None and args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
        if np is None:
            raise RuntimeError("the 'numpy' package is missing: pip install numpy")
        manifest = verify_bundle(folder)
        context = manifest["context_length"]
        if args.max_new_tokens is not None and args.max_new_tokens > context - 1:
            raise ValueError(f"--max-new-tokens {args.max_new_tokens} is beyond the context: "
                             f"this model sees {context} tokens, the prompt's included")
        if args.calibrate is not None:
            return calibration().calibrate_command(args, folder, manifest, note)
        settings = _settings(args, folder)
        tokenizer = _load_tokenizer(folder, note)
        generator = Generator(folder, args.int8, settings["threads"], args.runtime,
                              verify=False, on_note=note)
        if args.interactive:
            return _interactive(generator, tokenizer, settings, args, note)
        ids = _prompt_ids(tokenizer, args.prompt, context, note)
        if args.bench:
            result = bench(generator, ids, settings["max_new_tokens"], args.bench)
            sys.stdout.write((json.dumps(result) if args.json else format_bench(result)) + "\n")
            return 0
        _complete(generator, tokenizer, settings, args, ids, note)
    except (BundleError, ValueError, RuntimeError) as e:
        return _error(e)
    return 0


def _prompt_ids(tokenizer, text, context, note):
    ids = tokenizer.encode(text).ids
    if not ids:
        raise ValueError("the prompt encodes to no tokens; expected text to continue")
    keep = max(context - 1, 1)
    if len(ids) > keep:
        note(f"the prompt is longer than the context ({context} tokens); keeping its last "
             f"{keep} tokens")
        ids = ids[-keep:]
    return ids


def _complete(generator, tokenizer, settings, args, ids, note, prompt=None):
    """Generate after ids, streaming text (or one JSON line with --json)."""
    stream = None if args.json else _Stream(tokenizer, ids, sys.stdout)
    try:
        new = generator(ids, settings["max_new_tokens"], settings["temperature"],
                        settings["top_k"], settings["top_p"], settings["seed"],
                        stop_token_ids=settings["stop_token_ids"], on_token=stream)
    except (BundleError, ValueError, RuntimeError):
        if stream is not None and stream.shown is not None:
            sys.stdout.write("\n")
        raise
    if stream is not None:
        stream.finish()
    else:
        result = {"prompt": args.prompt if prompt is None else prompt,
                  "text": tokenizer.decode(new), "tokens": ids + new,
                  "prompt_tokens": len(ids), "new_tokens": len(new)}
        sys.stdout.write(json.dumps(result, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    if len(new) < settings["max_new_tokens"] and len(ids) + len(new) >= generator.context:
        note(f"stopped at the context length ({generator.context} tokens)")


def _interactive(generator, tokenizer, settings, args, note):
    """A prompt loop on stdin: one prompt per line; an empty line is skipped; end of input
    (Ctrl-D) or /quit ends it."""
    tty = sys.stdin.isatty()
    while True:
        if tty:
            sys.stderr.write("> ")
            sys.stderr.flush()
        raw = sys.stdin.buffer.readline()
        if not raw:
            return 0
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ValueError("standard input is not valid UTF-8 text") from None
        if text.strip() == "/quit":
            return 0
        if not text.strip():
            continue
        ids = _prompt_ids(tokenizer, text, generator.context, note)
        _complete(generator, tokenizer, settings, args, ids, note, prompt=text)


if __name__ == "__main__":
    sys.exit(main())

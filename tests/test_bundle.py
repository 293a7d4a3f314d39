"""Bundles: write_bundle / verify_bundle round trip, tamper detection, atomic replacement,
and the torch-free runner runtimes/run.py (run in a subprocess with torch made unimportable).

The ONNX exporter is not used here: a toy language model that follows the runner's graph
I/O contract is built by hand with onnx.helper. Its next-token logits depend on every
earlier token through the past_key_values states, so a runner that fed the states back
wrongly would generate different tokens than the numpy reference below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qtf_edge.data import default_corpus, read_corpus, train_tokenizer
from qtf_edge.export import bundle as bundle_mod
from qtf_edge.export.bundle import (
    BundleError,
    BundleExistsError,
    graph_io,
    runner_module,
    verify_bundle,
    write_bundle,
)
from qtf_edge.resources import data_dir

HEADS, DIM, LAYERS, KINDS = 2, 4, 2, ("key", "value", "key_state")
CONTEXT = 24
RUNNER = data_dir("runtimes") / "run.py"


# ---------------------------------------------------------------------------- toy model

@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    lines = read_corpus(default_corpus("train"))[:120]
    return train_tokenizer(lines, vocab_size=300).to_str()


def _weights(vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    bias = rng.normal(size=vocab).astype(np.float32)
    bias[0] = -1e4  # never <|endoftext|> (id 0), so greedy runs go the full length
    return {
        "E": rng.normal(size=(vocab, HEADS * DIM)).astype(np.float32),
        "W": rng.normal(size=(HEADS * DIM, vocab)).astype(np.float32),
        "W2": rng.normal(size=(HEADS * DIM, vocab)).astype(np.float32),
        "b": bias,
        "c": np.linspace(0.5, 1.5, LAYERS * len(KINDS)).astype(np.float32),
    }


def _state_names() -> list[str]:
    return [f"{layer}.{kind}" for layer in range(LAYERS) for kind in KINDS]


def _toy_graph(weights: dict, with_past: bool) -> onnx.ModelProto:
    """present.X = concat(past.X, c_X * x) over the sequence axis, x the token embedding as
    (batch, heads, seq, dim); logits = (cumsum over positions of sum_X present.X)[last seq]
    @ W + x @ W2 + b."""
    vocab = weights["b"].size
    nodes, inits = [], [numpy_helper.from_array(weights[k], k) for k in ("E", "W", "W2", "b")]

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    nodes += [
        helper.make_node("Gather", ["E", "input_ids"], ["emb"]),                # (B, S, H*D)
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", const("one", np.int64(1))], ["seq_len"]),
        helper.make_node("Reshape", ["emb", const("shape4", np.array([0, 0, HEADS, DIM],
                                                                      dtype=np.int64))],
                         ["emb4"]),
        helper.make_node("Transpose", ["emb4"], ["x"], perm=[0, 2, 1, 3]),     # (B, H, S, D)
    ]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                             ["batch", "seq", vocab])]
    total = None
    for i, name in enumerate(_state_names()):
        scale = const(f"c{i}", weights["c"][i:i + 1])
        nodes.append(helper.make_node("Mul", ["x", scale], [f"new{i}"]))
        present = f"present.{name}"
        if with_past:
            past = f"past_key_values.{name}"
            inputs.append(helper.make_tensor_value_info(past, TensorProto.FLOAT,
                                                        ["batch", HEADS, "past_seq", DIM]))
            nodes.append(helper.make_node("Concat", [past, f"new{i}"], [present], axis=2))
        else:
            nodes.append(helper.make_node("Identity", [f"new{i}"], [present]))
        outputs.append(helper.make_tensor_value_info(present, TensorProto.FLOAT,
                                                     ["batch", HEADS, "total_seq", DIM]))
        if total is None:
            total = present
        else:
            nodes.append(helper.make_node("Add", [total, present], [f"sum{i}"]))
            total = f"sum{i}"
    nodes += [
        helper.make_node("CumSum", [total, const("axis2", np.int64(2))], ["cum"]),
        helper.make_node("Neg", ["seq_len"], ["neg_seq"]),
        helper.make_node("Unsqueeze", ["neg_seq", const("ax0", np.array([0], dtype=np.int64))],
                         ["starts"]),
        helper.make_node("Slice", ["cum", "starts", const("ends", np.array([2**62],
                                                                           dtype=np.int64)),
                                   const("axes", np.array([2], dtype=np.int64))], ["last"]),
        helper.make_node("Transpose", ["last"], ["last_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["last_t", const("shape3", np.array([0, 0, HEADS * DIM],
                                                                         dtype=np.int64))],
                         ["hidden"]),
        helper.make_node("MatMul", ["hidden", "W"], ["h_logits"]),
        helper.make_node("MatMul", ["emb", "W2"], ["x_logits"]),
        helper.make_node("Add", ["h_logits", "x_logits"], ["hx"]),
        helper.make_node("Add", ["hx", "b"], ["logits"]),
    ]
    graph = helper.make_graph(nodes, "toy_lm", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="qtf-edge tests")
    model.ir_version = 8  # readable by older onnxruntime builds too
    onnx.checker.check_model(model, full_check=True)
    return model


def _reference_greedy(weights: dict, prompt: list[int], n: int) -> list[int]:
    """The toy model's greedy continuation, recomputed from the full sequence each step."""
    ids, scale = list(prompt), float(weights["c"].astype(np.float64).sum())
    out = []
    for _ in range(n):
        emb = weights["E"].astype(np.float64)[ids]
        hidden = scale * emb.sum(axis=0)
        logits = hidden @ weights["W"] + emb[-1] @ weights["W2"] + weights["b"]
        token = int(np.argmax(logits))
        out.append(token)
        ids.append(token)
    return out


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> dict:
    """Source files for a bundle: float and int8 graph pairs (int8 = the same toy graph),
    tokenizer.json, config.json and a fake source run folder."""
    root = tmp_path_factory.mktemp("parts")
    (root / "tokenizer.json").write_text(_tokenizer_json(), encoding="utf-8")
    vocab = json.loads(_tokenizer_json())["model"]["vocab"]
    weights = _weights(len(vocab))
    for stem, with_past in (("prefill", False), ("decode", True)):
        model = _toy_graph(weights, with_past)
        onnx.save(model, root / f"{stem}.onnx")
        onnx.save(model, root / f"{stem}_int8.onnx")
    (root / "config.json").write_text(json.dumps({"model": {"vocab_size": len(vocab),
                                                            "context_length": CONTEXT}}))
    run = root / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(b"not really safetensors")
    return {"root": root, "weights": weights, "vocab": len(vocab), "run": run}


def _files(parts, int8=True) -> dict[str, Path]:
    names = ["prefill.onnx", "decode.onnx", "tokenizer.json", "config.json"]
    if int8:
        names += ["prefill_int8.onnx", "decode_int8.onnx"]
    return {n: parts["root"] / n for n in names}


def _fields(parts, int8=True, **overrides) -> dict:
    root = parts["root"]
    stems = ("prefill", "decode") + (("prefill_int8", "decode_int8") if int8 else ())
    fields = {
        "target": "cpu", "runtime": "onnxruntime", "recipe": "cpu",
        "context_length": CONTEXT, "vocab_size": parts["vocab"], "source": parts["run"],
        "graphs": {stem: {"file": f"{stem}.onnx", **graph_io(root / f"{stem}.onnx")}
                   for stem in stems},
        "validation": {"float_top1_agreement": 1.0, "passed": True},
        "generation": {"max_new_tokens": 6},
    }
    fields.update(overrides)
    return fields


@pytest.fixture
def bundle(parts, tmp_path) -> Path:
    return write_bundle(tmp_path / "bundle", _files(parts), _fields(parts))


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------- writing

def test_round_trip_and_manifest(bundle, parts):
    manifest = verify_bundle(bundle)
    on_disk = json.loads((bundle / "manifest.json").read_text())
    assert manifest == on_disk
    assert manifest["format"] == "qtf-edge-bundle" and manifest["format_version"] == 1
    assert manifest["target"] == "cpu" and manifest["runtime"] == "onnxruntime"
    assert manifest["created"].endswith("Z")
    names = {e["path"] for e in manifest["files"]}
    assert names == {"prefill.onnx", "decode.onnx", "prefill_int8.onnx", "decode_int8.onnx",
                     "tokenizer.json", "config.json", "generation.json", "run.py",
                     "README.txt", "requirements.txt", "byte_bpe.py", "calibrate.py"}
    for entry in manifest["files"]:
        assert entry["bytes"] == (bundle / entry["path"]).stat().st_size
    for name in ("run.py", "byte_bpe.py", "calibrate.py"):  # the runner's files, as they are
        assert (bundle / name).read_bytes() == (RUNNER.parent / name).read_bytes()
    from qtf_edge.runs import sha256_file
    assert manifest["source"]["model_sha256"] == sha256_file(parts["run"] / "model.safetensors")
    assert manifest["source"]["path"] == str(parts["run"].resolve())
    decode = manifest["graphs"]["decode"]
    assert decode["inputs"][0] == {"name": "input_ids", "dtype": "int64",
                                   "shape": ["batch", "seq"]}
    assert {"name": "past_key_values.1.key_state", "dtype": "float",
            "shape": ["batch", HEADS, "past_seq", DIM]} in decode["inputs"]
    assert manifest["context_length"] == CONTEXT and manifest["vocab_size"] == parts["vocab"]
    assert manifest["validation"] == {"float_top1_agreement": 1.0, "passed": True}
    assert {"onnx", "onnxruntime", "qtf-edge", "python"} <= set(manifest["tools"])
    assert "classical" in manifest["note"] and "quantum" in manifest["note"]
    generation = json.loads((bundle / "generation.json").read_text())
    assert generation["max_new_tokens"] == 6 and generation["temperature"] == 0.0
    assert generation["stop_token_ids"] == [0]  # <|endoftext|> of the tokenizer
    readme = (bundle / "README.txt").read_text()
    assert 'python3 run.py . --prompt "The castle was"' in readme
    assert "pip install -r requirements.txt" in readme
    assert (bundle / "requirements.txt").read_text() == (
        data_dir("runtimes") / "requirements-onnxruntime.txt").read_text()
    assert _hidden(bundle.parent) == []  # no staging folder left behind


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _one_line_error(folder, match: str) -> str:
    with pytest.raises(BundleError, match=match) as info:
        verify_bundle(folder)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_tampered_file_is_named(bundle):
    _flip_byte(bundle / "decode.onnx")
    message = _one_line_error(bundle, "sha256")
    assert str(bundle / "decode.onnx") in message and "tampered" in message


def test_truncated_file_reports_size(bundle):
    path = bundle / "prefill.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    message = _one_line_error(bundle, "size")
    assert str(path) in message and "truncated" in message


def test_missing_file_is_named(bundle):
    (bundle / "tokenizer.json").unlink()
    message = _one_line_error(bundle, "missing")
    assert str(bundle / "tokenizer.json") in message


def test_unlisted_model_file_is_refused(bundle):
    (bundle / "extra.onnx").write_bytes((bundle / "decode.onnx").read_bytes())
    message = _one_line_error(bundle, "not listed")
    assert str(bundle / "extra.onnx") in message
    (bundle / "extra.onnx").unlink()
    (bundle / "notes.txt").write_text("not a model file: allowed")
    verify_bundle(bundle)


def test_bad_folders_are_refused(tmp_path):
    _one_line_error(tmp_path / "absent", "not found")
    _one_line_error(tmp_path, "manifest.json: missing")
    (tmp_path / "manifest.json").write_text("{not json")
    _one_line_error(tmp_path, "not readable JSON")


def test_existing_out_refused_without_force_and_replaced_with_force(bundle, parts):
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    with pytest.raises(BundleExistsError, match="--force") as info:
        write_bundle(bundle, _files(parts), _fields(parts))
    assert isinstance(info.value, ValueError) and isinstance(info.value, FileExistsError)
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before

    (bundle / "stale.txt").write_text("from the old bundle")
    write_bundle(bundle, _files(parts, int8=False), _fields(parts, int8=False, target="rpi"),
                 force=True)
    manifest = verify_bundle(bundle)
    assert manifest["target"] == "rpi"
    assert not (bundle / "stale.txt").exists() and not (bundle / "decode_int8.onnx").exists()
    assert _hidden(bundle.parent) == []


def test_force_never_replaces_a_folder_that_is_not_a_bundle(parts, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("do not delete")
    with pytest.raises(BundleExistsError, match="not a bundle"):
        write_bundle(precious, _files(parts), _fields(parts), force=True)
    assert (precious / "thesis.tex").read_text() == "do not delete"


def test_failure_inside_write_leaves_nothing(parts, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    original = bundle_mod._manifest
    monkeypatch.setattr(bundle_mod, "_manifest", boom)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_bundle(out, _files(parts), _fields(parts))
    assert not out.exists() and list(tmp_path.iterdir()) == []

    # the same failure while replacing: the old bundle stays as it was
    monkeypatch.setattr(bundle_mod, "_manifest", original)
    write_bundle(out, _files(parts), _fields(parts))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(bundle_mod, "_manifest", boom)
    with pytest.raises(RuntimeError):
        write_bundle(out, _files(parts, int8=False), _fields(parts, int8=False), force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("change, match", [
    (lambda f, m: f.pop("tokenizer.json"), "lacks tokenizer.json"),
    (lambda f, m: f.update({"run.py": f["config.json"]}), "written by write_bundle"),
    (lambda f, m: f.update({"x.onnx": Path("/nonexistent/x.onnx")}), "not found"),
    (lambda f, m: m.pop("vocab_size"), "lacks vocab_size"),
    (lambda f, m: m.update({"colour": "blue"}), "unknown key 'colour'"),
    (lambda f, m: m["graphs"].update({"ghost": {"file": "ghost.onnx", "inputs": [],
                                                "outputs": []}}), "not among the bundled"),
    (lambda f, m: m.update({"generation": {"top_p": 0}}), "top-p"),
    (lambda f, m: m.update({"source": "/nonexistent-run"}), "model.safetensors"),
])
def test_bad_arguments_fail_before_writing(parts, tmp_path, change, match):
    files, fields = _files(parts), _fields(parts)
    change(files, fields)
    with pytest.raises(ValueError, match=match):
        write_bundle(tmp_path / "out", files, fields)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- the runner

def test_runner_source_imports_neither_torch_nor_qtf_edge():
    text = RUNNER.read_text()
    for banned in ("import torch", "from torch", "import qtf_edge", "from qtf_edge"):
        assert banned not in text


def test_generate_greedy_matches_reference_and_is_deterministic(bundle, parts):
    runner = runner_module()
    prompt = [5, 17, 42, 99]
    first = runner.generate(bundle, prompt, 8, 0.0, 0, 1.0, None)
    again = runner.generate(bundle, prompt, 8, 0.0, 0, 1.0, 123)
    assert first == again == _reference_greedy(parts["weights"], prompt, 8)
    assert runner.generate(bundle, prompt, 8, 0.0, 0, 1.0, None, int8=True) == first


def test_generate_sampling_is_seeded_and_stops_at_context(bundle):
    runner = runner_module()
    prompt = [5, 17, 42]
    a = runner.generate(bundle, prompt, 10, 1.5, 20, 0.9, 3)
    assert a == runner.generate(bundle, prompt, 10, 1.5, 20, 0.9, 3)
    assert len(a) == 10 and all(0 < t < runner.read_manifest(bundle)["vocab_size"] for t in a)
    long = runner.generate(bundle, prompt, 100, 0.0, 0, 1.0, None)
    assert len(prompt) + len(long) == CONTEXT
    # a prompt longer than the context keeps its last CONTEXT - 1 tokens
    assert len(runner.generate(bundle, list(range(1, 60)), 5, 0.0, 0, 1.0, None)) == 1


def test_generate_refuses_a_tampered_bundle(bundle):
    _flip_byte(bundle / "decode.onnx")
    with pytest.raises(BundleError, match="decode.onnx"):
        runner_module().generate(bundle, [1, 2], 3, 0.0, 0, 1.0, None)


# Runs run.py with torch and qtf_edge unimportable (None in sys.modules makes `import x`
# raise ImportError), as on a device that has neither.
_POISONED = ("import runpy, sys; sys.modules['torch'] = None; sys.modules['qtf_edge'] = None; "
             "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def _run(bundle: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _POISONED, str(bundle / "run.py"), *args],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_runner_cli_without_torch_streams_and_prints_json(bundle, parts):
    tokenizer_ids = __import__("tokenizers").Tokenizer.from_str(_tokenizer_json())
    prompt = "The castle was"
    ids = tokenizer_ids.encode(prompt).ids
    expected = _reference_greedy(parts["weights"], ids, 6)

    done = _run(bundle, str(bundle), "--prompt", prompt, "--json", "--threads", "1")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["prompt"] == prompt and result["new_tokens"] == 6
    assert result["tokens"] == ids + expected
    assert result["text"] == tokenizer_ids.decode(expected)

    done = _run(bundle, str(bundle), "--prompt", prompt, "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout == tokenizer_ids.decode(ids + expected) + "\n"
    assert done.stderr == ""


@pytest.mark.parametrize("args, match", [
    (["--prompt", "   "], "--prompt is empty"),
    (["--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["--prompt", "hi", "--top-p", "1.5"], "--top-p"),
    (["--prompt", "hi", "--temperature", "x"], "invalid float"),
    (["--prompt", "hi", "--bench", "-1"], "--bench must be"),
    (["--interactive", "--bench", "2"], "do not go together"),
    ([], "--prompt"),
])
def test_runner_bad_input_exits_2_with_one_line(bundle, args, match):
    done = _run(bundle, str(bundle), *args)
    assert done.returncode == 2
    assert done.stdout == "" and done.stderr.count("\n") == 1 and match in done.stderr


def test_runner_refuses_missing_and_tampered_bundles(bundle, tmp_path):
    done = _run(bundle, str(tmp_path / "nowhere"), "--prompt", "hi")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "not found" in done.stderr

    _flip_byte(bundle / "prefill.onnx")
    done = _run(bundle, str(bundle), "--prompt", "hi")
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1
    assert "prefill.onnx" in done.stderr and "sha256" in done.stderr


def test_runner_without_tokenizers_falls_back_to_pure_python_bpe(bundle):
    poisoned = _POISONED.replace("sys.modules['qtf_edge'] = None;",
                                 "sys.modules['qtf_edge'] = None; "
                                 "sys.modules['tokenizers'] = None;")
    args = [str(bundle / "run.py"), str(bundle), "--prompt", "The castle was", "--json"]
    done = subprocess.run([sys.executable, "-c", poisoned, *args], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "pure-Python byte-level BPE" in done.stderr and "pip install tokenizers" in done.stderr
    with_wheel = _run(bundle, *args[1:])
    assert json.loads(done.stdout) == json.loads(with_wheel.stdout)  # same ids, same text
    (bundle / "byte_bpe.py").unlink()  # an incomplete bundle is refused before that
    done = subprocess.run([sys.executable, "-c", poisoned, *args], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 2 and "byte_bpe.py" in done.stderr


def test_runner_refuses_too_many_tokens_and_non_utf8(bundle):
    context = json.loads((bundle / "manifest.json").read_text())["context_length"]
    done = _run(bundle, str(bundle), "--prompt", "hi", "--max-new-tokens", str(context))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "beyond the context" in done.stderr
    done = subprocess.run([sys.executable, "-c", _POISONED, str(bundle / "run.py"), str(bundle),
                           "--prompt", b"caf\xe9"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2 and "--prompt is not valid UTF-8" in done.stderr
    assert done.stderr.count("\n") == 1


def test_runner_interactive_answers_each_line(bundle):
    base = [sys.executable, "-c", _POISONED, str(bundle / "run.py"), str(bundle),
            "--interactive", "--json", "--max-new-tokens", "3"]
    done = subprocess.run(base, input=b"The castle\n\nwas\n/quit\nnever read\n",
                          capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [a["prompt"] for a in answers] == ["The castle", "was"]  # blank line skipped
    assert all(a["new_tokens"] == 3 for a in answers)
    done = subprocess.run(base, input=b"ok\n\xff\xfe\n", capture_output=True, timeout=120,
                          check=False)
    assert done.returncode == 2 and b"standard input is not valid UTF-8" in done.stderr
    assert len(done.stdout.decode().splitlines()) == 1  # the line before was answered


def test_runner_bench_reports_latency_memory_and_energy_status(bundle):
    done = _run(bundle, str(bundle), "--prompt", "The castle was", "--bench", "2",
                "--max-new-tokens", "4", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["runs"] == 2 and result["new_tokens"] == 8
    assert result["prefill_ms"]["n"] == 2 and result["decode_ms_per_token"]["n"] == 6
    assert 0 < result["prefill_ms"]["median"] <= result["prefill_ms"]["p90"]
    assert result["tokens_per_s"] > 0 and result["peak_rss_mb"] > 0
    energy = result["energy"]  # this machine's RAPL counters are not exposed, CI's neither
    assert energy["measured"] == bool(runner_module().read_rapl()), energy
    text = _run(bundle, str(bundle), "--prompt", "The castle was", "--bench", "1",
                "--max-new-tokens", "2")
    assert text.returncode == 0 and "decode per token" in text.stdout


def _rapl_zone(root: Path, name: str, energy_uj: int | None, wrap_uj: int = 262143328850):
    zone = root / name
    zone.mkdir(parents=True, exist_ok=True)
    if energy_uj is not None:
        (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{wrap_uj}\n")
    (zone / "name").write_text("package-0\n")


def test_rapl_reader_on_a_powercap_fixture(tmp_path):
    runner = runner_module()
    before, after = tmp_path / "before", tmp_path / "after"
    for root, package0, package1 in ((before, 5_000_000, 1_000), (after, 7_500_000, 500)):
        _rapl_zone(root, "intel-rapl:0", package0)
        _rapl_zone(root, "intel-rapl:0:0", 1)        # a sub-zone (core): inside package 0
        _rapl_zone(root, "intel-rapl:1", package1, wrap_uj=2_000)  # wraps around once
        _rapl_zone(root, "intel-rapl:2", None)       # unreadable: skipped
        (root / "intel-rapl-mmio:0").mkdir()         # another interface: ignored
    readings = runner.read_rapl(before), runner.read_rapl(after)
    assert set(readings[0]) == {"intel-rapl:0", "intel-rapl:1"}
    # package 0 used 2.5 J; package 1 went 1000 -> wrap at 2000 -> 500: 1500 uJ
    assert runner.rapl_joules(*readings) == pytest.approx(2.5 + 0.0015)
    assert runner.rapl_joules({}, {}) is None
    assert runner.rapl_joules(readings[0], {"intel-rapl:0": readings[1]["intel-rapl:0"]}) is None
    assert runner.read_rapl(tmp_path / "absent") == {}


def test_bench_uses_rapl_where_readable(bundle, tmp_path):
    _rapl_zone(tmp_path, "intel-rapl:0", 42)  # a counter that does not move: 0 J
    generator = runner_module().Generator(bundle)
    result = runner_module().bench(generator, [1, 2, 3], 3, 2, rapl_root=tmp_path)
    assert result["energy"]["measured"] and result["energy"]["joules_per_token"] == 0.0
    assert str(tmp_path) in result["energy"]["source"]
    missing = runner_module().bench(generator, [1, 2, 3], 3, 1, rapl_root=tmp_path / "none")
    assert not missing["energy"]["measured"] and "none" in missing["energy"]["reason"]

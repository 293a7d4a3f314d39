"""A bundle's run.py in environments that hold only what a device has (tests/device_envs.py):
numpy + onnxruntime; numpy + ai-edge-litert; numpy < 2 + tflite-runtime. Torch is not
importable there, and greedy output must equal `qtf-edge generate` on the host.

Marked slow: the first run builds three environments with pip (a few minutes; later runs
reuse them). README's test command runs them, and so CI does.
"""

from __future__ import annotations

import json

import pytest
from device_envs import device_python, run
from run_factory import export_dense_run

from qtf_edge import runs
from qtf_edge.data import load_tokenizer
from qtf_edge.generate import generate

pytestmark = pytest.mark.slow
PROMPT = "The castle was"
NEW_TOKENS = 10


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A dense run exported for rpi (ONNX and TFLite, float and int8), and the tokens
    qtf-edge generate gives greedily for PROMPT."""
    source, folder, _ = export_dense_run(tmp_path_factory.mktemp("device"), "rpi")
    loaded = runs.load_run(source)
    expected = generate(loaded.model, load_tokenizer(loaded.tokenizer_path), PROMPT,
                        max_new_tokens=NEW_TOKENS, temperature=0).token_ids
    return folder, expected


@pytest.mark.parametrize("runtime", ["onnxruntime", "ai-edge-litert", "tflite-runtime"])
def test_the_runner_works_where_only_the_runtime_is_installed(bundle, runtime):
    folder, expected = bundle
    python = device_python(runtime)
    for module in ("torch", "qtf_edge"):  # the environment really is bare
        assert run(python, "-c", f"import {module}").returncode != 0
    if runtime == "tflite-runtime":
        assert run(python, "-c", "import numpy; assert numpy.__version__ < '2'").returncode == 0
    result = run(python, folder / "run.py", folder, "--prompt", PROMPT, "--max-new-tokens",
                 NEW_TOKENS, "--temperature", 0, "--runtime", runtime, "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    prompt_tokens = out["prompt_tokens"]
    assert out["tokens"][prompt_tokens:] == expected[:len(out["tokens"]) - prompt_tokens]
    assert out["new_tokens"] == NEW_TOKENS or len(expected) < NEW_TOKENS
    quantized = run(python, folder / "run.py", folder, "--prompt", PROMPT, "--max-new-tokens",
                    4, "--runtime", runtime, "--int8")
    assert quantized.returncode == 0 and quantized.stdout.startswith(PROMPT), quantized.stderr
    # "auto" finds the one runtime installed, whatever the bundle's own is
    auto = run(python, folder / "run.py", folder, "--prompt", PROMPT, "--max-new-tokens", 2)
    assert auto.returncode == 0, auto.stderr


def test_a_tampered_bundle_is_refused_there_too(bundle, tmp_path):
    import shutil
    folder, _ = bundle
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    with open(copy / "model.tflite", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    result = run(device_python("onnxruntime"), copy / "run.py", copy, "--prompt", PROMPT)
    assert result.returncode == 2 and "model.tflite" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr

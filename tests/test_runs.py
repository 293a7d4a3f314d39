"""Run folders: round trips, every refusal (one line naming the file), atomic writes."""

import io
import json
import shutil
import tokenize
from pathlib import Path

import pytest
import safetensors.torch
import torch

import qtf_edge
from qtf_edge import atomic, runs
from qtf_edge.atomic import (
    staged_directory,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from qtf_edge.config import ModelConfig
from qtf_edge.model import QTensorFormer
from qtf_edge.runs import (
    CONFIG_FILE,
    LINEAGE_FILE,
    METRICS_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    TRAIN_STATE_FILE,
    RunError,
    append_metrics,
    load_run,
    read_lineage,
    read_metrics,
    resize_tt_cores_to,
    restore_previous_checkpoint,
    save_checkpoint,
    save_run,
    sha256_file,
)
from qtf_edge.tt import TTLinear

IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def tokenizer_file(tmp_path) -> Path:
    path = tmp_path / "tok.json"
    path.write_text(json.dumps({"type": "byte", "vocab_size": 256}))
    return path


def _model(config) -> QTensorFormer:
    model = QTensorFormer(config)
    model.train()
    model(IDS)  # steer the router thresholds off their initial value: buffers must persist
    return model.eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS)


@pytest.fixture(scope="module")
def _saved_run(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=256, context_length=32, d_model=32, n_layers=2, n_heads=2,
                         d_ff=64, tt_rank=8, tt_embedding_rank=8, r_min=2, r_max=8)
    return save_run(tmp_path_factory.mktemp("saved") / "run", _model(config),
                    {"type": "byte"}, command="test")


@pytest.fixture
def run_dir(tmp_path, _saved_run) -> Path:
    """A fresh copy of one saved QTF run (building and running the model is the slow part)."""
    return Path(shutil.copytree(_saved_run, tmp_path / "run"))


def _rehash(run_dir: Path, name: str) -> None:
    """Make lineage.json agree with a (tampered) file, as a buggy writer would."""
    lineage = json.loads((run_dir / LINEAGE_FILE).read_text())
    lineage["files"][name] = {"sha256": sha256_file(run_dir / name),
                              "bytes": (run_dir / name).stat().st_size}
    (run_dir / LINEAGE_FILE).write_text(json.dumps(lineage))


def _error(run_dir) -> str:
    with pytest.raises(RunError) as info:
        load_run(run_dir)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ round trips

@pytest.mark.parametrize("arch", ["qtf", "dense"])
def test_round_trip_gives_identical_logits(tmp_path, tiny_config, tokenizer_file, arch):
    config = tiny_config if arch == "qtf" else tiny_config.dense_baseline()
    model = _model(config)
    save_run(tmp_path / "run", model, tokenizer_file, command="train --arch " + arch)
    run = load_run(tmp_path / "run")
    assert run.config == config and run.form == "simulated"
    assert not run.model.training
    assert torch.equal(_logits(run.model), _logits(model))
    assert run.tokenizer_path.read_bytes() == tokenizer_file.read_bytes()
    assert run.lineage["command"] == "train --arch " + arch
    assert run.lineage["package_version"] == qtf_edge.__version__


def test_folder_layout_config_and_lineage(run_dir, tiny_config):
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(
        [CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, LINEAGE_FILE])
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    assert config == {"format": "qtf-edge-run", "format_version": 1, "form": "simulated",
                      "model": tiny_config.to_dict()}
    lineage = read_lineage(run_dir)
    assert lineage["parent"] is None and lineage["created_utc"].endswith("+00:00")
    for name in (CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE):
        assert lineage["files"][name] == {"sha256": sha256_file(run_dir / name),
                                          "bytes": (run_dir / name).stat().st_size}
    with safetensors.safe_open(str(run_dir / MODEL_FILE), "pt") as f:
        assert f.metadata() == {"format": "qtf-edge-run", "format_version": "1",
                                "package_version": qtf_edge.__version__}
    assert not list(run_dir.parent.glob(".run.*"))  # no staging leftovers


def test_parent_model_hash_and_extra_files_are_recorded(run_dir, tiny_config, tokenizer_file):
    child = save_run(run_dir.parent / "child", QTensorFormer(tiny_config), run_dir / TOKENIZER_FILE,
                     command="compress", parent=run_dir,
                     extra_files={TRAIN_STATE_FILE: b"state", METRICS_FILE: b'{"step": 1}\n'})
    lineage = read_lineage(child)
    assert lineage["parent"]["model_sha256"] == sha256_file(run_dir / MODEL_FILE)
    assert lineage["files"][TRAIN_STATE_FILE]["sha256"] == sha256_file(child / TRAIN_STATE_FILE)
    assert METRICS_FILE not in lineage["files"]  # append-only, so never hashed
    load_run(child)


def test_tokenizer_may_be_a_dict(tmp_path, tiny_config):
    save_run(tmp_path / "r", QTensorFormer(tiny_config), {"type": "byte"}, command="t")
    assert json.loads(load_run(tmp_path / "r").tokenizer_path.read_text()) == {"type": "byte"}


def test_rounded_tt_ranks_round_trip(tmp_path, tiny_config, tokenizer_file):
    model = _model(tiny_config)
    layer = model.blocks[0].ffn.up
    layer.round_(max_rank=3)
    model.token_embedding.round_(max_rank=5)
    assert max(layer.ranks) == 3
    expected = _logits(model)
    save_run(tmp_path / "run", model, tokenizer_file, command="compress --max-rank 3")
    run = load_run(tmp_path / "run")
    assert run.model.blocks[0].ffn.up.ranks == layer.ranks
    assert run.model.token_embedding.ranks == model.token_embedding.ranks
    assert run.model.blocks[1].ffn.up.ranks == model.blocks[1].ffn.up.ranks  # untouched
    torch.testing.assert_close(_logits(run.model), expected, rtol=0, atol=0)


def test_resize_tt_cores_rejects_shapes_that_are_not_tt_cores_of_the_layer():
    layer = TTLinear(32, 64, max_rank=8, n_cores=2)
    good = {"cores.0": torch.zeros(1, *layer.cores[0].shape[1:3], 3),
            "cores.1": torch.zeros(3, *layer.cores[1].shape[1:3], 1)}
    plan_before = layer.plan
    assert resize_tt_cores_to(layer, good) == [""]
    assert layer.ranks == (1, 3, 1) and layer.plan is not plan_before
    broken = dict(good, **{"cores.1": torch.zeros(4, *layer.cores[1].shape[1:3], 1)})
    with pytest.raises(ValueError, match="saved cores have shapes"):
        resize_tt_cores_to(layer, broken)
    wrong_modes = dict(good, **{"cores.1": torch.zeros(3, 1, 1, 1)})
    with pytest.raises(ValueError, match="in_modes"):
        resize_tt_cores_to(layer, wrong_modes)


def test_tt_core_shapes_that_do_not_chain_are_refused(run_dir):
    tensors = safetensors.torch.load_file(run_dir / MODEL_FILE)
    key = "blocks.0.ffn.up.cores.1"
    tensors[key] = torch.zeros(tensors[key].shape[0] - 1, *tensors[key].shape[1:])
    safetensors.torch.save_file(tensors, run_dir / MODEL_FILE,
                                metadata={"format": "qtf-edge-run", "format_version": "1"})
    _rehash(run_dir, MODEL_FILE)
    message = _error(run_dir)
    assert MODEL_FILE in message and "blocks.0.ffn.up" in message


# ------------------------------------------------------------------ refusals

def test_missing_folder(tmp_path):
    assert "no-such-run" in _error(tmp_path / "no-such-run")


@pytest.mark.parametrize("name", [CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, LINEAGE_FILE])
def test_missing_file(run_dir, name):
    (run_dir / name).unlink()
    message = _error(run_dir)
    assert name in message and "missing" in message


def test_corrupted_config_json(run_dir):
    (run_dir / CONFIG_FILE).write_text('{"format": "qtf-edge-run", ')
    message = _error(run_dir)
    assert CONFIG_FILE in message and "not valid JSON" in message


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["model"].update(flux_capacitor=1), "unknown config field"),
    (lambda d: d["model"].update(d_model=33), "d_model"),
    (lambda d: d["model"].update(n_heads="two"), "n_heads"),
    (lambda d: d.update(format_version=2), "format_version 2"),
    (lambda d: d.update(format="other"), "format"),
    (lambda d: d.update(form="int8"), "form"),
    (lambda d: d.pop("model"), "'model'"),
])
def test_invalid_config(run_dir, change, expected):
    doc = json.loads((run_dir / CONFIG_FILE).read_text())
    change(doc)
    (run_dir / CONFIG_FILE).write_text(json.dumps(doc))
    message = _error(run_dir)
    assert message.startswith(str(run_dir / CONFIG_FILE)) and expected in message


def test_edited_but_valid_config_fails_its_hash(run_dir):
    doc = json.loads((run_dir / CONFIG_FILE).read_text())
    doc["model"]["dropout"] = 0.1
    (run_dir / CONFIG_FILE).write_text(json.dumps(doc))
    message = _error(run_dir)
    assert CONFIG_FILE in message and "does not match lineage.json" in message


def test_flipped_byte_in_model_is_a_hash_mismatch(run_dir):
    data = bytearray((run_dir / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (run_dir / MODEL_FILE).write_bytes(bytes(data))
    message = _error(run_dir)
    assert message.startswith(str(run_dir / MODEL_FILE))
    assert "does not match lineage.json (sha256" in message
    assert "incomplete or was modified" in message


def test_truncated_model_is_caught_by_size_then_by_safetensors(run_dir):
    data = (run_dir / MODEL_FILE).read_bytes()
    (run_dir / MODEL_FILE).write_bytes(data[: len(data) // 2])
    message = _error(run_dir)
    assert MODEL_FILE in message and "does not match lineage.json" in message
    _rehash(run_dir, MODEL_FILE)  # even when lineage agrees, safetensors refuses it
    message = _error(run_dir)
    assert MODEL_FILE in message and "not a readable safetensors file" in message


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.pop("ln_final.weight"), "missing 1 key(s): ln_final.weight"),
    (lambda t: t.update(extra=torch.zeros(2)), "unexpected 1 key(s): extra"),
    (lambda t: t.update({"ln_final.bias": torch.zeros(3)}), "ln_final.bias (3,)"),
])
def test_wrong_keys_or_shapes(run_dir, edit, expected):
    tensors = safetensors.torch.load_file(run_dir / MODEL_FILE)
    edit(tensors)
    safetensors.torch.save_file(tensors, run_dir / MODEL_FILE,
                                metadata={"format": "qtf-edge-run", "format_version": "1"})
    _rehash(run_dir, MODEL_FILE)
    message = _error(run_dir)
    assert message.startswith(str(run_dir / MODEL_FILE)) and expected in message


def test_safetensors_without_run_metadata_is_refused(run_dir):
    tensors = safetensors.torch.load_file(run_dir / MODEL_FILE)
    safetensors.torch.save_file(tensors, run_dir / MODEL_FILE)
    _rehash(run_dir, MODEL_FILE)
    assert "metadata" in _error(run_dir)


@pytest.mark.parametrize("change, expected", [
    (lambda d: d["files"].pop(MODEL_FILE), "does not list"),
    (lambda d: d["files"].update({"../escape": {"sha256": "0" * 64, "bytes": 0}}), "plain file"),
    (lambda d: d.update(format_version=7), "format_version 7"),
])
def test_bad_lineage(run_dir, change, expected):
    doc = json.loads((run_dir / LINEAGE_FILE).read_text())
    change(doc)
    (run_dir / LINEAGE_FILE).write_text(json.dumps(doc))
    message = _error(run_dir)
    assert LINEAGE_FILE in message and expected in message


def test_save_run_refuses_an_existing_folder_unless_overwrite(run_dir, tiny_config, tokenizer_file):
    before = sha256_file(run_dir / MODEL_FILE)
    with pytest.raises(RunError, match="already exists"):
        save_run(run_dir, QTensorFormer(tiny_config), tokenizer_file, command="t")
    assert sha256_file(run_dir / MODEL_FILE) == before
    torch.manual_seed(5)
    save_run(run_dir, QTensorFormer(tiny_config), tokenizer_file, command="t2",
             overwrite=True)
    assert sha256_file(run_dir / MODEL_FILE) != before
    assert load_run(run_dir).lineage["command"] == "t2"


def test_save_run_with_a_bad_tokenizer_writes_nothing(tmp_path, tiny_config):
    bad = tmp_path / "tok.json"
    bad.write_text("not json")
    model = QTensorFormer(tiny_config)
    with pytest.raises(RunError, match="tok.json"):
        save_run(tmp_path / "run", model, bad, command="t")
    with pytest.raises(RunError, match="missing.json"):
        save_run(tmp_path / "run", model, tmp_path / "missing.json", command="t")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ checkpoints

def test_save_checkpoint_updates_the_run_in_place(run_dir, tiny_config):
    model = load_run(run_dir).model
    with torch.no_grad():
        model.ln_final.bias.add_(1.0)
    save_checkpoint(run_dir, model, command="train step 2", extra_files={TRAIN_STATE_FILE: b"s2"})
    run = load_run(run_dir)
    assert torch.equal(_logits(run.model), _logits(model))
    assert run.lineage["command"] == "train step 2"
    assert (run_dir / TRAIN_STATE_FILE).read_bytes() == b"s2"
    assert not list(run_dir.glob("*.prev")) and not list(run_dir.glob(".*"))


def test_save_checkpoint_refuses_another_config(run_dir, tiny_config):
    with pytest.raises(RunError, match="config.json"):
        save_checkpoint(run_dir, QTensorFormer(tiny_config.dense_baseline()), command="t")


def test_interrupted_checkpoint_is_detected_and_the_previous_one_restorable(run_dir, monkeypatch):
    previous = _logits(load_run(run_dir).model)
    old_lineage = read_lineage(run_dir)
    model = load_run(run_dir).model
    with torch.no_grad():
        model.ln_final.bias.add_(1.0)

    def killed(path, obj):  # the process dies after the model write, before the lineage
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(runs, "write_json_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(run_dir, model, command="train step 2")
    monkeypatch.undo()

    # Never a silent load of mismatched files: the new model is refused as incomplete.
    message = _error(run_dir)
    assert MODEL_FILE in message and "incomplete" in message and ".prev" in message
    # lineage.json still describes the previous complete checkpoint, and its bytes are kept.
    assert read_lineage(run_dir) == old_lineage
    # Resume must refuse (above) and point at the way back; restoring gives the old run.
    assert restore_previous_checkpoint(run_dir) == [MODEL_FILE]
    assert torch.equal(_logits(load_run(run_dir).model), previous)
    with pytest.raises(RunError, match="nothing to restore"):
        restore_previous_checkpoint(run_dir)


def test_repeated_interruptions_keep_the_last_complete_checkpoint(run_dir, monkeypatch):
    good = sha256_file(run_dir / MODEL_FILE)
    model = load_run(run_dir).model

    def killed(path, obj):
        raise KeyboardInterrupt("killed")

    for step in range(2):  # a trainer that ignored the refusal and was killed again
        with torch.no_grad():
            model.ln_final.bias.add_(1.0)
        monkeypatch.setattr(runs, "write_json_atomic", killed)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(run_dir, model, command=f"step {step}")
        monkeypatch.undo()
        assert sha256_file(run_dir / (MODEL_FILE + ".prev")) == good
    save_checkpoint(run_dir, model, command="step 3")  # a whole checkpoint repairs the run
    assert torch.equal(_logits(load_run(run_dir).model), _logits(model))
    assert not list(run_dir.glob("*.prev"))


# ------------------------------------------------------------------ metrics

def test_metrics_append_and_read(run_dir):
    assert read_metrics(run_dir) == ([], False)
    append_metrics(run_dir, {"step": 1, "loss": 2.5})
    append_metrics(run_dir, {"step": 2, "loss": 2.0})
    assert read_metrics(run_dir) == ([{"loss": 2.5, "step": 1}, {"loss": 2.0, "step": 2}], False)
    load_run(run_dir)  # metrics.jsonl is not in lineage: appends keep the run valid


def test_torn_last_metrics_line_is_skipped_and_reported(run_dir):
    append_metrics(run_dir, {"step": 1})
    with open(run_dir / METRICS_FILE, "ab") as f:
        f.write(b'{"step": 2, "lo')  # a kill mid-append
    assert read_metrics(run_dir) == ([{"step": 1}], True)
    append_metrics(run_dir, {"step": 3})  # starts a fresh line; the torn one is now interior
    with pytest.raises(RunError, match=r"metrics.jsonl: line 2 is not valid JSON"):
        read_metrics(run_dir)


def test_final_line_missing_only_its_newline_is_kept(run_dir):
    (run_dir / METRICS_FILE).write_bytes(b'{"step": 1}\n{"step": 2}')
    assert read_metrics(run_dir) == ([{"step": 1}, {"step": 2}], False)


# ------------------------------------------------------------------ atomic writes

def test_atomic_writers(tmp_path):
    write_bytes_atomic(tmp_path / "a.bin", b"\x00\x01")
    write_text_atomic(tmp_path / "b.txt", "héllo\n")
    write_json_atomic(tmp_path / "c.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": [1, 2], "b": 1}
    write_bytes_atomic(tmp_path / "a.bin", b"new")
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "c.json", {"x": float("nan")})
    assert json.loads((tmp_path / "c.json").read_text())["b"] == 1  # old content kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.json"]


def test_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    write_bytes_atomic(tmp_path / "a.bin", b"old")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(tmp_path / "a.bin", b"new")
    monkeypatch.undo()
    assert (tmp_path / "a.bin").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_staged_directory_publishes_only_on_success(tmp_path):
    final = tmp_path / "sub" / "out"
    with staged_directory(final) as tmp:
        assert tmp.parent == final.parent and not final.exists()
        (tmp / "x").write_text("1")
    assert (final / "x").read_text() == "1"
    assert [p.name for p in final.parent.iterdir()] == ["out"]


def test_staged_directory_leaves_nothing_when_the_block_raises(tmp_path):
    with pytest.raises(RuntimeError), staged_directory(tmp_path / "out") as tmp:
        (tmp / "x").write_text("1")
        raise RuntimeError("half way")
    assert list(tmp_path.iterdir()) == []


def test_staged_directory_refuses_existing_unless_overwrite(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old").write_text("old")
    with pytest.raises(FileExistsError), staged_directory(final):
        pytest.fail("the block must not run")
    # overwrite, but the block fails: the old one stays
    with pytest.raises(RuntimeError), staged_directory(final, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
        raise RuntimeError
    assert [p.name for p in final.iterdir()] == ["old"]
    with staged_directory(final, overwrite=True) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ------------------------------------------------------------------ no pickle

@pytest.mark.parametrize("module", ["runs.py", "atomic.py"])
def test_load_paths_never_unpickle(module):
    """Code only (comments and strings dropped): no pickle module, no torch.load."""
    source = (Path(qtf_edge.__file__).parent / module).read_text()
    tokens = [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)
              if t.type in (tokenize.NAME, tokenize.OP)]
    assert not {"pickle", "cPickle", "dill", "joblib", "allow_pickle"} & set(tokens)
    code = " ".join(tokens)
    assert "torch . load" not in code and "np . load" not in code and "numpy . load" not in code
    assert "torch.load" not in source and "pickle" not in source.replace("unpickle", "")

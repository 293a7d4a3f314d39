"""Training: schedule, batches, optimizer state, resume, NaN guard, SIGINT, bad inputs, CLI."""

from __future__ import annotations

import json
import math
import os
import signal

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qtf_edge.cli.main import cli
from qtf_edge.config import ModelConfig
from qtf_edge.data import read_corpus, train_tokenizer
from qtf_edge.model import QTensorFormer
from qtf_edge.presets import PRESETS, preset
from qtf_edge.runs import (
    MODEL_FILE,
    TRAIN_STATE_FILE,
    load_run,
    read_metrics,
    restore_previous_checkpoint,
)
from qtf_edge.train import TrainConfig, TrainingInterrupted, learning_rate, read_config_file
from qtf_edge.train import loop
from qtf_edge.train.batches import random_batch
from qtf_edge.train.optimizer import make_optimizer
from qtf_edge.train.state import TrainState, apply_train_state, read_train_state, train_state_bytes

# A micro model: every QTF component on, a few milliseconds a step.
MICRO_MODEL = dict(context_length=16, d_model=16, n_layers=1, n_heads=2, d_ff=32, tt_rank=4,
                   tt_embedding_rank=4, r_min=1, r_max=4)
MICRO_TRAIN = dict(vocab_size=300, steps=6, batch_size=4, warmup_steps=2, eval_every=3,
                   eval_tokens=200, checkpoint_every=3, learning_rate=3e-3, min_lr=3e-4)


def micro_run(out, corpus, arch="qtf", **train):
    return loop.train_run(out, preset_name="tiny", arch=arch, data=corpus[0], valid=corpus[1],
                          model_overrides=MICRO_MODEL, train_overrides={**MICRO_TRAIN, **train},
                          quiet=True)


def weights(run_dir) -> dict:
    return load_run(run_dir).model.state_dict()


# ---------------------------------------------------------------------------- pieces

def test_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    c = TrainConfig(steps=110, warmup_steps=10, learning_rate=1e-3, min_lr=1e-4)
    assert learning_rate(0, c) == pytest.approx(1e-4)
    assert learning_rate(4, c) == pytest.approx(5e-4)
    assert learning_rate(9, c) == pytest.approx(1e-3)
    assert learning_rate(10, c) == pytest.approx(1e-3)
    middle = 10 + 99 / 2
    assert learning_rate(int(middle), c) == pytest.approx(
        1e-4 + 0.5 * (1 + math.cos(math.pi * (int(middle) - 10) / 99)) * 9e-4)
    assert learning_rate(109, c) == pytest.approx(1e-4)
    rates = [learning_rate(s, c) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_batches_depend_only_on_seed_and_step():
    ids = np.arange(1000, dtype=np.uint16)
    x1, y1 = random_batch(ids, 4, 8, seed=3, step=7)
    x2, y2 = random_batch(ids, 4, 8, seed=3, step=7)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the inputs shifted by one
    assert x1.dtype == torch.int64 and x1.shape == (4, 8)
    assert not torch.equal(x1, random_batch(ids, 4, 8, seed=3, step=8)[0])
    assert not torch.equal(x1, random_batch(ids, 4, 8, seed=4, step=7)[0])


def test_optimizer_state_round_trips_through_safetensors(tmp_path):
    config = ModelConfig(vocab_size=300, **MICRO_MODEL)
    model = QTensorFormer(config)
    optimizer = make_optimizer(model, TrainConfig())
    for _ in range(2):
        model(torch.randint(0, 300, (2, 8))).square().mean().backward()
        optimizer.step()
    state = TrainState(step=2, lr_scale=0.5, elapsed_s=1.5, tokens_seen=32)
    path = tmp_path / TRAIN_STATE_FILE
    path.write_bytes(train_state_bytes(model, optimizer, state, {"k": 1}, torch.device("cpu")))
    rng_after_save = torch.get_rng_state()
    torch.rand(5)  # move the generator on: loading must put it back

    tensors, loaded, settings = read_train_state(path)
    assert loaded == state and settings == {"k": 1}
    assert "optimizer.blocks.0.ffn.up.cores.0.exp_avg" in tensors
    other = QTensorFormer(config)
    other.load_state_dict(model.state_dict())
    other_optimizer = make_optimizer(other, TrainConfig())
    apply_train_state(tensors, other, other_optimizer, path, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng_after_save)
    names = dict(model.named_parameters())
    other_names = dict(other.named_parameters())
    for name, param in names.items():
        a, b = optimizer.state[param], other_optimizer.state[other_names[name]]
        assert set(a) == set(b)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_weight_decay_skips_norms_biases_and_angles():
    model = QTensorFormer(ModelConfig(vocab_size=300, **MICRO_MODEL))
    decayed, plain = make_optimizer(model, TrainConfig(weight_decay=0.1)).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert "blocks.0.ffn.up.cores.0" in decayed_names
    assert not any(n.endswith((".bias", "theta")) or ".ln_" in n for n in decayed_names)


def test_train_config_validates_each_field():
    with pytest.raises(ValueError, match="'steps' must be an integer >= 1"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="'min_lr'"):
        TrainConfig(learning_rate=1e-3, min_lr=1e-2)
    with pytest.raises(ValueError, match="'target' must be a hardware profile"):
        TrainConfig(target="toaster")
    with pytest.raises(ValueError, match="unknown train config field"):
        TrainConfig.from_dict({"stepz": 3})
    assert TrainConfig.from_dict(TrainConfig(steps=7).to_dict()) == TrainConfig(steps=7)


def test_config_file_yaml_and_unknown_keys(tmp_path):
    good = tmp_path / "c.yaml"
    good.write_text("model:\n  d_model: 32\ntrain:\n  learning_rate: 1e-3\n  steps: 9\n")
    assert read_config_file(good) == ({"d_model": 32}, {"learning_rate": 1e-3, "steps": 9})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stepz: 9\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown train key\(s\) \['train.stepz'\]"):
        read_config_file(bad)


def test_presets_are_valid_and_unknown_ones_are_named():
    for name in PRESETS:
        model_kw, train_kw = preset(name)
        train = TrainConfig(**train_kw)
        config = ModelConfig(vocab_size=train.vocab_size, **model_kw)
        assert config.dense_baseline().is_dense
    with pytest.raises(ValueError, match="known presets: tiny, small, medium, large, xl"):
        preset("huge")


# ---------------------------------------------------------------------------- resume

def _interrupt_at(monkeypatch, stop_step: int) -> None:
    """Send a real SIGINT during step stop_step (1-based count of steps taken)."""
    original = loop.train_step

    def step_then_signal(session, *args):
        loss = original(session, *args)
        if session.state.step + 1 == stop_step:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    monkeypatch.setattr(loop, "train_step", step_then_signal)


def test_a_given_tokenizer_is_used_instead_of_training_one(tmp_path, corpus):
    """train_run(tokenizer_json=...): the run keeps that tokenizer, byte for byte, and
    trains on its ids (here one trained on other text than --data)."""
    other = train_tokenizer(read_corpus(corpus[1]), vocab_size=MICRO_TRAIN["vocab_size"])
    given = other.to_str(pretty=True).encode("utf-8")
    own = micro_run(tmp_path / "own", corpus)
    shared = loop.train_run(tmp_path / "shared", preset_name="tiny", data=corpus[0],
                            valid=corpus[1], model_overrides=MICRO_MODEL,
                            train_overrides=MICRO_TRAIN, quiet=True, tokenizer_json=given)
    assert (tmp_path / "shared" / "tokenizer.json").read_bytes() == given
    assert (tmp_path / "own" / "tokenizer.json").read_bytes() != given
    assert shared.step == own.step == MICRO_TRAIN["steps"]


@pytest.mark.parametrize("arch", ["qtf", "dense"])
def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path, corpus, monkeypatch, arch):
    straight = micro_run(tmp_path / "straight", corpus, arch)
    assert straight.step == 6

    _interrupt_at(monkeypatch, 4)  # not a checkpoint step: the interrupt must save one
    with pytest.raises(TrainingInterrupted, match="interrupted at step 4; resume with: "
                                                  "qtf-edge train --resume"):
        micro_run(tmp_path / "split", corpus, arch)
    monkeypatch.undo()
    monkeypatch.setenv("QTF_EDGE_CACHE", str(tmp_path / "cache"))
    assert read_train_state(tmp_path / "split" / TRAIN_STATE_FILE)[1].step == 4
    resumed = loop.train_run(resume=tmp_path / "split", quiet=True)
    assert resumed.step == 6

    a, b = weights(tmp_path / "straight"), weights(tmp_path / "split")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    records = [r for r in read_metrics(tmp_path / "split")[0] if r["event"] == "eval"]
    assert records[-1]["val_loss"] == straight.final["val_loss"]


def test_resume_refuses_a_different_request_and_an_incomplete_checkpoint(tmp_path, corpus,
                                                                         monkeypatch):
    run_dir = tmp_path / "run"
    _interrupt_at(monkeypatch, 2)
    with pytest.raises(TrainingInterrupted):
        micro_run(run_dir, corpus)
    with pytest.raises(ValueError, match=r"train.steps=9 \(the run has 6\)"):
        loop.train_run(resume=run_dir, train_overrides={"steps": 9})
    with pytest.raises(ValueError, match=r"arch='dense' \(the run has 'qtf'\)"):
        loop.train_run(resume=run_dir, arch="dense")

    # A checkpoint killed between the model write and the lineage commit.
    previous = (run_dir / MODEL_FILE).read_bytes()
    (run_dir / (MODEL_FILE + ".prev")).write_bytes(previous)
    (run_dir / MODEL_FILE).write_bytes(previous[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="incomplete.*restore_previous_checkpoint"):
        loop.train_run(resume=run_dir)
    restore_previous_checkpoint(run_dir)
    assert loop.train_run(resume=run_dir, quiet=True).step == 6


# ---------------------------------------------------------------------------- NaN guard

def test_nan_guard_skips_steps_then_reloads_with_half_the_learning_rate(tmp_path, corpus,
                                                                       poison_loss):
    poison_loss(5, 6)  # steps 5 and 6
    result = micro_run(tmp_path / "run", corpus, steps=8, max_bad_steps=2, eval_every=4,
                       checkpoint_every=3)
    assert result.step == 8
    events = [r for r in read_metrics(tmp_path / "run")[0] if r["event"] == "nan_guard"]
    assert events == [{"event": "nan_guard", "step": 6, "bad_steps": 2, "reloaded_step": 3,
                       "lr_scale": 0.5}]
    state = read_train_state(tmp_path / "run" / TRAIN_STATE_FILE)[1]
    assert state.lr_scale == 0.5 and state.step == 8
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "run").values())


def test_a_single_non_finite_step_changes_nothing(tmp_path, corpus):
    from qtf_edge.train.setup import prepare_session

    session = prepare_session(out=tmp_path / "x", preset_name="tiny", data=corpus[0],
                              valid=corpus[1], model_overrides=MICRO_MODEL,
                              train_overrides=MICRO_TRAIN)
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    inputs, targets = random_batch(session.train_ids, 4, 16, 0, 0)
    session.model.blocks[0].ln_encoder.weight.data[0] = float("nan")
    before["blocks.0.ln_encoder.weight"][0] = float("nan")
    assert loop.train_step(session, inputs, targets, 1e-3) is None
    after = session.model.state_dict()
    assert all(torch.equal(before[k].nan_to_num(7.0), after[k].nan_to_num(7.0)) for k in before)
    assert not session.optimizer.state
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------- the CLI

def invoke(*args):
    return CliRunner().invoke(cli, ["train", *map(str, args)])


def one_line_error(result, *expected):
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for text in expected:
        assert text in lines[0]


def test_bad_inputs_exit_2_with_one_line_and_leave_no_folder(tmp_path, corpus):
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("train:\n  stepz: 3\n")
    micro = tmp_path / "micro.yaml"
    micro.write_text(json.dumps({"model": MICRO_MODEL, "train": MICRO_TRAIN}))
    cases = [
        (["--preset", "huge"], ["'huge' is not one of"]),
        (["--data", tmp_path / "missing.txt"], ["--data", "missing.txt", "does not exist"]),
        (["--data", empty], ["--data", "empty.txt", "is empty"]),
        (["--valid", empty, "--config", micro], ["--valid", "empty.txt", "is empty"]),
        (["--config", bad_config], ["bad.yaml", "train.stepz"]),
        (["--config", micro, "--data", corpus[0], "--lr", "-1"], ["learning_rate"]),
        (["--config", micro, "--data", corpus[0], "--target", "toaster"], ["target"]),
    ]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], ["--device cuda", "not available"]))
    for args, expected in cases:
        one_line_error(invoke("--out", out, *args), *expected)
        assert not out.exists(), args
    one_line_error(invoke("--resume", tmp_path / "nope"), "--resume", "nope", "not found")
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("cache")) == \
        sorted(["train.txt", "valid.txt", "empty.txt", "bad.yaml", "micro.yaml"])

    out.mkdir()
    one_line_error(invoke("--out", out, "--config", micro), "--out", "already exists",
                   "--overwrite")
    assert list(out.iterdir()) == []


def test_cli_sigint_exits_130_with_the_resume_command(tmp_path, corpus, monkeypatch):
    micro = tmp_path / "micro.yaml"
    micro.write_text(json.dumps({"model": MICRO_MODEL, "train": MICRO_TRAIN}))
    _interrupt_at(monkeypatch, 2)
    out = tmp_path / "run"
    result = invoke("--config", micro, "--data", corpus[0], "--valid", corpus[1], "--out", out,
                    "--quiet")
    assert result.exit_code == 130
    assert f"interrupted at step 2; resume with: qtf-edge train --resume {out}" in result.output
    assert load_run(out).config.d_model == MICRO_MODEL["d_model"]


def test_tiny_preset_end_to_end_and_its_loss_falls(tmp_path):
    config = tmp_path / "evals.yaml"
    config.write_text("train:\n  eval_every: 20\n  eval_tokens: 2048\n")
    out = tmp_path / "tiny"
    result = invoke("--preset", "tiny", "--steps", 60, "--config", config, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # progress lines go to stderr
    assert summary["steps"] == 60 and summary["run_dir"] == str(out)

    run = load_run(out)
    assert run.config.vocab_size == 2048 and not run.config.is_dense
    records = [r for r in read_metrics(out)[0] if r["event"] == "eval"]
    assert [r["step"] for r in records] == [20, 40, 60]
    losses = [r["val_loss"] for r in records]
    assert losses[0] > losses[1] > losses[2] and losses[2] < math.log(2048) - 1.0
    last = records[-1]
    assert summary["final"] == last
    assert 0 < last["quantum_fraction"] < 1 and last["mean_entropy"] > 0
    assert 2 <= last["mean_tt_rank"] <= 8
    assert last["estimated"]["label"] == "estimated" and last["estimated"]["profile"] == "cpu_xeon"
    assert last["val_perplexity_per_word"] > last["val_perplexity_per_token"] > 1

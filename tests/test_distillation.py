"""Distillation: the loss, train --teacher, and compress healing against the source model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from cli_helpers import assert_one_line_error, invoke
from test_train import MICRO_MODEL, MICRO_TRAIN, _interrupt_at, micro_run

from qtf_edge.compress.run import CompressOptions, compress_run
from qtf_edge.data import load_tokenizer, read_corpus
from qtf_edge.evaluate import token_windows
from qtf_edge.runs import load_run
from qtf_edge.tokens import token_stream
from qtf_edge.train import loop
from qtf_edge.train.distillation import distillation_loss, mean_kl, soft_kl
from qtf_edge.train.state import read_train_state


def test_soft_kl_matches_a_hand_computation_and_is_zero_for_equal_logits():
    teacher = torch.tensor([[[2.0, 0.0, -1.0]]])
    student = torch.tensor([[[0.0, 1.0, 0.0]]])
    for temperature in (1.0, 2.0):
        p = torch.softmax(teacher[0, 0] / temperature, -1)
        q = torch.softmax(student[0, 0] / temperature, -1)
        expected = float((p * (p.log() - q.log())).sum())
        assert float(soft_kl(student, teacher, temperature)) == pytest.approx(expected, rel=1e-6)
    assert float(soft_kl(teacher, teacher)) == pytest.approx(0.0, abs=1e-7)


def test_distillation_loss_mixes_the_two_terms_by_alpha_with_t_squared():
    student, teacher = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    hard = torch.tensor(1.5)
    soft = float(soft_kl(student, teacher, 3.0))
    assert float(distillation_loss(hard, student, teacher, 0.0, 3.0)) == pytest.approx(1.5)
    assert float(distillation_loss(hard, student, teacher, 1.0, 3.0)) == pytest.approx(9 * soft)
    assert float(distillation_loss(hard, student, teacher, 0.25, 3.0)) == pytest.approx(
        0.75 * 1.5 + 0.25 * 9 * soft, rel=1e-6)


def test_healing_with_the_source_as_teacher_lowers_kl_on_held_text(tmp_path, corpus):
    """A trained micro model, cut to 30% of its parameters, then healed against its own
    logits: the KL to it on text neither saw falls, as the report says and a recount of
    the saved run confirms."""
    teacher = tmp_path / "teacher"
    micro_run(teacher, corpus, arch="dense", steps=200, eval_every=100, checkpoint_every=100,
              learning_rate=1e-2, min_lr=1e-3)
    options = CompressOptions(budget="params=0.3x", embeddings=True, calib=str(corpus[0]),
                              data=str(corpus[1]), calib_tokens=512, eval_tokens=512,
                              heal_steps=30, heal_lr=(3e-3,), distill_alpha=1.0,
                              distill_temperature=1.0)
    report = compress_run(teacher, tmp_path / "healed", options)
    kl = report["kl_to_source"]
    assert kl["truncated"] > 1e-3  # the cut did change its predictions
    assert kl["healed"] < kl["truncated"]
    tokenizer = load_tokenizer(load_run(teacher).tokenizer_path)
    stream = token_stream(tokenizer, read_corpus(corpus[1]))
    windows = token_windows(stream[:512], MICRO_MODEL["context_length"])
    recount = mean_kl(load_run(tmp_path / "healed").model, load_run(teacher).model, windows)
    assert recount == pytest.approx(kl["healed"], rel=1e-3)
    settings = read_train_state(tmp_path / "healed" / "train_state.safetensors")[2]
    assert settings["teacher"]["path"] == str(teacher.resolve())
    assert [t["kept"] for t in report["healing"]] == [False, True]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left


def test_healing_that_moves_away_from_the_input_is_not_kept(tmp_path, corpus):
    """Nothing cut (the budget is the model's own size), so the unhealed model is the input
    itself; healing runs that learn the next tokens only can only move away from it, and
    compress keeps the unhealed model, as a plain compressed run folder."""
    teacher = tmp_path / "teacher"
    micro_run(teacher, corpus, arch="dense", steps=100, learning_rate=1e-2, min_lr=1e-3)
    options = CompressOptions(budget="params=1x", calib=str(corpus[0]), data=str(corpus[1]),
                              calib_tokens=512, eval_tokens=512, heal_steps=10,
                              heal_lr=(3e-3, 3e-4), distill_alpha=0.0, device="auto")
    report = compress_run(teacher, tmp_path / "out", options)
    assert [t["learning_rate"] for t in report["healing"]] == [None, 3e-3, 3e-4]
    assert [t["kept"] for t in report["healing"]] == [True, False, False]
    assert report["healing"][0]["calib_kl"] < min(t["calib_kl"] for t in report["healing"][1:])
    assert "healed" not in report["perplexity"]
    assert not (tmp_path / "out" / "train_state.safetensors").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert load_run(tmp_path / "out").model is not None


def test_train_with_a_teacher_resumes_to_the_same_weights(tmp_path, corpus, monkeypatch):
    """The teacher is part of the run: an interrupted distillation run reloads it and ends
    where an uninterrupted one does."""
    teacher = tmp_path / "teacher"
    micro_run(teacher, corpus, arch="dense", steps=10)
    tokenizer_json = (teacher / "tokenizer.json").read_bytes()

    def student(out):
        return loop.train_run(out, preset_name="tiny", arch="dense", data=corpus[0],
                              valid=corpus[1], model_overrides=MICRO_MODEL,
                              train_overrides={**MICRO_TRAIN, "distill_alpha": 0.7},
                              quiet=True, tokenizer_json=tokenizer_json, teacher=teacher)

    straight = student(tmp_path / "straight")
    _interrupt_at(monkeypatch, 4)
    with pytest.raises(loop.TrainingInterrupted):
        student(tmp_path / "split")
    monkeypatch.undo()
    monkeypatch.setenv("QTF_EDGE_CACHE", str(tmp_path / "cache"))
    loop.train_run(resume=tmp_path / "split", quiet=True)
    a, b = (load_run(tmp_path / n).model.state_dict() for n in ("straight", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert math.isfinite(straight.final["val_loss"])


def test_a_teacher_with_another_tokenizer_is_refused_in_one_line(tmp_path, corpus):
    teacher = tmp_path / "teacher"
    micro_run(teacher, corpus, arch="dense", steps=2)
    other = tmp_path / "other.txt"
    other.write_text("\n".join(read_corpus(corpus[1])) + "\n", encoding="utf-8")
    config = tmp_path / "micro.json"
    config.write_text(json.dumps({"model": MICRO_MODEL, "train": {**MICRO_TRAIN, "steps": 2}}))
    # A tokenizer trained on other text: other merges, other ids.
    result = invoke("train", "--preset", "tiny", "--arch", "dense", "--config", config,
                    "--data", other, "--valid", corpus[1], "--teacher", teacher,
                    "--out", tmp_path / "student")
    assert_one_line_error(result, "--teacher", "tokenizer")
    assert not (tmp_path / "student").exists()
    result = invoke("train", "--preset", "tiny", "--arch", "dense", "--config", config,
                    "--data", corpus[0], "--valid", corpus[1], "--teacher", tmp_path / "none",
                    "--out", tmp_path / "student")
    assert_one_line_error(result, "--teacher", "not found")
    assert not (tmp_path / "student").exists()
    result = invoke("train", "--preset", "tiny", "--arch", "dense", "--config", config,
                    "--data", corpus[0], "--valid", corpus[1], "--teacher", teacher,
                    "--distill-alpha", "1.5", "--out", tmp_path / "student")
    assert_one_line_error(result, "--distill-alpha")
    assert not (tmp_path / "student").exists()

"""Budgets (--budget): parsing, feasibility, rounding to fit; the Pareto frontier."""

from __future__ import annotations

import json

import pytest
from cli_helpers import invoke

from qtf_edge.cost.counts import count_params
from qtf_edge.pareto import non_dominated, pick
from qtf_edge.runs import append_metrics, load_run, read_metrics
from qtf_edge.train import loop
from qtf_edge.train.budget import Budget, cap_sequence, parse_budget, scheduled_steps

MICRO_MODEL = dict(context_length=16, d_model=16, n_layers=1, n_heads=2, d_ff=32, tt_rank=4,
                   tt_embedding_rank=8, r_min=1, r_max=4)
MICRO_TRAIN = dict(vocab_size=300, steps=8, batch_size=4, warmup_steps=2, eval_every=2,
                   eval_tokens=200, checkpoint_every=4, learning_rate=3e-3, min_lr=3e-4)


@pytest.fixture
def micro_config(tmp_path):
    path = tmp_path / "micro.yaml"
    path.write_text(json.dumps({"model": MICRO_MODEL, "train": MICRO_TRAIN}))
    return path



def micro_params() -> int:
    from qtf_edge.config import ModelConfig
    from qtf_edge.model import QTensorFormer
    return count_params(QTensorFormer(ModelConfig(**MICRO_MODEL, vocab_size=300)))


# ---------------------------------------------------------------------------- parsing

def test_parse_budget_accepts_suffixes_and_names_the_flag_and_keys_on_errors():
    budget = parse_budget("params=800k, latency_ms=5,energy_uj=1.5M")
    assert budget == Budget(params=800_000, latency_ms=5, energy_uj=1_500_000)
    assert budget.to_dict() == {"params": 800_000, "latency_ms": 5.0, "energy_uj": 1.5e6}
    assert parse_budget("energy_uj=60").limits() == {"energy_uj": 60.0}
    assert parse_budget("flops=3M,size_mb=2").limits() == {"flops": 3e6, "size_mb": 2.0}
    for bad, words in [("watts=3", ["unknown key 'watts'"]), ("params=abc", ["'abc'"]),
                       ("params=-3", ["'-3'"]), ("params=1kx", ["'1kx'"]), ("", ["no budget"]),
                       ("params=1,params=2", ["twice"])]:
        with pytest.raises(ValueError) as error:
            parse_budget(bad)
        message = str(error.value)
        assert message.startswith("--budget") and "\n" not in message
        assert "params, flops, latency_ms, energy_uj, size_mb" in message
        for word in words:
            assert word in message


def test_relative_budgets_resolve_against_the_input_model():
    budget = parse_budget("params=0.25x,latency_ms=4")
    assert budget.relative == ("params",) and budget.spec() == "params=0.25x,latency_ms=4"
    with pytest.raises(ValueError, match="relative"):
        budget.limits()
    resolved = budget.resolve({"params": 1000, "latency_ms": 9.0})
    assert resolved.limits() == {"params": 250.0, "latency_ms": 4.0}


def test_rank_caps_and_schedule():
    assert cap_sequence(16) == [12, 9, 6, 4, 3, 2, 1]
    assert cap_sequence(1) == []
    assert scheduled_steps(300) == (75, 150, 225, 300)
    assert scheduled_steps(2) == (1, 2)


def test_cli_bad_budget_exits_2_with_one_line(tmp_path, micro_config, corpus):
    out = tmp_path / "out"
    for spec, word in (("speed=3", "unknown key 'speed'"), ("params=lots", "'lots'")):
        result = invoke("train", "--config", micro_config, "--data", corpus[0], "--valid",
                        corpus[1], "--out", out, "--budget", spec)
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --budget") and word in lines[0]
        assert not out.exists()


# ---------------------------------------------------------------------------- training

def test_infeasible_budget_exits_2_with_the_smallest_figure_and_leaves_no_folder(
        tmp_path, micro_config, corpus):
    out = tmp_path / "out"
    result = invoke("train", "--config", micro_config, "--data", corpus[0], "--valid",
                    corpus[1], "--out", out, "--budget", "params=100,latency_ms=1000")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: --budget params=100 cannot be met: the smallest this "
                               "configuration reaches is ")
    assert "parameters" in lines[0] and "latency" not in lines[0]
    assert not out.exists()

    dense = invoke("train", "--config", micro_config, "--data", corpus[0], "--valid",
                   corpus[1], "--out", out, "--arch", "dense", "--budget", "params=1k")
    assert dense.exit_code == 2 and "dense arch has no TT ranks" in dense.output
    assert not out.exists()


def test_a_params_budget_that_needs_rounding_is_met_by_the_final_checkpoint(tmp_path, corpus):
    start = micro_params()
    limit = int(start * 0.8)
    out = tmp_path / "run"
    result = loop.train_run(out, preset_name="tiny", data=corpus[0], valid=corpus[1],
                            model_overrides=MICRO_MODEL,
                            train_overrides={**MICRO_TRAIN, "budget": f"params={limit}"},
                            quiet=True)
    assert result.budget["met"] and result.budget["limits"] == {"params": limit}
    run = load_run(out)
    params = count_params(run.model)
    assert params <= limit < start
    assert result.params == params == result.budget["figures"]["params"]

    records, _ = read_metrics(out)
    rounds = [r for r in records if r["event"] == "budget_round"]
    assert [r["step"] for r in rounds] == [2]  # the first scheduled step, then it fits
    assert rounds[0]["before"]["params"] == start and rounds[0]["after"]["params"] == params
    final = [r for r in records if r["event"] == "budget"]
    assert final[-1]["met"] and final[-1]["figures"]["params"] == params
    evals = [r for r in records if r["event"] == "eval"]
    assert evals[-1]["params"] == params

    # The rounded run resumes: a longer run is refused as a different request, not a crash.
    resumed = invoke("train", "--resume", out, "--steps", 12)
    assert resumed.exit_code == 2 and "train.steps" in resumed.output


def test_cli_prints_the_budget_met_and_keeps_it_in_the_json_summary(tmp_path, micro_config,
                                                                    corpus):
    out = tmp_path / "run"
    result = invoke("train", "--config", micro_config, "--data", corpus[0], "--valid",
                    corpus[1], "--out", out, "--budget", "latency_ms=1000", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["budget"]["met"] and summary["budget"]["estimated"]
    assert summary["budget"]["figures"]["latency_ms"] <= 1000


# ---------------------------------------------------------------------------- pareto

def test_non_dominated_on_a_hand_example():
    def point(step, ppl, params, latency, energy):
        return {"step": step, "val_perplexity_per_word": ppl, "params": params,
                "latency_ms": latency, "energy_uj": energy}
    a = point(1, 100, 1000, 1.0, 10)   # best perplexity
    b = point(2, 200, 500, 1.0, 10)    # smallest
    c = point(3, 200, 600, 1.0, 10)    # dominated by b
    d = point(4, 150, 800, 0.5, 12)    # fastest
    e = point(5, 150, 800, 0.5, 12)    # equal to d: neither dominates
    f = point(6, 300, 2000, 2.0, 20)   # dominated by everything
    assert non_dominated([a, b, c, d, e, f]) == [a, b, d, e]
    assert pick([a, b, c, d, e, f], Budget(params=900)) == e  # d/e tie: the later step
    assert pick([a, b, c, d, e, f], Budget(params=600, latency_ms=0.9)) is None


def test_pareto_command_writes_png_and_json_and_is_listed(tmp_path, micro_config, corpus):
    run = tmp_path / "run"
    assert invoke("train", "--config", micro_config, "--data", corpus[0], "--valid",
                  corpus[1], "--out", run, "--quiet").exit_code == 0
    out = tmp_path / "plots"
    result = invoke("pareto", run, "--out", out)
    assert result.exit_code == 0, result.output
    assert "estimated" in result.output
    png = (out / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    doc = json.loads((out / "pareto.json").read_text())
    assert [p["step"] for p in doc["points"]] == [2, 4, 6, 8]
    assert doc["frontier"] and all(p in doc["points"] for p in doc["frontier"])

    final = invoke("pareto", run, "--pick", "params=1M", "--json")
    chosen = json.loads(final.stdout)["pick"]
    assert chosen["checkpoint_step"] == 8
    assert final.exit_code == (0 if chosen["point"]["step"] == 8 else 2), final.output
    # An earlier, better point (made up here): reported, but its weights are not kept.
    record = {**json.loads((run / "metrics.jsonl").read_text().splitlines()[0]), "step": 4,
              "val_perplexity_per_word": 1.5}
    append_metrics(run, record)
    earlier = invoke("pareto", run, "--pick", "params=1M")
    assert earlier.exit_code == 2
    assert "the best point is step 4" in earlier.output and "not retained" in earlier.output
    none = invoke("pareto", run, "--pick", "params=1")
    assert none.exit_code == 2 and "no evaluated point meets it" in none.output
    assert (run / "pareto.json").is_file()

    help_text = invoke("--help").output
    assert "pareto" in help_text


def test_nan_guard_reloads_a_checkpoint_saved_before_the_rounding(tmp_path, corpus,
                                                                   poison_loss):
    poison_loss(3, 4)  # steps 3 and 4
    limit = int(micro_params() * 0.8)
    out = tmp_path / "run"
    result = loop.train_run(out, preset_name="tiny", data=corpus[0], valid=corpus[1],
                            model_overrides=MICRO_MODEL,
                            train_overrides={**MICRO_TRAIN, "budget": f"params={limit}",
                                             "max_bad_steps": 2}, quiet=True)
    records, _ = read_metrics(out)
    events = [(r["event"], r["step"]) for r in records if r["event"] != "eval"]
    # rounded at step 2, NaN guard back to the unrounded step-0 checkpoint, rounded again
    assert events == [("budget_round", 2), ("nan_guard", 4), ("budget_round", 2),
                      ("budget", 8)]
    assert result.budget["met"] and count_params(load_run(out).model) <= limit

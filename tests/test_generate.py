"""generate: KV-cached decoding equals recomputing from scratch, sampling is seeded,
top-k / top-p filter as specified, text streams whole characters."""

import pytest
import torch
from run_factory import tiny_model, tokenizer_json
from tokenizers import Tokenizer

from qtf_edge.generate import _Streamer, filter_logits, generate, top_p_keep

PROMPT = "The history of the castle"


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_str(tokenizer_json())


@pytest.fixture(scope="module")
def models():
    return {"qtf": tiny_model(), "dense": tiny_model(dense=True)}


def _greedy_without_cache(model, ids, n):
    """Full forward over the whole window at each step; the window is rebuilt on its
    recent half when it outgrows the context, as generate documents."""
    C, window, out = model.config.context_length, list(ids), []
    with torch.no_grad():
        for _ in range(n):
            token = int(model(torch.tensor([window]))[0, -1].argmax())
            out.append(token)
            window.append(token)
            if len(window) > C:
                window = window[-(C // 2):]
    return out


@pytest.mark.parametrize("arch", ["qtf", "dense"])
def test_greedy_decoding_with_the_cache_equals_recomputing(arch, models, tokenizer):
    model = models[arch]
    ids = tokenizer.encode(PROMPT).ids
    n = model.config.context_length - len(ids)  # fills the context exactly
    result = generate(model, tokenizer, PROMPT, max_new_tokens=n, temperature=0)
    assert result.token_ids == _greedy_without_cache(model, ids, n)
    assert not result.prompt_truncated


@pytest.mark.parametrize("arch", ["qtf", "dense"])
def test_decoding_past_the_context_rebuilds_on_the_recent_half(arch, models, tokenizer):
    model = models[arch]
    ids = tokenizer.encode(PROMPT).ids
    n = 2 * model.config.context_length + 3
    result = generate(model, tokenizer, PROMPT, max_new_tokens=n, temperature=0)
    assert len(result.token_ids) == n
    assert result.token_ids == _greedy_without_cache(model, ids, n)


def test_the_same_seed_gives_the_same_text_and_seeds_differ(models, tokenizer):
    model = models["qtf"]
    runs = [generate(model, tokenizer, PROMPT, max_new_tokens=12, seed=s).token_ids
            for s in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_top_k_1_is_greedy(models, tokenizer):
    model = models["dense"]
    greedy = generate(model, tokenizer, PROMPT, max_new_tokens=8, temperature=0)
    top1 = generate(model, tokenizer, PROMPT, max_new_tokens=8, temperature=1.0, top_k=1,
                    seed=3)
    assert top1.token_ids == greedy.token_ids


def test_top_p_keeps_the_smallest_set_with_enough_mass():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    assert top_p_keep(probs, 0.5).tolist() == [False, True, False, False]
    assert top_p_keep(probs, 0.8).tolist() == [False, True, False, True]
    assert top_p_keep(probs, 0.81).tolist() == [False, True, True, True]
    assert top_p_keep(probs, 1.0).tolist() == [True, True, True, True]
    assert top_p_keep(probs, 0.01).tolist() == [False, True, False, False]


def test_filter_logits_applies_top_k_then_top_p():
    logits = torch.log(torch.tensor([0.05, 0.5, 0.15, 0.3]))
    kept = torch.isfinite(filter_logits(logits, top_k=3))
    assert kept.tolist() == [False, True, True, True]
    # within the top 3 (renormalised 0.526, 0.316, 0.158) p = 0.85 needs all three,
    # where over all four (0.5, 0.3, ...) it needs only two
    assert torch.isfinite(filter_logits(logits, top_k=3, top_p=0.85)).tolist() == \
        [False, True, True, True]
    assert torch.isfinite(filter_logits(logits, top_p=0.79)).tolist() == \
        [False, True, False, True]
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == \
        [False, True, False, True]


def test_streamed_pieces_join_to_the_text(models, tokenizer):
    pieces = []
    result = generate(models["qtf"], tokenizer, PROMPT, max_new_tokens=20, seed=0,
                      on_token=pieces.append)
    assert "".join(pieces) == result.text
    assert result.text == tokenizer.decode(result.token_ids, skip_special_tokens=False)


def test_a_split_character_is_streamed_once_whole(tokenizer):
    ids = tokenizer.encode("caf\u00e9!").ids
    pieces = []
    streamer = _Streamer(tokenizer, pieces.append)
    for n in range(1, len(ids) + 1):
        streamer.push(ids[:n])
    streamer.push(ids, final=True)
    assert "".join(pieces) == "caf\u00e9!"
    assert all("\ufffd" not in p for p in pieces)


def test_a_long_prompt_keeps_its_end_and_is_flagged(models, tokenizer):
    model = models["dense"]
    prompt = " ".join(["castle"] * 100)
    result = generate(model, tokenizer, prompt, max_new_tokens=3, temperature=0)
    assert result.prompt_truncated and len(result.token_ids) == 3
    ids = tokenizer.encode(prompt).ids[-(model.config.context_length - 1):]
    assert result.token_ids == _greedy_without_cache(model, ids, 3)


@pytest.mark.parametrize("bad", [{"prompt": ""}, {"max_new_tokens": 0},
                                 {"temperature": -0.1}, {"top_k": 0}, {"top_p": 0.0},
                                 {"top_p": 1.5}])
def test_bad_arguments_are_refused(bad, models, tokenizer):
    kwargs = {"prompt": PROMPT, **bad}
    with pytest.raises(ValueError):
        generate(models["dense"], tokenizer, kwargs.pop("prompt"), **kwargs)

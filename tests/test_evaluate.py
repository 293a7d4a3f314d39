"""evaluate_text: the NLL of non-overlapping windows, the counts behind per-word
perplexity and bits per byte, and the per-token trace."""

import math

import pytest
import torch
import torch.nn.functional as F
from run_factory import tiny_model, tokenizer_json
from tokenizers import Tokenizer

from qtf_edge.data import (
    count_words_and_bytes,
    default_corpus,
    end_of_text_id,
    read_corpus,
)
from qtf_edge.evaluate import evaluate_text, per_token_trace, token_windows
from qtf_edge.tokens import token_text

LINES = read_corpus(default_corpus("valid"))[:5]


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_str(tokenizer_json())


@pytest.fixture(scope="module")
def qtf():
    return tiny_model()


@pytest.fixture(scope="module")
def dense():
    return tiny_model(dense=True)


def _stream(tokenizer, lines):
    eot = end_of_text_id(tokenizer)
    return [t for line in lines for t in (*tokenizer.encode(line).ids, eot)]


def _hand_nll(model, stream):
    """Window by window, one at a time: every token after the first predicted once."""
    C, nll, predicted = model.config.context_length, 0.0, 0
    with torch.no_grad():
        for start in range(0, len(stream) - 1, C):
            window = torch.tensor(stream[start:start + C + 1])
            logits = model(window[None, :-1])[0]
            nll += F.cross_entropy(logits, window[1:], reduction="sum").item()
            predicted += len(window) - 1
    assert predicted == len(stream) - 1
    return nll


@pytest.mark.parametrize("arch", ["qtf", "dense"])
def test_nll_equals_a_hand_loop_over_windows(arch, tokenizer, qtf, dense):
    model = qtf if arch == "qtf" else dense
    result = evaluate_text(model, tokenizer, LINES, batch_size=3)
    stream = _stream(tokenizer, LINES)
    assert (len(stream) - 1) % model.config.context_length != 0  # a partial last window
    assert result.tokens == result.perplexity.tokens == len(stream) - 1
    assert result.perplexity.nll == pytest.approx(_hand_nll(model, stream), rel=1e-5)
    assert result.params == sum(p.numel() for p in model.parameters())
    assert result.lines == len(LINES)


def test_batch_size_does_not_change_the_result(tokenizer, qtf):
    one = evaluate_text(qtf, tokenizer, LINES, batch_size=1)
    many = evaluate_text(qtf, tokenizer, LINES, batch_size=16)
    assert one.perplexity.nll == pytest.approx(many.perplexity.nll, rel=1e-5)
    assert one.routed_fraction == pytest.approx(many.routed_fraction, abs=1e-6)


def test_per_word_and_bits_per_byte_use_the_texts_counts(tokenizer, dense):
    result = evaluate_text(dense, tokenizer, LINES)
    words, size = count_words_and_bytes(LINES)
    p = result.perplexity
    assert (p.words, p.bytes) == (words, size)
    assert p.perplexity_per_word == pytest.approx(math.exp(p.nll / words))
    assert p.bits_per_byte == pytest.approx(p.nll / (size * math.log(2)))
    assert p.perplexity_per_token == pytest.approx(math.exp(p.nll / result.tokens))


def test_routed_fraction_is_reported_for_qtf_only(tokenizer, qtf, dense):
    assert 0.0 <= evaluate_text(qtf, tokenizer, LINES[:2]).routed_fraction <= 1.0
    assert evaluate_text(dense, tokenizer, LINES[:2]).routed_fraction is None


def test_max_tokens_at_a_line_boundary_counts_whole_lines(tokenizer, dense):
    first_two = len(_stream(tokenizer, LINES[:2]))
    result = evaluate_text(dense, tokenizer, LINES, max_tokens=first_two)
    assert result.tokens == first_two - 1 and result.lines == 2
    assert (result.perplexity.words, result.perplexity.bytes) == \
        count_words_and_bytes(LINES[:2])
    assert result.perplexity.nll == pytest.approx(
        evaluate_text(dense, tokenizer, LINES[:2]).perplexity.nll, rel=1e-6)


def test_max_tokens_inside_a_line_counts_the_kept_text_without_end_of_line(tokenizer, dense):
    first = len(_stream(tokenizer, LINES[:1]))
    kept_ids = tokenizer.encode(LINES[1]).ids[:10]
    result = evaluate_text(dense, tokenizer, LINES, max_tokens=first + 10)
    kept_text = tokenizer.decode(kept_ids)
    words, size = count_words_and_bytes(LINES[:1])
    assert result.tokens == first + 9 and result.lines == 2
    assert result.perplexity.words == words + len(kept_text.split())
    assert result.perplexity.bytes == size + len(kept_text.encode())


def test_windows_predict_every_token_after_the_first_once():
    stream = list(range(10))
    windows = token_windows(stream, 4)
    assert windows == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9]]
    assert [t for w in windows for t in w[1:]] == stream[1:]
    assert token_windows(list(range(9)), 4) == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8]]


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"max_tokens": 1}])
def test_bad_options_are_refused(bad, tokenizer, dense):
    with pytest.raises(ValueError):
        evaluate_text(dense, tokenizer, LINES, **bad)


def test_no_lines_are_refused(tokenizer, dense):
    with pytest.raises(ValueError, match="no text"):
        evaluate_text(dense, tokenizer, [])


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tokenizer):
    from qtf_edge.config import ModelConfig
    from qtf_edge.model import QTensorFormer
    small = QTensorFormer(ModelConfig(vocab_size=300, context_length=8, d_model=16,
                                      n_layers=1, n_heads=2, d_ff=32).dense_baseline())
    with pytest.raises(ValueError, match="vocab_size"):
        evaluate_text(small, tokenizer, LINES)


def test_per_token_trace_reports_each_blocks_decision(tokenizer, qtf):
    text = "The castle was built in 1250."
    rows = per_token_trace(qtf, tokenizer, text)
    ids = tokenizer.encode(text).ids
    assert [r["id"] for r in rows] == ids
    assert "".join(r["text"] for r in rows) == text
    config = qtf.config
    for row in rows:
        assert [b["block"] for b in row["blocks"]] == list(range(config.n_layers))
        for b in row["blocks"]:
            max_entropy = qtf.blocks[b["block"]].encoder.max_entropy
            assert b["hardness"] == pytest.approx(b["entropy"] / max_entropy)
            assert b["route"] in ("quantum", "classical")
            assert config.r_min <= b["rank"] <= config.r_max


def test_per_token_trace_of_a_dense_model_has_no_blocks(tokenizer, dense):
    rows = per_token_trace(dense, tokenizer, "Hello there")
    assert rows and all(r["blocks"] == [] for r in rows)


def test_token_text_shows_partial_utf8_as_escapes(tokenizer):
    ids = tokenizer.encode("\u00ef").ids  # two bytes; likely two byte tokens here
    shown = "".join(token_text(tokenizer, i) for i in ids)
    assert shown in ("\u00ef", "\\xc3\\xaf")
    assert token_text(tokenizer, end_of_text_id(tokenizer)) == "<|endoftext|>"

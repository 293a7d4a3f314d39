"""Perplexity and bits per byte, comparable across tokenizers (the WikiText convention).

A language model's loss is a total negative log-likelihood `nll` (in nats) over the N
tokens it predicted. Per-token perplexity `exp(nll / N)` depends on the tokenizer: a
tokenizer that cuts text into more, smaller pieces makes each piece easier to guess, so two
models with different vocabularies cannot be compared by it. The text itself can: the
same `nll` (the total cost of the whole text) divided by a tokenizer-free count is.

- Per-word perplexity `exp(nll / W)`, where W counts WikiText "words": the
  whitespace-separated tokens of each line plus one end-of-line (`<eos>`) per line. This
  is how WikiText results are published (Merity et al., 2016), so a subword model's
  figure can be set beside word-level results. The model's `<|endoftext|>` after each line
  plays the part of `<eos>`, and its cost is part of `nll`.
- Bits per byte `nll / (B ln 2)`, where B counts the UTF-8 bytes of each line plus one
  newline per line: the compression rate of the text, independent of any word notion.

`count_words_and_bytes` (in `token_cache`) gives W and B for a list of lines.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from qtf_edge.data.errors import DataError


def _check(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise DataError(f"{name} {value!r} is invalid: expected a number > 0")


def _exp(x: float) -> float:
    """exp that returns inf instead of raising for an untrained model's huge loss."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def perplexity_per_token(nll: float, tokens: int) -> float:
    """exp(nll / tokens): perplexity per predicted token (tokenizer-dependent)."""
    _check("tokens", tokens)
    return _exp(nll / tokens)


def perplexity_per_word(nll: float, words: int) -> float:
    """exp(nll / words): perplexity per WikiText word (words + one <eos> per line)."""
    _check("words", words)
    return _exp(nll / words)


def bits_per_byte(nll: float, num_bytes: int) -> float:
    """nll / (bytes * ln 2): bits per UTF-8 byte of text (newlines included)."""
    _check("bytes", num_bytes)
    return nll / (num_bytes * math.log(2))


@dataclass(frozen=True)
class TextPerplexity:
    """A model's total loss on some text, with the counts that normalise it.

    nll: total negative log-likelihood in nats over `tokens` predicted tokens of a text
    that has `words` WikiText words and `bytes` UTF-8 bytes (see the module docstring).
    """

    nll: float
    tokens: int
    words: int
    bytes: int

    def __post_init__(self) -> None:
        if isinstance(self.nll, bool) or not isinstance(self.nll, (int, float)) \
                or not self.nll >= 0:
            raise DataError(f"nll {self.nll!r} is invalid: expected a number >= 0 (nats)")
        for name in ("tokens", "words", "bytes"):
            _check(name, getattr(self, name))

    @property
    def nll_per_token(self) -> float:
        """Mean loss per predicted token in nats (the training loss)."""
        return self.nll / self.tokens

    @property
    def perplexity_per_token(self) -> float:
        return perplexity_per_token(self.nll, self.tokens)

    @property
    def perplexity_per_word(self) -> float:
        return perplexity_per_word(self.nll, self.words)

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.nll, self.bytes)

    def to_dict(self) -> dict[str, float]:
        """The inputs and every derived figure, for JSON (metrics.jsonl, eval reports)."""
        return {
            **asdict(self),
            "nll_per_token": self.nll_per_token,
            "perplexity_per_token": self.perplexity_per_token,
            "perplexity_per_word": self.perplexity_per_word,
            "bits_per_byte": self.bits_per_byte,
        }

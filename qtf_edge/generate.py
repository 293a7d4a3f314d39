"""Generate text from a prompt with a KV cache: one prefill, then one step per token.

Sampling: temperature 0 is greedy (argmax); otherwise logits / temperature, then top-k
(keep the k most likely), then top-p (keep the smallest set of most likely tokens whose
probability reaches p), then a draw from what is left. `seed` gives the draw its own
torch.Generator, so the same seed gives the same text.

Context: the model sees at most context_length tokens. A prompt longer than
context_length - 1 tokens keeps its last context_length - 1 (room for one new token) and
is flagged `prompt_truncated`. When the cache is full and more tokens are wanted, the
cache is rebuilt by one prefill over the most recent context_length // 2 tokens and
decoding goes on from there: one prefill per context_length // 2 new tokens instead of a
full re-prefill per token (a sliding window), at the price of the model forgetting the
older half of the context at each rebuild.

Generation does not stop at `<|endoftext|>`; it appears in the text as is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qtf_edge.tokens import check_tokenizer_fits, encode_text

__all__ = ["GenerationResult", "encode_prompt", "filter_logits", "generate", "top_p_keep"]

REPLACEMENT = "\ufffd"  # what a byte-level decoder gives for an unfinished UTF-8 sequence


@dataclass(frozen=True)
class GenerationResult:
    text: str               # the generated text only (not the prompt)
    token_ids: list[int]    # the generated ids
    prompt_truncated: bool  # the prompt lost tokens from its start to fit the context


def encode_prompt(model, tokenizer, prompt: str) -> tuple[list[int], bool]:
    """(ids, truncated): the prompt's ids, cut from the left to context_length - 1."""
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("prompt is empty: expected some text to continue")
    check_tokenizer_fits(model, tokenizer)
    ids = encode_text(tokenizer, prompt)
    if not ids:
        raise ValueError("prompt encodes to no tokens: expected some text to continue")
    keep = model.config.context_length - 1
    return ids[-keep:] if keep > 0 else ids[-1:], len(ids) > max(keep, 1)


def top_p_keep(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Boolean mask of the smallest set of most likely tokens whose mass is >= top_p
    (probs: a 1-D distribution). The most likely token is always kept."""
    order = torch.argsort(probs, descending=True)
    sorted_probs = probs[order]
    mass_before = torch.cumsum(sorted_probs, dim=0) - sorted_probs
    keep_sorted = mass_before < top_p
    keep_sorted[0] = True
    keep = torch.zeros_like(keep_sorted)
    keep[order] = keep_sorted
    return keep


def filter_logits(logits: torch.Tensor, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """1-D logits with everything outside top-k and then top-p set to -inf."""
    logits = logits.clone()
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits[logits < kth] = -torch.inf
    if top_p is not None and top_p < 1.0:
        keep = top_p_keep(torch.softmax(logits, dim=-1), top_p)
        logits[~keep] = -torch.inf
    return logits


def _check_options(max_new_tokens, temperature, top_k, top_p) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or top_k < 1):
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")


def _next_token(logits, temperature, top_k, top_p, generator) -> int:
    if temperature == 0:
        return int(torch.argmax(logits))
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class _Streamer:
    """Emits decoded text as it becomes final: the difference between decoding all
    generated ids and what was emitted before, holding back a trailing unfinished
    UTF-8 character (decoded as U+FFFD until its last byte arrives)."""

    def __init__(self, tokenizer, on_token: Callable[[str], None] | None):
        self.tokenizer, self.on_token, self.emitted = tokenizer, on_token, ""

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def push(self, ids: list[int], final: bool = False) -> str:
        text = self.decode(ids)
        stable = text if final else text.rstrip(REPLACEMENT)
        if self.on_token is not None and stable.startswith(self.emitted) \
                and len(stable) > len(self.emitted):
            self.on_token(stable[len(self.emitted):])
            self.emitted = stable
        return text


def generate(model, tokenizer, prompt: str, *, max_new_tokens: int = 64,
             temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, seed: int | None = None,
             on_token: Callable[[str], None] | None = None) -> GenerationResult:
    """Continue `prompt` by max_new_tokens tokens (see the module docstring).

    on_token(piece) is called with each new piece of decoded text as it is generated;
    the pieces join to the result's text. ValueError for an empty prompt or an option
    out of range (max_new_tokens >= 1, temperature >= 0, top_k >= 1, top_p in (0, 1]).
    """
    _check_options(max_new_tokens, temperature, top_k, top_p)
    context_ids, truncated = encode_prompt(model, tokenizer, prompt)
    window = model.config.context_length
    device = next(model.parameters()).device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    streamer = _Streamer(tokenizer, on_token)

    def prefill(ids: list[int]):
        cache = model.new_cache()
        logits = model(torch.tensor([ids], dtype=torch.long, device=device), cache)
        return cache, logits[0, -1]

    model.eval()
    new_ids: list[int] = []
    with torch.inference_mode():
        cache, logits = prefill(context_ids)
        for step in range(max_new_tokens):
            token = _next_token(logits, temperature, top_k, top_p, generator)
            new_ids.append(token)
            context_ids.append(token)
            streamer.push(new_ids)
            if step == max_new_tokens - 1:
                break
            if cache.length + 1 > window:  # full: rebuild on the recent half (docstring)
                context_ids = context_ids[-(window // 2 or 1):]
                cache, logits = prefill(context_ids)
            else:
                token_tensor = torch.tensor([[token]], dtype=torch.long, device=device)
                logits = model(token_tensor, cache)[0, -1]
    text = streamer.push(new_ids, final=True)
    return GenerationResult(text=text, token_ids=new_ids, prompt_truncated=truncated)

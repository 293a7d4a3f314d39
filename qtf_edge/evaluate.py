"""Evaluate a model on text: perplexity per token and per word, and bits per byte.

The text is read as training reads it: one stream of each line's ids followed by
`<|endoftext|>`. The stream is cut into non-overlapping windows of context_length + 1
tokens that start context_length apart (the last, partial window included), so each
window predicts its last context_length tokens and every token after the first is
predicted exactly once. That makes the summed loss a property of the text, which is
what per-word perplexity and bits per byte divide by (see `qtf_edge.data.metrics`).
Non-overlapping windows give the first tokens of each window little context: the figure
is a fair, slightly pessimistic one, cheaper than a sliding window by context_length x.

Also `per_token_trace`: what each block decided for each token of a short text (its
entanglement entropy, hardness, route and TT rank), to show the model adapting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qtf_edge.cost.counts import count_params
from qtf_edge.data import TextPerplexity, count_words_and_bytes
from qtf_edge.tokens import check_tokenizer_fits, encode_lines, encode_text, token_text

__all__ = ["EvalResult", "evaluate_text", "per_token_trace", "token_windows"]


@dataclass(frozen=True)
class EvalResult:
    perplexity: TextPerplexity   # nll, tokens, words, bytes and the derived figures
    tokens: int                  # tokens predicted (the stream's length minus one)
    params: int
    routed_fraction: float | None  # mean share of tokens sent to QKSAM; None without router
    lines: int                   # lines evaluated (the last may be cut by max_tokens)

    def to_dict(self) -> dict:
        # perplexity's "tokens" is the number predicted, as self.tokens
        return {**self.perplexity.to_dict(), "params": self.params, "routed_fraction": self.routed_fraction,
                "lines": self.lines}


def token_windows(stream: list[int], context_length: int) -> list[list[int]]:
    """Windows of context_length + 1 ids starting every context_length ids; each one's
    inputs are window[:-1] and targets window[1:]. A last window of one id (nothing to
    predict) is dropped."""
    step = context_length
    return [stream[start:start + step + 1] for start in range(0, len(stream) - 1, step)]


def _stream_and_counts(tokenizer, lines: list[str], max_tokens: int | None
                       ) -> tuple[list[int], int, int, int]:
    """(ids, words, bytes, lines used): the whole text, or its first max_tokens ids.

    A line cut short by max_tokens counts the words and bytes of the text its kept ids
    decode to, and no end-of-line (its `<|endoftext|>` is not in the stream)."""
    encoded = encode_lines(tokenizer, lines)
    if max_tokens is None:
        words, size = count_words_and_bytes(lines)
        return [t for ids in encoded for t in ids], words, size, len(lines)
    stream: list[int] = []
    for used, (line, ids) in enumerate(zip(lines, encoded)):
        room = max_tokens - len(stream)
        if len(ids) <= room:
            stream += ids
            continue
        words, size = count_words_and_bytes(lines[:used])
        kept = ids[:room]
        if kept:  # a partial line: its text without the end-of-line
            text = tokenizer.decode(kept, skip_special_tokens=False)
            words, size = words + len(text.split()), size + len(text.encode("utf-8"))
            stream += kept
            used += 1
        return stream, words, size, used
    words, size = count_words_and_bytes(lines)
    return stream, words, size, len(lines)


def evaluate_text(model, tokenizer, lines: list[str], *, batch_size: int = 8,
                  device: str | torch.device = "cpu", max_tokens: int | None = None
                  ) -> EvalResult:
    """Total loss of `model` on `lines` (see the module docstring for the windows).

    device: where to run; the model is moved there (and left there).
    max_tokens: evaluate only the stream's first max_tokens ids (words and bytes are
    counted on the same text). The NLL is summed in float64 so long texts do not lose
    precision. ValueError for no lines, fewer than 2 tokens, a bad batch_size or
    max_tokens, or a tokenizer larger than the model's vocabulary.
    """
    if not lines:
        raise ValueError("no text to evaluate: expected at least one non-blank line")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool)
                                   or not isinstance(max_tokens, int) or max_tokens < 2):
        raise ValueError(f"max_tokens must be an integer >= 2, got {max_tokens!r}")
    check_tokenizer_fits(model, tokenizer)
    stream, words, size, used = _stream_and_counts(tokenizer, lines, max_tokens)
    if len(stream) < 2:
        raise ValueError("the text is a single token: nothing to predict")

    windows = token_windows(stream, model.config.context_length)
    full = [w for w in windows if len(w) == model.config.context_length + 1]
    # Full windows are batched; the last, shorter one runs alone (no padding to mask).
    batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    batches += [[w] for w in windows[len(full):]]

    model.eval().to(device)
    nll, routed, routed_tokens = 0.0, 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            ids = torch.tensor(batch, dtype=torch.long, device=device)
            logits = model(ids[:, :-1])
            losses = F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(),
                                     reduction="none")
            nll += float(losses.double().sum())
            fraction = model.routed_fraction()
            if fraction is not None:  # weighted by tokens: batches differ in size
                n = ids[:, :-1].numel()
                routed, routed_tokens = routed + fraction * n, routed_tokens + n
    tokens = len(stream) - 1
    return EvalResult(
        perplexity=TextPerplexity(nll=nll, tokens=tokens, words=words, bytes=size),
        tokens=tokens, params=count_params(model),
        routed_fraction=routed / routed_tokens if routed_tokens else None, lines=used)


def per_token_trace(model, tokenizer, text: str) -> list[dict]:
    """For each token of `text` (its first context_length tokens): its id, its text, and
    per block its entanglement entropy (nats), hardness S / S_max, route ("quantum" for
    QKSAM, "classical") and FFN TT rank. Blocks without a quantum encoder report nothing
    (a dense model gives empty `blocks` lists); route and rank are None when the router
    or adaptive ranks are off."""
    check_tokenizer_fits(model, tokenizer)
    ids = encode_text(tokenizer, text)[:model.config.context_length]
    if not ids:
        raise ValueError("text for the per-token trace is empty")
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        model(torch.tensor([ids], dtype=torch.long, device=device))
    traced = [(index, block) for index, block in enumerate(model.blocks)
              if block.encoder is not None and block.trace is not None]
    rows = []
    for t, token_id in enumerate(ids):
        blocks = []
        for index, block in traced:
            trace, entropy = block.trace, float(block.trace.entropy[0, t])
            blocks.append({
                "block": index,
                "entropy": entropy,
                "hardness": entropy / block.encoder.max_entropy,
                "route": None if trace.routed is None
                else ("quantum" if trace.routed[0, t] > 0.5 else "classical"),
                "rank": None if trace.rank is None else int(trace.rank[0, t]),
            })
        rows.append({"position": t, "id": token_id,
                     "text": token_text(tokenizer, token_id),
                     "blocks": blocks})
    return rows

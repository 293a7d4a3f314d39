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

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qtf_edge.cost.counts import count_params
from qtf_edge.data import TextPerplexity, count_words_and_bytes
from qtf_edge.tokens import check_tokenizer_fits, encode_lines, encode_text, token_text

__all__ = ["EvalResult", "TraceSummary", "evaluate_text", "per_token_trace", "token_windows",
           "window_batches", "windows_loss"]


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


def window_batches(windows, batch_size: int, device) -> list[torch.Tensor]:
    """Windows of equal length stacked into (B, T) id tensors: only the last window may be
    shorter than the others, so nothing is padded."""
    out = []
    for length in sorted({len(w) for w in windows}, reverse=True):
        same = [list(w) for w in windows if len(w) == length]
        out += [torch.tensor(same[i:i + batch_size], dtype=torch.long, device=device)
                for i in range(0, len(same), batch_size)]
    return out


@dataclass(frozen=True)
class TraceSummary:
    """What the model decided on the evaluated tokens (None where a part is off)."""
    quantum_fraction: float | None  # share of tokens routed to QKSAM, over blocks
    mean_entropy: float | None      # entanglement entropy (nats), over blocks and tokens
    mean_tt_rank: float | None      # adaptive FFN rank used, over blocks and tokens


def windows_loss(model, windows, *, batch_size: int, device: torch.device,
                 float32: bool = False) -> tuple[float, TraceSummary]:
    """Summed NLL (float64) of `model` over token windows (each: inputs window[:-1],
    targets window[1:]), and a token-weighted summary of its routing, entropy and rank.

    Windows of equal length are batched; only the last can be shorter, so nothing is
    padded. bf16 autocast on CUDA, as in training, unless float32: bf16 rounds weights
    about as coarsely as int8 does, so comparing quantised models needs float32. The
    model runs in eval mode and is given back in the mode it had.
    """
    was_training = model.training
    model.eval()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16)
                if torch.device(device).type == "cuda" and not float32
                else contextlib.nullcontext())
    nll = 0.0
    sums = {"routed": 0.0, "entropy": 0.0, "rank": 0.0}
    seen = {"routed": 0, "entropy": 0, "rank": 0}
    try:
        with torch.inference_mode():
            for ids in window_batches(windows, batch_size, device):
                with autocast:
                    logits = model(ids[:, :-1])
                nll += float(F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten(),
                                             reduction="none").double().sum())
                _accumulate(model, ids[:, 1:].numel(), sums, seen)
    finally:
        model.train(was_training)
    return nll, TraceSummary(*(sums[k] / seen[k] if seen[k] else None
                               for k in ("routed", "entropy", "rank")))


def _accumulate(model, n_tokens: int, sums: dict, seen: dict) -> None:
    """Token-weighted sums of the last forward pass's routing, entropy and rank."""
    routed = model.routed_fraction()
    if routed is not None:
        sums["routed"] += routed * n_tokens
        seen["routed"] += n_tokens
    for trace in model.token_traces():
        sums["entropy"] += float(trace.entropy.float().sum())
        seen["entropy"] += trace.entropy.numel()
        if trace.rank is not None:
            sums["rank"] += float(trace.rank.float().sum())
            seen["rank"] += trace.rank.numel()


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
                  device: str | torch.device = "cpu", max_tokens: int | None = None,
                  float32: bool = False) -> EvalResult:
    """Total loss of `model` on `lines` (see the module docstring for the windows).

    device: where to run; the model is moved there (and left there).
    max_tokens: evaluate only the stream's first max_tokens ids (words and bytes are
    counted on the same text). float32: see windows_loss. The NLL is summed in float64 so long texts do not lose
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

    model.to(device)
    nll, summary = windows_loss(model, token_windows(stream, model.config.context_length),
                                batch_size=batch_size, device=device, float32=float32)
    tokens = len(stream) - 1
    return EvalResult(
        perplexity=TextPerplexity(nll=nll, tokens=tokens, words=words, bytes=size),
        tokens=tokens, params=count_params(model),
        routed_fraction=summary.quantum_fraction, lines=used)


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


def visible_text(text: str) -> str:
    """A token's text with whitespace made visible (a leading space is meaningful)."""
    return text.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u2423")

"""Text <-> the model's token ids, the same way training sees them.

Training reads a corpus as one stream: each line's ids, then `<|endoftext|>` (see
`qtf_edge.data.encode_corpus`). Evaluation must see exactly that stream, or its
perplexity is not the training loss's; generation needs the prompt's ids and a check
that the tokenizer and the model agree on the vocabulary.
"""

from __future__ import annotations

from qtf_edge.data import end_of_text_id


def check_tokenizer_fits(model, tokenizer) -> None:
    """ValueError if the tokenizer can produce ids the model has no embedding for."""
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    vocab = model.config.vocab_size
    if size > vocab:
        raise ValueError(f"tokenizer.json has {size} tokens but the model's vocab_size is "
                         f"{vocab}: expected the tokenizer the run was trained with")


def encode_lines(tokenizer, lines: list[str]) -> list[list[int]]:
    """Each line's ids followed by `<|endoftext|>` (one list per line)."""
    separator = end_of_text_id(tokenizer)
    encodings = tokenizer.encode_batch(list(lines), add_special_tokens=False)
    return [[*encoding.ids, separator] for encoding in encodings]


def token_stream(tokenizer, lines: list[str]) -> list[int]:
    """The lines' ids as one stream, as training and evaluation read them."""
    return [t for ids in encode_lines(tokenizer, lines) for t in ids]


def encode_text(tokenizer, text: str) -> list[int]:
    """The ids of `text` as it is (no separator added)."""
    return tokenizer.encode(text, add_special_tokens=False).ids


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's): printable bytes stand for themselves, the
    others are shifted to code points from 256 up. Maps each symbol to its byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
                 *range(ord("\xae"), ord("\xff") + 1)]
    symbols, shift = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[chr(byte)] = byte
        else:
            symbols[chr(256 + shift)] = byte
            shift += 1
    return symbols


_BYTE_OF_SYMBOL = _byte_level_alphabet()


def token_text(tokenizer, token_id: int) -> str:
    """One token's text. A token holding part of a multi-byte UTF-8 character shows its
    undecodable bytes as \\xNN escapes rather than as U+FFFD, so each token is legible
    on its own; special tokens show their name."""
    symbol = tokenizer.id_to_token(token_id)
    if symbol is None:
        return f"<unknown id {token_id}>"
    if any(ch not in _BYTE_OF_SYMBOL for ch in symbol):  # a special token such as <|endoftext|>
        return symbol
    raw = bytes(_BYTE_OF_SYMBOL[ch] for ch in symbol)
    return raw.decode("utf-8", errors="backslashreplace")

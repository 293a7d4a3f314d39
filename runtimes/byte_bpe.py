"""A pure-Python reader of byte-level BPE tokenizer.json files, for devices without the
`tokenizers` wheel (no build for the platform, or no compiler to make one).

    tokenizer = ByteLevelBPE.from_file("tokenizer.json")
    tokenizer.encode("The castle was").ids, tokenizer.decode(ids)

It implements exactly what qtf-edge's tokenizers use, the GPT-2 scheme as Hugging Face
`tokenizers` writes it: added tokens split out first; a ByteLevel pre-tokenizer (its split
pattern, then bytes mapped to printable characters); BPE merges by rank; a ByteLevel
decoder; special tokens skipped when decoding. A tokenizer.json with anything else
(a normalizer, another model or pre-tokenizer) is refused with ValueError, so a mismatch
cannot pass silently. Hand-written because `tokenizers` is the only implementation of
this format on PyPI and it is a compiled (Rust) package. Python's `re` has no \\p{L} or
\\p{N}, so the split pattern is scanned by hand with unicodedata's categories.
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache

CONTRACTIONS = ("'re", "'ve", "'ll", "'s", "'t", "'m", "'d")  # longest first
# Characters Rust's regex counts as \s (Unicode White_Space) that str.isspace() does not,
# and the reverse (the ASCII information separators).
_NOT_SPACE = set("\x1c\x1d\x1e\x1f")


def _is_space(c):
    return c.isspace() and c not in _NOT_SPACE


def _is_letter(c):
    return unicodedata.category(c).startswith("L")


def _is_number(c):
    return unicodedata.category(c).startswith("N")


def _is_other(c):
    return not (_is_space(c) or _is_letter(c) or _is_number(c))


def split_words(text):
    """GPT-2's pattern, as tokenizers' ByteLevel pre-tokenizer applies it:
    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
    tried in that order at each position."""
    words, i, n = [], 0, len(text)
    while i < n:
        end = _match(text, i, n)
        words.append(text[i:end])
        i = end
    return words


def _match(text, i, n):
    for contraction in CONTRACTIONS:
        if text.startswith(contraction, i):
            return i + len(contraction)
    start = i + 1 if text[i] == " " and i + 1 < n else i  # the optional leading space
    for kind in (_is_letter, _is_number, _is_other):
        if kind(text[start]):
            end = start + 1
            while end < n and kind(text[end]):
                end += 1
            return end
    # whitespace: a run, less its last character when something follows it (that one
    # joins the next word), unless the run is a single character
    end = i
    while end < n and _is_space(text[end]):
        end += 1
    return end - 1 if end < n and end - i >= 2 else end


@lru_cache(maxsize=1)
def bytes_to_unicode():
    """GPT-2's map from the 256 byte values to printable characters."""
    kept = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
            + list(range(ord("\xae"), ord("\xff") + 1)))
    chars, extra = dict(zip(kept, kept)), 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {b: chr(c) for b, c in chars.items()}


class Encoding:
    def __init__(self, ids):
        self.ids = ids


class ByteLevelBPE:
    """The subset of tokenizers.Tokenizer that run.py uses: from_file, encode, decode."""

    def __init__(self, doc, path="tokenizer.json"):
        _check_supported(doc, path)
        model = doc["model"]
        self.vocab = dict(model["vocab"])
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
                  for m in model["merges"]]
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}
        added = doc.get("added_tokens") or []
        self.added = {t["content"]: t["id"] for t in added}
        self.special = {t["id"] for t in added if t.get("special")}
        self.tokens = {i: t for t, i in self.vocab.items()}
        self.tokens.update({i: t for t, i in self.added.items()})
        self.split_added = (re.compile("(" + "|".join(
            re.escape(t) for t in sorted(self.added, key=len, reverse=True)) + ")")
            if self.added else None)
        self.byte_chars = bytes_to_unicode()
        self.char_bytes = {c: b for b, c in self.byte_chars.items()}
        self._word_ids = lru_cache(maxsize=65536)(self._bpe_ids)

    @classmethod
    def from_file(cls, path):
        with open(path, "rb") as f:
            return cls(json.loads(f.read().decode("utf-8")), path)

    def encode(self, text):
        ids = []
        pieces = self.split_added.split(text) if self.split_added else [text]
        for k, piece in enumerate(pieces):
            if k % 2:  # an added token, matched by the split's group
                ids.append(self.added[piece])
                continue
            for word in split_words(piece):
                ids.extend(self._word_ids(word))
        return Encoding(ids)

    def _bpe_ids(self, word):
        symbols = [self.byte_chars[b] for b in word.encode("utf-8")]
        while len(symbols) > 1:
            pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        try:
            return tuple(self.vocab[s] for s in symbols)
        except KeyError as e:
            raise ValueError(f"the symbol {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids, skip_special_tokens=True):
        text = "".join(self.tokens[i] for i in ids
                       if not (skip_special_tokens and i in self.special))
        data = bytes(self.char_bytes[c] for c in text if c in self.char_bytes)
        return data.decode("utf-8", errors="replace")


def _check_supported(doc, path):
    def refuse(what):
        raise ValueError(f"{path}: {what}; this pure-Python reader handles byte-level BPE "
                         f"only (pip install tokenizers for the rest)")
    if not isinstance(doc, dict) or not isinstance(doc.get("model"), dict):
        refuse("not a tokenizer.json")
    model, pre, dec = doc["model"], doc.get("pre_tokenizer") or {}, doc.get("decoder") or {}
    if model.get("type") != "BPE" or model.get("dropout") or model.get(
            "continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get(
            "byte_fallback"):
        refuse(f"model {model.get('type')!r} with options this reader lacks")
    if doc.get("normalizer") is not None or doc.get("post_processor") is not None:
        refuse("it has a normalizer or post-processor")
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get(
            "use_regex", True):
        refuse(f"pre-tokenizer {pre.get('type')!r} with options this reader lacks")
    if dec.get("type") != "ByteLevel":
        refuse(f"decoder {dec.get('type')!r}")

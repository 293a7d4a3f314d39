"""Byte-level BPE tokenizers (Hugging Face `tokenizers`), saved as a plain `tokenizer.json`.

Byte-level BPE (as in GPT-2) starts from the 256 byte values, so any UTF-8 text encodes
without an unknown token and decodes back to exactly the same string. The saved
`tokenizer.json` is the standard format: `tokenizers.Tokenizer.from_file` and
`transformers.PreTrainedTokenizerFast(tokenizer_file=...)` both load it and give the same ids.

The trained vocabulary can be smaller than asked for when the corpus has too few repeated
pairs to learn more merges; set the model's `vocab_size` from `tok.get_vocab_size()`,
never from the number that was requested.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from qtf_edge.atomic import write_text_atomic
from qtf_edge.data.errors import DataError

# The document separator, and the only special token. Id 0, so that it is the same in every
# tokenizer this package trains, whatever the vocabulary size.
END_OF_TEXT = "<|endoftext|>"
SPECIAL_TOKENS = (END_OF_TEXT,)
BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)


def train_tokenizer(lines: Iterable[str], vocab_size: int = 8192,
                    min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE tokenizer on `lines` (one document or paragraph each).

    `vocab_size` counts the 256 bytes and `<|endoftext|>` (id 0); merges fill the rest, and
    only pairs seen at least `min_frequency` times are merged. The result may be smaller
    than `vocab_size` on a small corpus: read the real size from `get_vocab_size()`.
    Training is deterministic: the same lines give the same `tokenizer.json`.
    """
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) \
            or vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"vocab_size {vocab_size!r} is too small: expected an integer >= "
                        f"{MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} special token)")
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) \
            or min_frequency < 1:
        raise DataError(f"min_frequency {min_frequency!r} is invalid: expected an integer >= 1")
    lines = list(lines)
    if not any(line.strip() for line in lines):
        raise DataError("tokenizer training lines are empty: expected text, one paragraph "
                        "per line")

    tokenizer = Tokenizer(models.BPE())
    # add_prefix_space=False: the text is kept exactly as given, so decode(encode(s)) == s.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),  # added first, so <|endoftext|> gets id 0
        # All 256 byte symbols, even those absent from the corpus, so nothing is ever unknown.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(lines, trainer=trainer, length=len(lines))
    return tokenizer


def end_of_text_id(tokenizer: Tokenizer) -> int:
    """Return the id of `<|endoftext|>`, or raise DataError if the tokenizer lacks it."""
    token_id = tokenizer.token_to_id(END_OF_TEXT)
    if token_id is None:
        raise DataError(f"tokenizer has no {END_OF_TEXT} token: expected one trained by "
                        "qtf_edge.data.train_tokenizer")
    return token_id


def save_tokenizer(tokenizer: Tokenizer, path: str | os.PathLike) -> None:
    """Write `tokenizer` to `path` as `tokenizer.json` text, atomically."""
    write_text_atomic(path, tokenizer.to_str(pretty=True))


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a `tokenizer.json`; DataError (naming the file) if it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tokenizer {path} does not exist: expected a tokenizer.json file")
    try:
        text = path.read_text(encoding="utf-8")
        return Tokenizer.from_str(text)
    except UnicodeDecodeError:
        raise DataError(f"tokenizer {path} is not UTF-8 text: expected a tokenizer.json "
                        "file") from None
    except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception on bad JSON
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"tokenizer {path} is invalid ({reason}): expected a tokenizer.json "
                        "file") from None


def tokenizer_sha256(path: str | os.PathLike) -> str:
    """Return the hex sha256 of a saved tokenizer file's bytes (keys the token cache)."""
    path = Path(path)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise DataError(f"tokenizer {path} does not exist: expected a tokenizer.json "
                        "file") from None

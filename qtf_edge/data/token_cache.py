"""Token ids of a whole corpus, computed once and cached on disk as a flat array.

The cache file is `<cache_dir>/<corpus_sha[:16]>-<tokenizer_sha[:16]>.bin`: the raw ids
(native little-endian uint16, or uint32 for vocabularies over 65,536), readable with
`numpy.memmap`, plus a `.json` sidecar naming its dtype, length and both full hashes.
Keying on both hashes means a changed corpus or a retrained tokenizer never reuses stale
ids. Both files are written atomically, sidecar last, so a sidecar only ever describes a
complete `.bin`; anything that does not match is simply encoded again.

Also here: the WikiText word and byte counts that turn a model's loss into per-word
perplexity and bits per byte (see `qtf_edge.data.metrics`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from qtf_edge.atomic import write_text_atomic, atomic_writer
from qtf_edge.data.corpus import corpus_sha256
from qtf_edge.data.errors import DataError
from qtf_edge.data.tokenizer import end_of_text_id

CACHE_ENV = "QTF_EDGE_CACHE"
CACHE_FORMAT = 1
# Lines per encode_batch call: large enough for the Rust side to parallelise, small enough
# that a big corpus is never held in memory as Python lists of ids all at once.
_BATCH_LINES = 4096


def default_cache_dir() -> Path:
    """`$QTF_EDGE_CACHE` if set, else `~/.cache/qtf-edge`."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "qtf-edge"


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id of a `vocab_size` vocabulary."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def cache_paths(corpus_hash: str, tokenizer_hash: str,
                cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Return the (`.bin`, `.json`) paths of a corpus/tokenizer pair's cache entry."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = f"{corpus_hash[:16]}-{tokenizer_hash[:16]}"
    return folder / f"{stem}.bin", folder / f"{stem}.json"


def encode_corpus(lines: list[str], tokenizer, tokenizer_hash: str,
                  cache_dir: str | os.PathLike | None = None) -> np.memmap:
    """Return all lines' token ids as one read-only 1-D memmap, each line followed by
    `<|endoftext|>` (the document separator), encoding only on a cache miss.

    `tokenizer` is a `tokenizers.Tokenizer` (anything with `encode_batch`,
    `get_vocab_size` and `token_to_id` will do); `tokenizer_hash` is the sha256 of its
    saved file (`tokenizer_sha256`). `cache_dir` defaults to `default_cache_dir()`.
    """
    if not lines:
        raise DataError("corpus lines are empty: expected text, one paragraph per line")
    if not isinstance(tokenizer_hash, str) or len(tokenizer_hash) < 16:
        raise DataError(f"tokenizer_hash {tokenizer_hash!r} is invalid: expected the hex "
                        "sha256 of the saved tokenizer file")
    corpus_hash = corpus_sha256(lines)
    bin_path, meta_path = cache_paths(corpus_hash, tokenizer_hash, cache_dir)

    cached = _open_cached(bin_path, meta_path, corpus_hash, tokenizer_hash)
    if cached is not None:
        return cached

    dtype = token_dtype(tokenizer.get_vocab_size(with_added_tokens=True))
    separator = end_of_text_id(tokenizer)
    length = 0
    with atomic_writer(bin_path) as handle:
        for start in range(0, len(lines), _BATCH_LINES):
            batch = tokenizer.encode_batch(lines[start:start + _BATCH_LINES],
                                           add_special_tokens=False)
            ids = [token for encoding in batch for token in (*encoding.ids, separator)]
            handle.write(np.asarray(ids, dtype="<" + dtype.str[1:]).tobytes())
            length += len(ids)
    meta = {
        "format": CACHE_FORMAT,
        "dtype": dtype.name,
        "byte_order": "little",
        "length": length,
        "lines": len(lines),
        "end_of_text_id": separator,
        "corpus_sha256": corpus_hash,
        "tokenizer_sha256": tokenizer_hash,
    }
    write_text_atomic(meta_path, json.dumps(meta, indent=2) + "\n")
    return _memmap(bin_path, dtype, length)


def _open_cached(bin_path: Path, meta_path: Path, corpus_hash: str,
                 tokenizer_hash: str) -> np.memmap | None:
    """The cached ids if the sidecar matches both hashes and the `.bin` size; else None."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        dtype = np.dtype(meta["dtype"])
        length = int(meta["length"])
        valid = (meta["format"] == CACHE_FORMAT
                 and meta["corpus_sha256"] == corpus_hash
                 and meta["tokenizer_sha256"] == tokenizer_hash
                 and dtype in (np.uint16, np.uint32)
                 and length > 0
                 and bin_path.stat().st_size == length * dtype.itemsize)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no entry, or a damaged one: encode again and overwrite it
    return _memmap(bin_path, dtype, length) if valid else None


def _memmap(path: Path, dtype: np.dtype, length: int) -> np.memmap:
    # Read-only: the cache is shared by every run that uses this corpus and tokenizer.
    return np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", shape=(length,))


def count_words_and_bytes(lines: list[str]) -> tuple[int, int]:
    """Return (words, bytes) of `lines` by the WikiText convention.

    words = whitespace-separated tokens of each line + 1 end-of-line per line;
    bytes = UTF-8 bytes of each line + 1 newline per line.
    Counted on the lines given: WikiText's published counts (e.g. 217,646 for valid)
    include the end-of-line of its blank lines, which `read_corpus` drops.
    """
    words = sum(len(line.split()) for line in lines) + len(lines)
    size = sum(len(line.encode("utf-8")) for line in lines) + len(lines)
    return words, size

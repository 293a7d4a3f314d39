"""Data layer: corpora, byte-level BPE tokenizers, a token cache and text metrics.

Flow: `read_corpus` -> `train_tokenizer` / `load_tokenizer` -> `encode_corpus` (cached ids)
-> the model's loss -> `TextPerplexity` (per token, per word, bits per byte). Bad input
raises `DataError`, whose one-line message names the file or argument at fault.
"""

from qtf_edge.data.corpus import corpus_sha256, default_corpus, read_corpus
from qtf_edge.data.errors import DataError
from qtf_edge.data.metrics import (
    TextPerplexity,
    bits_per_byte,
    perplexity_per_token,
    perplexity_per_word,
)
from qtf_edge.data.token_cache import (
    count_words_and_bytes,
    default_cache_dir,
    encode_corpus,
)
from qtf_edge.data.tokenizer import (
    END_OF_TEXT,
    end_of_text_id,
    load_tokenizer,
    save_tokenizer,
    tokenizer_sha256,
    train_tokenizer,
)

__all__ = [
    "END_OF_TEXT",
    "DataError",
    "TextPerplexity",
    "bits_per_byte",
    "corpus_sha256",
    "count_words_and_bytes",
    "default_cache_dir",
    "default_corpus",
    "encode_corpus",
    "end_of_text_id",
    "load_tokenizer",
    "perplexity_per_token",
    "perplexity_per_word",
    "read_corpus",
    "save_tokenizer",
    "tokenizer_sha256",
    "train_tokenizer",
]

"""Data layer: corpora, tokenizer, token cache, WikiText counts and text metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import tokenizers

from qtf_edge.data import (
    END_OF_TEXT,
    DataError,
    TextPerplexity,
    bits_per_byte,
    corpus_sha256,
    count_words_and_bytes,
    default_cache_dir,
    default_corpus,
    encode_corpus,
    load_tokenizer,
    perplexity_per_token,
    perplexity_per_word,
    read_corpus,
    save_tokenizer,
    tokenizer_sha256,
    train_tokenizer,
)
from qtf_edge.data.make_default_corpus import cut_excerpt

REPO = Path(__file__).resolve().parents[1]
WIKITEXT = REPO / ".." / "shared" / "data" / "wikitext-2"

UNICODE_LINE = (" Zoë 's café — naïve 日本語 emoji 🙂 , tabs\tand  double  spaces "
                "\u2028 end ")


@pytest.fixture(scope="module")
def train_lines() -> list[str]:
    return read_corpus(default_corpus("train"))


@pytest.fixture(scope="module")
def small_tokenizer(train_lines) -> tokenizers.Tokenizer:
    return train_tokenizer(train_lines[:300] + [UNICODE_LINE], vocab_size=512)


@pytest.fixture(scope="module")
def saved_tokenizer(small_tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    save_tokenizer(small_tokenizer, path)
    return path


# --- corpus -------------------------------------------------------------------------------

def test_read_file_drops_blank_lines_and_keeps_text_verbatim(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b" = Title = \n \n\nfirst line \r\n\t\nsecond\n")
    assert read_corpus(path) == [" = Title = ", "first line ", "second"]


def test_read_folder_reads_txt_files_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("bee\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("ant\n\n", encoding="utf-8")
    (tmp_path / "c.md").write_text("not a corpus file\n", encoding="utf-8")
    assert read_corpus(tmp_path) == ["ant", "bee"]
    assert read_corpus(str(tmp_path)) == ["ant", "bee"]


@pytest.mark.parametrize("content", [b"", b"  \n\t\n\n \r\n"], ids=["empty", "whitespace"])
def test_empty_corpus_is_an_error_naming_the_path(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"corpus .*empty\.txt is empty: expected text"):
        read_corpus(path)


def test_missing_corpus_and_folder_without_txt_are_errors(tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt does not exist"):
        read_corpus(tmp_path / "nope.txt")
    with pytest.raises(DataError, match=rf"{tmp_path} has no \*\.txt files"):
        read_corpus(tmp_path)


def test_invalid_utf8_names_the_file_and_byte_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good line\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"bad\.txt is not valid UTF-8 at byte offset 14 "
                                        r"\(line 2\)") as info:
        read_corpus(path)
    assert "\n" not in str(info.value)


def test_corpus_sha256_is_sha256sum_of_the_lines(tmp_path):
    import hashlib
    lines = ["a b", "ç d"]
    assert corpus_sha256(lines) == hashlib.sha256("a b\nç d\n".encode()).hexdigest()
    assert corpus_sha256(lines) != corpus_sha256(["a b ç d"])
    with pytest.raises(DataError, match="line 2 contains a line break"):
        corpus_sha256(["a", "b\nc"])


def test_default_corpus_is_small_attributed_and_reproducible():
    paths = [default_corpus("train"), default_corpus("valid")]
    assert sum(p.stat().st_size for p in paths) < 1_000_000
    attribution = (paths[0].parent / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "CC BY-SA 3.0" in attribution or "Attribution-ShareAlike 3.0" in attribution
    import hashlib
    for path in paths:
        assert hashlib.sha256(path.read_bytes()).hexdigest() in attribution
        assert len(read_corpus(path)) > 100
    with pytest.raises(DataError, match="split 'test' is unknown"):
        default_corpus("test")


def test_excerpt_cut_takes_whole_articles_within_budget():
    source = (b" \n = A = \n \n a text \n \n = = Sec = = \n b \n"
              b" \n = B = \n \n long text long text \n")
    excerpt = cut_excerpt("train", source, budget=45)
    # The cut falls just before the next article's heading, so A keeps its trailing blank line.
    assert excerpt.data == b" \n = A = \n \n a text \n \n = = Sec = = \n b \n \n"
    assert excerpt.lines == 8 and excerpt.articles == 1
    assert cut_excerpt("train", source, budget=10_000).data == source
    with pytest.raises(DataError, match="no whole article fits in 5 bytes"):
        cut_excerpt("train", source, budget=5)


# --- tokenizer ----------------------------------------------------------------------------

def test_tokenizer_round_trips_real_and_unicode_lines(small_tokenizer, train_lines):
    valid = read_corpus(default_corpus("valid"))
    for line in train_lines[:50] + valid[:50] + [UNICODE_LINE, "never seen: Ωμέγα ∑ 𝔘"]:
        ids = small_tokenizer.encode(line).ids
        assert small_tokenizer.decode(ids) == line


def test_end_of_text_is_id_zero_and_vocab_is_as_asked(small_tokenizer):
    assert small_tokenizer.token_to_id(END_OF_TEXT) == 0
    assert small_tokenizer.get_vocab_size() == 512
    # A tiny corpus cannot fill the vocabulary: the real size is what the model must use.
    tiny = train_tokenizer(["ab ab ab", "cd cd"], vocab_size=1000)
    assert 257 <= tiny.get_vocab_size() < 1000


def test_training_is_deterministic(train_lines):
    one = train_tokenizer(train_lines[:100], vocab_size=400)
    two = train_tokenizer(train_lines[:100], vocab_size=400)
    assert one.to_str() == two.to_str()


@pytest.mark.parametrize("vocab_size", [0, 256, 100, 3.5])
def test_vocab_size_too_small_is_an_error(vocab_size):
    with pytest.raises(DataError, match=rf"vocab_size {vocab_size!r} is too small"):
        train_tokenizer(["some text"], vocab_size=vocab_size)


def test_save_load_and_hash(small_tokenizer, saved_tokenizer):
    loaded = load_tokenizer(saved_tokenizer)
    assert loaded.encode(UNICODE_LINE).ids == small_tokenizer.encode(UNICODE_LINE).ids
    assert tokenizer_sha256(saved_tokenizer) == tokenizer_sha256(saved_tokenizer)
    assert len(tokenizer_sha256(saved_tokenizer)) == 64
    assert [p.name for p in saved_tokenizer.parent.iterdir()] == ["tokenizer.json"]


def test_load_tokenizer_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"tokenizer .*missing\.json does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match=r"tokenizer .*bad\.json is invalid") as info:
        load_tokenizer(bad)
    assert "\n" not in str(info.value)


def test_pretrained_tokenizer_fast_gives_the_same_ids(small_tokenizer, saved_tokenizer,
                                                      train_lines):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(saved_tokenizer))
    for line in train_lines[:20] + [UNICODE_LINE]:
        ids = hf.encode(line)
        assert ids == small_tokenizer.encode(line).ids
        assert hf.decode(ids) == line
    assert hf.convert_tokens_to_ids(END_OF_TEXT) == 0


# --- token cache --------------------------------------------------------------------------

class CountingTokenizer:
    """Wraps a Tokenizer and counts encode_batch calls (the Rust class cannot be patched)."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def encode_batch(self, *args, **kwargs):
        self.calls += 1
        return self.inner.encode_batch(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_encode_corpus_concatenates_lines_with_end_of_text(small_tokenizer, tmp_path):
    lines = ["first line", UNICODE_LINE]
    ids = encode_corpus(lines, small_tokenizer, "a" * 64, tmp_path)
    first, second = (small_tokenizer.encode(line).ids for line in lines)
    expected = first + [0] + second + [0]
    assert ids.dtype == np.uint16 and ids.ndim == 1
    assert ids.tolist() == expected


def test_second_call_hits_the_cache(small_tokenizer, saved_tokenizer, train_lines, tmp_path):
    lines = train_lines[:40]
    tok_hash = tokenizer_sha256(saved_tokenizer)
    spy = CountingTokenizer(small_tokenizer)
    first = encode_corpus(lines, spy, tok_hash, tmp_path)
    assert spy.calls == 1
    second = encode_corpus(lines, spy, tok_hash, tmp_path)
    assert spy.calls == 1
    assert np.array_equal(first, second)

    stem = f"{corpus_sha256(lines)[:16]}-{tok_hash[:16]}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{stem}.bin", f"{stem}.json"]
    meta = json.loads((tmp_path / f"{stem}.json").read_text())
    assert meta["dtype"] == "uint16" and meta["length"] == len(first)
    assert meta["corpus_sha256"] == corpus_sha256(lines)
    assert meta["tokenizer_sha256"] == tok_hash


def test_cache_is_keyed_by_tokenizer_and_corpus(small_tokenizer, train_lines, tmp_path):
    lines = train_lines[:20]
    other = train_tokenizer(train_lines[:100], vocab_size=300)
    spy_a, spy_b = CountingTokenizer(small_tokenizer), CountingTokenizer(other)
    a = encode_corpus(lines, spy_a, "a" * 64, tmp_path)
    b = encode_corpus(lines, spy_b, "b" * 64, tmp_path)
    assert (spy_a.calls, spy_b.calls) == (1, 1)
    assert len(b) > len(a)  # the smaller vocabulary needs more tokens
    encode_corpus(lines[:10], spy_a, "a" * 64, tmp_path)
    assert spy_a.calls == 2
    assert len(list(tmp_path.glob("*.bin"))) == 3


def test_damaged_cache_is_rebuilt(small_tokenizer, tmp_path):
    lines = ["some words here"]
    spy = CountingTokenizer(small_tokenizer)
    good = encode_corpus(lines, spy, "c" * 64, tmp_path).tolist()
    (bin_path,) = tmp_path.glob("*.bin")
    bin_path.write_bytes(b"\x00")  # truncated: size no longer matches the sidecar
    assert encode_corpus(lines, spy, "c" * 64, tmp_path).tolist() == good
    assert spy.calls == 2


def test_failed_encode_leaves_no_files(small_tokenizer, tmp_path):
    class Exploding(CountingTokenizer):
        def encode_batch(self, *args, **kwargs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        encode_corpus(["x"], Exploding(small_tokenizer), "d" * 64, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_encode_corpus_rejects_bad_arguments(small_tokenizer, tmp_path):
    with pytest.raises(DataError, match="corpus lines are empty"):
        encode_corpus([], small_tokenizer, "a" * 64, tmp_path)
    with pytest.raises(DataError, match="tokenizer_hash 'abc' is invalid"):
        encode_corpus(["x"], small_tokenizer, "abc", tmp_path)


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("QTF_EDGE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("QTF_EDGE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "qtf-edge"


# --- WikiText counts and metrics ----------------------------------------------------------

def test_count_words_and_bytes_by_hand():
    # words: 3 + 2 (double space is one gap) + one <eos> per line = 7
    # bytes: 5 + 13 ("é" is two bytes) + one newline per line = 20
    assert count_words_and_bytes(["a b c", "héllo  world"]) == (7, 20)


def test_metrics_by_hand():
    nll = 12 * math.log(2)
    assert perplexity_per_token(nll, 6) == pytest.approx(4.0)
    assert perplexity_per_word(nll, 4) == pytest.approx(8.0)
    assert bits_per_byte(nll, 24) == pytest.approx(0.5)

    result = TextPerplexity(nll=nll, tokens=6, words=4, bytes=24)
    assert result.perplexity_per_token == pytest.approx(4.0)
    assert result.perplexity_per_word == pytest.approx(8.0)
    assert result.bits_per_byte == pytest.approx(0.5)
    as_dict = result.to_dict()
    assert as_dict["tokens"] == 6 and as_dict["nll_per_token"] == pytest.approx(2 * math.log(2))
    assert json.loads(json.dumps(as_dict)) == as_dict
    with pytest.raises(AttributeError):
        result.nll = 0.0  # frozen


def test_metrics_reject_bad_counts_and_survive_huge_loss():
    with pytest.raises(DataError, match="tokens 0 is invalid"):
        TextPerplexity(nll=1.0, tokens=0, words=1, bytes=1)
    with pytest.raises(DataError, match="nll -1.0 is invalid"):
        TextPerplexity(nll=-1.0, tokens=1, words=1, bytes=1)
    assert perplexity_per_word(1e6, 1) == math.inf


@pytest.mark.slow
def test_wikitext2_valid_word_count_matches_its_readme():
    """The README's 217,646 "tokens" are words + one <eos> for *every* line, blank ones too
    (213,886 words + 3,760 lines); read_corpus drops the 1,299 blank lines, which gives
    216,347. Both are checked so the convention stays visible."""
    path = WIKITEXT / "valid.txt"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    raw = path.read_text(encoding="utf-8").split("\n")
    assert raw[-1] == ""  # the final newline ends the last line
    raw_lines = raw[:-1]
    words, size = count_words_and_bytes(raw_lines)
    assert words == 217_646
    assert size == path.stat().st_size

    words_nonblank, _ = count_words_and_bytes(read_corpus(path))
    assert words_nonblank == 217_646 - (len(raw_lines) - len(read_corpus(path)))

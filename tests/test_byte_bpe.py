"""runtimes/byte_bpe.py, the pure-Python tokenizer run.py falls back to, against Hugging
Face `tokenizers` on the same tokenizer.json: the same ids and the same text back."""

from __future__ import annotations

import json
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from run_factory import tokenizer_json
from tokenizers import Tokenizer, pre_tokenizers

from qtf_edge.data import default_corpus
from qtf_edge.resources import data_dir

sys.path.insert(0, str(data_dir("runtimes")))
from byte_bpe import ByteLevelBPE, split_words  # noqa: E402

HF = Tokenizer.from_str(tokenizer_json())
PY = ByteLevelBPE(json.loads(tokenizer_json()))
TRICKY = ["Hello  world\n\nfoo", "it's they're we've I'll he'd 'sun ''s", "  leading",
          "trailing  ", "a\tb\r\nc", "x1234y ½ ² Ⅷ", "emoji 🙂🙂 and 中文 text",
          "<|endoftext|>The end<|endoftext|>", "\x1c\x1d sep", "a\u2003b \u00a0c", "", " ",
          "\n", "don't!!! ...", "3.14159 + 2,000", "café naïve ÆØÅ"]


def assert_same(text):
    ids = HF.encode(text).ids
    assert PY.encode(text).ids == ids, text
    assert PY.decode(ids) == HF.decode(ids), text


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_text_gives_the_same_ids_and_text(text):
    assert_same(text)


def test_the_shipped_corpus_gives_the_same_ids():
    for line in default_corpus("valid").read_text(encoding="utf-8").splitlines()[:200]:
        assert_same(line)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab 'sltrvmd\n\t\r1½²é中🙂.,!?-\x1c\u2003\u00a0")),
               max_size=30))
def test_random_text_gives_the_same_ids(text):
    assert_same(text)


def test_the_split_pattern_is_tokenizers_byte_level_one():
    text = "  It's 12 o'clock!\n\n  ok "
    assert split_words(text) == [" ", " It", "'s", " 12", " o", "'", "clock", "!", "\n\n ",
                                 " ok", " "]
    reference = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text)
    mapped = ["".join(PY.byte_chars[b] for b in w.encode()) for w in split_words(text)]
    assert mapped == [word for word, _ in reference]


def test_special_tokens_are_skipped_when_decoding_unless_asked():
    ids = PY.encode("<|endoftext|>hi").ids
    assert ids[0] == HF.token_to_id("<|endoftext|>")
    assert PY.decode(ids) == "hi" and PY.decode(ids, skip_special_tokens=False).startswith("<|")


@pytest.mark.parametrize("change, words", [
    (lambda d: d.update(normalizer={"type": "NFC"}), "normalizer"),
    (lambda d: d["model"].update(type="WordPiece"), "WordPiece"),
    (lambda d: d["pre_tokenizer"].update(add_prefix_space=True), "pre-tokenizer"),
    (lambda d: d.update(decoder={"type": "Metaspace"}), "Metaspace"),
])
def test_other_tokenizers_are_refused_not_misread(change, words):
    doc = json.loads(tokenizer_json())
    change(doc)
    with pytest.raises(ValueError, match=words) as info:
        ByteLevelBPE(doc)
    assert "pip install tokenizers" in str(info.value)

"""Property tests (hypothesis) for both tokenizers: round trips, id bounds, training and loading never crash.

Hypothesis makes up the inputs: any Unicode text, including emoji, combining marks, control
characters and every script, and shrinks a failure to the smallest input that still fails.
The settings are modest so that the whole file runs in a few seconds.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tinyllm
from tinyllm import BPETokenizer, CharTokenizer

from conftest import make_corpus

EOT = "<|endoftext|>"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# One tokenizer trained once on English plus a little of many scripts, shared by the tests below.
TRAINING_TEXT = make_corpus(100) + "café naïve 你好世界 😀👍 Ελληνικά русский x_y 12 345 " * 5
BPE = BPETokenizer.train(TRAINING_TEXT, 320, special_tokens=[EOT])

# Text with the special token dropped in here and there, between arbitrary pieces.
TEXT_WITH_SPECIALS = st.lists(st.one_of(st.text(max_size=20), st.just(EOT)), max_size=8).map("".join)


@FUZZ
@given(st.text())
def test_pre_split_covers_every_character(text):
    assert "".join(re.findall(tinyllm.SPLIT_PATTERN, text)) == text


@FUZZ
@given(st.text())
def test_bpe_round_trips_any_text(text):
    assert BPE.decode(BPE.encode(text)) == text


@FUZZ
@given(TEXT_WITH_SPECIALS)
def test_bpe_round_trips_text_with_special_tokens(text):
    ids = BPE.encode(text)
    assert BPE.decode(ids) == text
    assert ids.count(BPE.special_tokens[EOT]) == text.count(EOT)


@FUZZ
@given(st.one_of(st.text(), TEXT_WITH_SPECIALS))
def test_bpe_never_emits_an_id_outside_the_vocabulary(text):
    assert all(0 <= i < BPE.vocab_size for i in BPE.encode(text))


@FUZZ
@given(st.lists(st.integers(0, BPE.vocab_size - 1), max_size=30))
def test_bpe_decodes_any_valid_ids_without_crashing(ids):
    assert isinstance(BPE.decode(ids), str)  # invalid UTF-8 becomes U+FFFD, never an exception


@FUZZ
@given(st.text(min_size=1), st.data())
def test_char_round_trips_text_over_its_training_alphabet(training_text, data):
    tok = CharTokenizer.from_text(training_text)
    text = data.draw(st.text(alphabet=sorted(set(training_text))))
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < tok.vocab_size for i in ids)


@FUZZ
@given(st.text(max_size=200), st.integers(256, 300))
def test_bpe_training_on_small_texts_never_crashes(text, vocab_size):
    try:
        tok = BPETokenizer.train(text, vocab_size)
    except ValueError as e:
        # The one documented failure: the text has too few pairs for the vocabulary asked for.
        # Then "supports only N tokens" must be exact: N trains, N + 1 does not.
        most = int(re.search(r"supports only (\d+) tokens", str(e)).group(1))
        assert 256 <= most < vocab_size
        assert BPETokenizer.train(text, most).vocab_size == most
        with pytest.raises(ValueError):
            BPETokenizer.train(text, most + 1)
        return
    assert tok.vocab_size == vocab_size
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(0 <= i < vocab_size for i in ids)


@FUZZ
@given(st.text(max_size=100), st.lists(st.text(min_size=1, max_size=5), max_size=3, unique=True), st.text())
def test_bpe_trained_with_special_tokens_round_trips_other_text(text, specials, other):
    try:
        tok = BPETokenizer.train(text, 256 + len(specials) + 4, special_tokens=specials)
    except ValueError as e:
        assert "supports only" in str(e)
        return
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(other)) == other


# Anything JSON can hold: the raw material of a tokenizer file written by someone else.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 600) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["char", "bpe"]), JSON, JSON, JSON, st.one_of(JSON, st.just(tinyllm.SPLIT_PATTERN)))
def test_loading_arbitrary_tokenizer_data_gives_a_tokenizer_or_a_value_error(kind, merges, specials, chars, pattern):
    data = {"type": kind, "merges": merges, "special_tokens": specials, "chars": chars, "pattern": pattern}
    try:
        tok = tinyllm.tokenizer_from_dict(data)
    except ValueError:
        return
    # Whatever loaded is usable: every id in its vocabulary decodes.
    assert isinstance(tok.decode(list(range(tok.vocab_size))), str)
